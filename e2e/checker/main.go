// Command checker reads a client history (JSON lines, see e2e/README.md) and
// checks it for linearizability against a key-value model partitioned by key
// (porcupine), and for lost acknowledged writes. Several files are checked as
// their concatenation, one history. It prints a summary of the load and, on
// request, checks the load itself: that it overlapped fault windows, its
// longest gap per key, its success rate.
//
//	checker [-timeout 60s] [-visualize out.html] [-fault START_NS:END_NS]...
//	        [-max-gap 10s] [-min-success 0.9] HISTORY.jsonl [MORE.jsonl...]
//
// Exit status: 0 linearizable, nothing lost, load criteria met; 1 a violation
// of any of these (printed); 2 unreadable or malformed history, or bad
// flags; 3 inconclusive (the linearizability search timed out, and nothing
// else is wrong).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Verdict of a check.
type Verdict int

const (
	Pass Verdict = iota
	Violation
	Inconclusive
)

func (v Verdict) String() string {
	return [...]string{"pass", "violation", "inconclusive"}[v]
}

// Report of a check.
type Report struct {
	Verdict    Verdict
	Lost       []LostWrite
	Linear     porcupine.CheckResult
	Info       porcupine.LinearizationInfo
	Keys       int
	Operations int
}

// Check runs both checks on a parsed history.
func Check(h *History, timeout time.Duration) Report {
	keys := map[string]bool{}
	for _, op := range h.Ops {
		keys[op.Input.Key] = true
	}
	r := Report{Keys: len(keys), Operations: len(h.Ops)}
	r.Lost = FindLostWrites(h.Ops)
	r.Linear, r.Info = porcupine.CheckOperationsVerbose(kvModel, toPorcupine(h.Ops), timeout)
	switch {
	case len(r.Lost) > 0 || r.Linear == porcupine.Illegal:
		r.Verdict = Violation
	case r.Linear == porcupine.Unknown:
		r.Verdict = Inconclusive
	}
	return r
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("checker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 60*time.Second, "give up on the linearizability search after this long (0: no limit)")
	vis := fs.String("visualize", "", "write porcupine's HTML visualization of the history to this file")
	var crit LoadCriteria
	fs.Var((*windows)(&crit.Faults), "fault", "`START_NS:END_NS`: a fault window (epoch nanoseconds) the load must overlap: an ok operation completed before it, one completed within it, one invoked after it (repeatable)")
	fs.DurationVar(&crit.MaxGap, "max-gap", 0, "violation if a key goes longer than this without an ok operation (0: no limit)")
	fs.Float64Var(&crit.MinSuccess, "min-success", 0, "violation if fewer than this `fraction` of the operations are ok (0: no minimum)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() < 1 {
		fmt.Fprintln(stderr, "usage: checker [-timeout 60s] [-visualize out.html] [-fault START_NS:END_NS]... [-max-gap 10s] [-min-success 0.9] HISTORY.jsonl [MORE.jsonl...]")
		return 2
	}
	if crit.MaxGap < 0 || crit.MinSuccess < 0 || crit.MinSuccess > 1 {
		fmt.Fprintln(stderr, "checker: -max-gap must be >= 0 and -min-success within [0, 1]")
		return 2
	}
	paths := fs.Args()
	h, err := ReadHistoryFiles(paths)
	if err != nil {
		fmt.Fprintf(stderr, "checker: %v\n", err)
		return 2
	}
	start := time.Now()
	r := Check(h, *timeout)
	fmt.Fprintf(stdout, "checker: %s: %d events (%d ok, %d fail, %d timeout, %d unfinished), %d operations on %d keys checked in %s\n",
		strings.Join(paths, " + "), h.Invokes+h.Oks+h.Fails+h.Timeouts, h.Oks, h.Fails, h.Timeouts, h.Unfinished, r.Operations, r.Keys, time.Since(start).Round(time.Millisecond))
	lr := CheckLoad(h, crit)
	fmt.Fprintln(stdout, lr.Summary)
	for i, f := range lr.Faults {
		fmt.Fprintln(stdout, f.Line(i))
	}
	if *vis != "" {
		if err := porcupine.VisualizePath(kvModel, r.Info, *vis); err != nil {
			fmt.Fprintf(stderr, "checker: visualization: %v\n", err)
		} else {
			fmt.Fprintf(stdout, "checker: visualization written to %s\n", *vis)
		}
	}
	for _, l := range r.Lost {
		fmt.Fprintf(stdout, "LOST ACKNOWLEDGED WRITE: %s\n", l)
	}
	switch r.Linear {
	case porcupine.Illegal:
		fmt.Fprintf(stdout, "NOT LINEARIZABLE: %s\n", illegalDetail(h.Ops, r.Info))
	case porcupine.Unknown:
		fmt.Fprintf(stdout, "INCONCLUSIVE: the linearizability search did not finish within %s\n", *timeout)
	}
	for _, p := range lr.Problems {
		fmt.Fprintln(stdout, p)
	}
	switch overall(r.Verdict, lr.Problems) {
	case Violation:
		fmt.Fprintln(stdout, "checker: FAIL")
		return 1
	case Inconclusive:
		fmt.Fprintln(stdout, "checker: INCONCLUSIVE")
		return 3
	}
	if crit.any() {
		fmt.Fprintln(stdout, "checker: PASS (linearizable, no acknowledged write lost, load criteria met)")
	} else {
		fmt.Fprintln(stdout, "checker: PASS (linearizable, no acknowledged write lost)")
	}
	return 0
}

// overall combines the history's verdict with the load criteria it missed:
// any of those is a violation, so the verdict is inconclusive only when the
// unfinished linearizability search is the one problem.
func overall(history Verdict, loadProblems []string) Verdict {
	if len(loadProblems) > 0 {
		return Violation
	}
	return history
}

// illegalDetail names each key whose sub-history has no linearization, with
// the longest prefix porcupine could linearize and the operations it could not
// place after it. Partitions come in sorted key order (kvModel.Partition).
func illegalDetail(ops []Op, info porcupine.LinearizationInfo) string {
	keys, byKey := groupByKey(ops)
	parts := info.PartialLinearizationsOperations()
	var b strings.Builder
	for p, part := range parts {
		if p >= len(keys) {
			break
		}
		var longest []porcupine.Operation
		for _, l := range part {
			if len(l) > len(longest) {
				longest = l
			}
		}
		kops := byKey[keys[p]]
		if len(longest) == len(kops) {
			continue
		}
		fmt.Fprintf(&b, "\n  key %q: %d operations, no valid linearization; longest linearizable prefix (%d):", keys[p], len(kops), len(longest))
		placed := map[[2]int64]int{}
		for _, op := range longest {
			fmt.Fprintf(&b, "\n    client %d [%d, %s]: %s", op.ClientId, op.Call, retString(op.Return), describe(op.Input.(Input), op.Output.(Output)))
			placed[[2]int64{int64(op.ClientId), op.Call}]++
		}
		fmt.Fprintf(&b, "\n   then none of these can come next:")
		sort.Slice(kops, func(i, j int) bool { return kops[i].Call < kops[j].Call })
		shown := 0
		for _, op := range kops {
			id := [2]int64{int64(op.Client), op.Call}
			if placed[id] > 0 {
				placed[id]--
				continue
			}
			if shown == 8 {
				fmt.Fprintf(&b, "\n    ...")
				break
			}
			fmt.Fprintf(&b, "\n    client %d (%s) [%d, %s]: %s", op.Client, op.Where(), op.Call, retString(op.Return), describe(op.Input, op.Output))
			shown++
		}
	}
	if b.Len() == 0 {
		return "a key's sub-history has no valid linearization (run with -visualize for details)"
	}
	return b.String()
}

func retString(t int64) string {
	if t == Infinity {
		return "never"
	}
	return fmt.Sprint(t)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
