package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// ev builds one history line.
func ev(client int, kind, op, key string, ts int64, extra map[string]any) string {
	m := map[string]any{"client": client, "kind": kind, "ts_ns": ts}
	if op != "" {
		m["op"] = op
	}
	if key != "" {
		m["key"] = key
	}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func invPut(c int, key, v string, ts int64) string {
	return ev(c, "invoke", "put", key, ts, map[string]any{"value": v})
}
func invGet(c int, key string, ts int64) string { return ev(c, "invoke", "get", key, ts, nil) }
func invDel(c int, key string, ts int64) string { return ev(c, "invoke", "delete", key, ts, nil) }
func invCas(c int, key string, expected any, v string, ts int64) string {
	return ev(c, "invoke", "cas", key, ts, map[string]any{"expected": expected, "value": v})
}
func ok(c int, ts int64, output any) string {
	return ev(c, "ok", "", "", ts, map[string]any{"output": output})
}
func timeout(c int, ts int64) string { return ev(c, "timeout", "", "", ts, nil) }
func fail(c int, ts int64) string    { return ev(c, "fail", "", "", ts, nil) }

func check(t *testing.T, lines ...string) Report {
	t.Helper()
	h, err := ReadHistory(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatalf("ReadHistory: %v", err)
	}
	return Check(h, 10*time.Second)
}

func wantVerdict(t *testing.T, r Report, want Verdict) {
	t.Helper()
	if r.Verdict != want {
		t.Fatalf("verdict %v, want %v (linearizability %v, lost %v)", r.Verdict, want, r.Linear, r.Lost)
	}
}

func TestValidConcurrentHistory(t *testing.T) {
	r := check(t,
		invPut(0, "x", "a", 0),
		invPut(1, "x", "b", 5),
		ok(0, 10, nil),
		invGet(2, "x", 12), // concurrent with put b: may see a or b
		ok(2, 14, "a"),
		ok(1, 20, nil),
		invGet(2, "x", 30),
		ok(2, 31, "b"),
		invCas(0, "x", "b", "c", 40),
		ok(0, 41, true),
		invCas(1, "x", "b", "d", 42),
		ok(1, 43, false),
		invDel(0, "x", 50),
		ok(0, 51, true),
		invGet(1, "x", 60),
		ok(1, 61, nil),
		invCas(1, "x", nil, "e", 70), // expect absent
		ok(1, 71, true),
		invGet(2, "y", 80),
		ok(2, 81, nil),
	)
	wantVerdict(t, r, Pass)
	if r.Operations != 10 || r.Keys != 2 {
		t.Fatalf("operations %d keys %d", r.Operations, r.Keys)
	}
}

func TestStaleReadIsViolationAndLostWrite(t *testing.T) {
	r := check(t,
		invPut(0, "x", "1", 0),
		ok(0, 10, nil),
		invPut(0, "x", "2", 20),
		ok(0, 30, nil),
		invGet(1, "x", 40),
		ok(1, 50, "1"),
	)
	wantVerdict(t, r, Violation)
	if r.Linear != porcupine.Illegal || len(r.Lost) != 1 {
		t.Fatalf("lost %v", r.Lost)
	}
	l := r.Lost[0]
	if len(l.Lost) != 1 || l.Lost[0].Input.Value != "2" {
		t.Fatalf("lost writes %+v, want the put of 2", l.Lost)
	}
	if !strings.Contains(l.String(), `put("x", "2")`) {
		t.Fatalf("message does not name the lost write: %s", l)
	}
}

func TestNonLinearizableButNoFinalRead(t *testing.T) {
	// Two reads disagree about order while a write is still in flight:
	// read 1 sees the new value, a later read 2 sees the old one.
	r := check(t,
		invPut(0, "x", "old", 0),
		ok(0, 1, nil),
		invPut(0, "x", "new", 10),
		invGet(1, "x", 11),
		ok(1, 12, "new"),
		invGet(2, "x", 13),
		ok(2, 14, "old"),
		ok(0, 100, nil),
	)
	wantVerdict(t, r, Violation)
	if len(r.Lost) != 0 {
		t.Fatalf("no read is final here, yet lost = %v", r.Lost)
	}
	if r.Linear != porcupine.Illegal {
		t.Fatalf("linearizability %v", r.Linear)
	}
}

func TestTimedOutWriteMayApplyLate(t *testing.T) {
	r := check(t,
		invPut(0, "x", "1", 0),
		timeout(0, 10),
		invGet(1, "x", 20),
		ok(1, 21, nil), // not applied yet
		invGet(1, "x", 1000),
		ok(1, 1001, "1"), // applied much later than the client gave up
	)
	wantVerdict(t, r, Pass)
}

func TestTimedOutWriteMayNeverApplyButCannotUndoItself(t *testing.T) {
	// x=1 acknowledged, then put x=2 times out.
	prefix := []string{
		invPut(0, "x", "1", 0),
		ok(0, 5, nil),
		invPut(0, "x", "2", 10),
		timeout(0, 20),
	}
	// The timed-out write may never have been applied.
	wantVerdict(t, check(t, append(prefix, invGet(1, "x", 30), ok(1, 31, "1"))...), Pass)
	// But once a read saw it, a later read may not see the value it replaced.
	wantVerdict(t, check(t, append(prefix,
		invGet(1, "x", 30), ok(1, 31, "2"),
		invGet(1, "x", 40), ok(1, 41, "1"))...), Violation)
}

func TestFailedWriteMustNotBeVisible(t *testing.T) {
	r := check(t,
		invPut(0, "x", "1", 0),
		fail(0, 10),
		invGet(1, "x", 20),
		ok(1, 21, "1"),
	)
	wantVerdict(t, r, Violation)
}

func TestUnfinishedInvokeIsUnknown(t *testing.T) {
	h, err := ReadHistory(strings.NewReader(strings.Join([]string{
		invPut(0, "x", "1", 0),
		invGet(1, "x", 5),
		ok(1, 6, "1"),
		invGet(2, "x", 7), // unfinished read: dropped
	}, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	if h.Unfinished != 2 || h.DroppedReads != 1 || len(h.Ops) != 2 {
		t.Fatalf("unfinished %d dropped reads %d ops %d", h.Unfinished, h.DroppedReads, len(h.Ops))
	}
	wantVerdict(t, Check(h, time.Second), Pass)
}

func TestDoubleCasSuccessIsViolation(t *testing.T) {
	r := check(t,
		invCas(0, "lock", nil, "a", 0),
		invCas(1, "lock", nil, "b", 1),
		ok(0, 10, true),
		ok(1, 11, true),
	)
	wantVerdict(t, r, Violation)
}

func TestTimedOutCas(t *testing.T) {
	r := check(t,
		invPut(0, "x", "a", 0),
		ok(0, 1, nil),
		invCas(0, "x", "a", "b", 10),
		timeout(0, 20),
		invGet(1, "x", 30),
		ok(1, 31, "b"),
	)
	wantVerdict(t, r, Pass)
	// The timed-out cas could not have swapped: its expected value was
	// never there.
	r = check(t,
		invPut(0, "x", "a", 0),
		ok(0, 1, nil),
		invCas(0, "x", "z", "b", 10),
		timeout(0, 20),
		invGet(1, "x", 30),
		ok(1, 31, "b"),
	)
	wantVerdict(t, r, Violation)
}

func TestDeleteExistedMismatch(t *testing.T) {
	r := check(t,
		invDel(0, "x", 0),
		ok(0, 1, true), // nothing was ever written
	)
	wantVerdict(t, r, Violation)
}

func TestLostWriteAfterLaterOverwriteIsNotLost(t *testing.T) {
	// Read sees b, written after a: a was replaced, not lost.
	r := check(t,
		invPut(0, "x", "a", 0),
		ok(0, 1, nil),
		invPut(1, "x", "b", 2),
		ok(1, 3, nil),
		invGet(2, "x", 10),
		ok(2, 11, "b"),
	)
	wantVerdict(t, r, Pass)
}

func TestMalformedHistories(t *testing.T) {
	cases := map[string][]string{
		"completion without invoke": {ok(0, 1, nil)},
		"two in flight":             {invGet(0, "x", 0), invGet(0, "y", 1)},
		"unknown op":                {ev(0, "invoke", "incr", "x", 0, nil)},
		"unknown kind":              {ev(0, "started", "get", "x", 0, nil)},
		"put without value":         {ev(0, "invoke", "put", "x", 0, nil)},
		"return before call":        {invGet(0, "x", 10), ok(0, 5, nil)},
		"cas output not bool":       {invCas(0, "x", nil, "a", 0), ok(0, 1, "yes")},
		"not json":                  {"{"},
	}
	for name, lines := range cases {
		if _, err := ReadHistory(strings.NewReader(strings.Join(lines, "\n"))); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "line ") {
			t.Errorf("%s: error without a line number: %v", name, err)
		}
	}
}

// simulate produces a linearizable history: each operation takes effect at a
// random instant inside its interval, against a sequential map.
func simulate(rng *rand.Rand, clients, opsPerClient int, keys []string) []string {
	type pendingOp struct {
		client      int
		op, key, v  string
		expected    *string
		call, lin   int64
		ret         int64
		output      any
		timeout     bool
		linearizeAt int64
	}
	var ops []*pendingOp
	for c := 0; c < clients; c++ {
		t := int64(rng.Intn(10))
		for i := 0; i < opsPerClient; i++ {
			p := &pendingOp{client: c, key: keys[rng.Intn(len(keys))], call: t}
			switch rng.Intn(4) {
			case 0:
				p.op, p.v = "put", fmt.Sprintf("c%d-%d", c, i)
			case 1:
				p.op = "get"
			case 2:
				p.op, p.v = "cas", fmt.Sprintf("c%d-%d", c, i)
				if rng.Intn(3) > 0 {
					e := fmt.Sprintf("c%d-%d", rng.Intn(clients), rng.Intn(i+1))
					p.expected = &e
				}
			case 3:
				p.op = "delete"
			}
			dur := int64(1 + rng.Intn(30))
			p.ret = t + dur
			p.lin = t + rng.Int63n(dur+1)
			if p.op != "get" && rng.Intn(20) == 0 {
				p.timeout = true
				p.lin = t + rng.Int63n(200) // may take effect long after the client gave up
			}
			ops = append(ops, p)
			t = p.ret + int64(rng.Intn(5))
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].lin < ops[j].lin })
	store := map[string]string{}
	for _, p := range ops {
		cur, present := store[p.key]
		switch p.op {
		case "put":
			store[p.key] = p.v
		case "get":
			if present {
				p.output = cur
			}
		case "delete":
			p.output = present
			delete(store, p.key)
		case "cas":
			applies := (p.expected == nil && !present) || (p.expected != nil && present && cur == *p.expected)
			if applies {
				store[p.key] = p.v
			}
			p.output = applies
		}
	}
	type line struct {
		ts  int64
		ord int
		s   string
	}
	var lines []line
	for _, p := range ops {
		extra := map[string]any{}
		if p.v != "" {
			extra["value"] = p.v
		}
		if p.op == "cas" {
			if p.expected != nil {
				extra["expected"] = *p.expected
			} else {
				extra["expected"] = nil
			}
		}
		lines = append(lines, line{p.call, 0, ev(p.client, "invoke", p.op, p.key, p.call, extra)})
		if p.timeout {
			lines = append(lines, line{p.ret, 1, timeout(p.client, p.ret)})
		} else {
			lines = append(lines, line{p.ret, 1, ok(p.client, p.ret, p.output)})
		}
	}
	sort.SliceStable(lines, func(i, j int) bool {
		if lines[i].ts != lines[j].ts {
			return lines[i].ts < lines[j].ts
		}
		return lines[i].ord > lines[j].ord // completions first at equal times
	})
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.s
	}
	return out
}

func TestSimulatedHistoriesPass(t *testing.T) {
	for seed := int64(0); seed < 50; seed++ {
		rng := rand.New(rand.NewSource(seed))
		lines := simulate(rng, 6, 40, []string{"a", "b", "c", "d"})
		r := check(t, lines...)
		if r.Verdict != Pass {
			t.Fatalf("seed %d: verdict %v (lin %v, lost %v)\n%s", seed, r.Verdict, r.Linear, r.Lost, strings.Join(lines, "\n"))
		}
	}
}

func TestSimulatedHistoryWithCorruptedReadFails(t *testing.T) {
	detected := 0
	for seed := int64(0); seed < 30; seed++ {
		rng := rand.New(rand.NewSource(seed))
		lines := simulate(rng, 4, 30, []string{"a", "b"})
		// Make one successful read return a value nobody wrote.
		for i, l := range lines {
			if strings.Contains(l, `"kind":"ok"`) && i > len(lines)/2 {
				var m map[string]any
				_ = json.Unmarshal([]byte(l), &m)
				c := int(m["client"].(float64))
				// find its invoke
				for j := i - 1; j >= 0; j-- {
					if strings.Contains(lines[j], fmt.Sprintf(`"client":%d,`, c)) && strings.Contains(lines[j], `"op":"get"`) && strings.Contains(lines[j], `"invoke"`) {
						lines[i] = ok(c, int64(m["ts_ns"].(float64)), "never-written")
						goto corrupted
					}
					if strings.Contains(lines[j], fmt.Sprintf(`"client":%d,`, c)) {
						break
					}
				}
			}
		}
		continue
	corrupted:
		detected++
		if r := check(t, lines...); r.Verdict != Violation {
			t.Fatalf("seed %d: corrupted read not detected", seed)
		}
	}
	if detected < 10 {
		t.Fatalf("only %d histories were corrupted; the test is not exercising anything", detected)
	}
}

func TestRunExitCodes(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, lines ...string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.jsonl", invPut(0, "k", "v", 1), ok(0, 2, nil), invGet(0, "k", 3), ok(0, 4, "v"))
	bad := write("bad.jsonl", invPut(0, "k", "v", 1), ok(0, 2, nil), invPut(0, "k", "w", 3), ok(0, 4, nil), invGet(0, "k", 5), ok(0, 6, "v"))
	malformed := write("malformed.jsonl", ok(0, 1, nil))
	var out, errb bytes.Buffer
	if rc := run([]string{good}, &out, &errb); rc != 0 {
		t.Fatalf("good: rc %d\n%s%s", rc, out.String(), errb.String())
	}
	out.Reset()
	vis := filepath.Join(dir, "bad.html")
	if rc := run([]string{"-visualize", vis, bad}, &out, &errb); rc != 1 {
		t.Fatalf("bad: rc %d\n%s", rc, out.String())
	}
	for _, want := range []string{"NOT LINEARIZABLE", "LOST ACKNOWLEDGED WRITE", `put("k", "w")`, "checker: FAIL"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("bad: output lacks %q:\n%s", want, out.String())
		}
	}
	if st, err := os.Stat(vis); err != nil || st.Size() == 0 {
		t.Errorf("no visualization written: %v", err)
	}
	if rc := run([]string{malformed}, &out, &errb); rc != 2 {
		t.Fatalf("malformed: rc %d", rc)
	}
	if rc := run([]string{filepath.Join(dir, "missing")}, &out, &errb); rc != 2 {
		t.Fatalf("missing: rc %d", rc)
	}
}

// writeHistory writes lines as a history file in dir.
func writeHistory(t *testing.T, dir, name string, lines ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runChecker runs the command and returns its exit status and output.
func runChecker(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	rc := run(args, &out, &errb)
	return rc, out.String() + errb.String()
}

func TestMultipleFilesAreOneHistory(t *testing.T) {
	dir := t.TempDir()
	// The load: client 0 writes x twice, the final reader (client 8) reads
	// it; client 1's put of y is still in flight at the end of the file.
	a := writeHistory(t, dir, "a.jsonl",
		invPut(0, "x", "1", 10),
		ok(0, 20, nil),
		invPut(0, "x", "2", 30),
		ok(0, 40, nil),
		invPut(1, "y", "c1-1", 45),
		invGet(8, "x", 50),
		ok(8, 60, "2"),
	)
	// The read-back (client 9); client 1's put completes here.
	good := writeHistory(t, dir, "good.jsonl",
		ok(1, 65, nil),
		invGet(9, "x", 70),
		ok(9, 80, "2"),
		invGet(9, "y", 90),
		ok(9, 100, "c1-1"),
	)
	// A read-back that misses the second acknowledged write of x: only the
	// concatenation shows the write was lost.
	stale := writeHistory(t, dir, "stale.jsonl",
		ok(1, 65, nil),
		invGet(9, "x", 70),
		ok(9, 80, "1"),
	)
	h, err := ReadHistoryFiles([]string{a, good})
	if err != nil {
		t.Fatal(err)
	}
	if h.Invokes != 6 || h.Oks != 6 || h.Unfinished != 0 || len(h.Ops) != 6 {
		t.Fatalf("invokes %d oks %d unfinished %d ops %d, want 6 6 0 6", h.Invokes, h.Oks, h.Unfinished, len(h.Ops))
	}
	if rc, out := runChecker(t, a, good); rc != 0 || !strings.Contains(out, "summary: ok=6/6 ") {
		t.Fatalf("a + good: rc %d\n%s", rc, out)
	}
	rc, out := runChecker(t, a, stale)
	if rc != 1 {
		t.Fatalf("a + stale: rc %d, want 1\n%s", rc, out)
	}
	// The lost write is named by its file and line.
	for _, want := range []string{"LOST ACKNOWLEDGED WRITE", a + " line 3", stale + " line 2", a + " + " + stale} {
		if !strings.Contains(out, want) {
			t.Errorf("a + stale: output lacks %q:\n%s", want, out)
		}
	}
	// Alone, the first file has an operation in flight; the second one
	// completes an operation it never invoked.
	if h, err := ReadHistoryFiles([]string{a}); err != nil || h.Unfinished != 1 {
		t.Fatalf("a alone: %v, unfinished %d", err, h.Unfinished)
	}
	if _, err := ReadHistoryFiles([]string{good}); err == nil {
		t.Fatal("good alone: a completion without its invoke was accepted")
	}
}

func TestMultipleFilesInFlightConflict(t *testing.T) {
	dir := t.TempDir()
	a := writeHistory(t, dir, "a.jsonl",
		invPut(0, "x", "1", 10),
		ok(0, 20, nil),
		invPut(3, "x", "2", 30), // never completes in a.jsonl
	)
	conflict := writeHistory(t, dir, "b.jsonl", invGet(3, "x", 50), ok(3, 60, "2"))
	other := writeHistory(t, dir, "c.jsonl", invGet(4, "x", 50), ok(4, 60, "2"))
	_, err := ReadHistoryFiles([]string{a, conflict})
	if err == nil {
		t.Fatal("client 3 invoking in b.jsonl while its put from a.jsonl is in flight was accepted")
	}
	for _, want := range []string{conflict + ": line 1:", "client 3 invokes get", "put from " + a + " line 3"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if rc, out := runChecker(t, a, conflict); rc != 2 {
		t.Fatalf("rc %d, want 2\n%s", rc, out)
	}
	// Another client is no conflict; client 3's put stays unknown.
	h, err := ReadHistoryFiles([]string{a, other})
	if err != nil {
		t.Fatal(err)
	}
	if h.Unfinished != 1 {
		t.Fatalf("unfinished %d, want 1", h.Unfinished)
	}
	if rc, out := runChecker(t, a, filepath.Join(dir, "missing.jsonl")); rc != 2 {
		t.Fatalf("missing second file: rc %d\n%s", rc, out)
	}
}

const msNs = int64(time.Millisecond)

// epoch is an epoch-nanosecond base for hand-made histories.
const epoch = int64(1_700_000_000) * int64(time.Second)

func at(ms int64) int64 { return epoch + ms*msNs }

// summaryHistory: 7 operations on k1 and k2, 5 of them ok, with latencies
// 10, 30, 4, 20 and 100 ms; the history spans 0..3300 ms.
func summaryHistory() []string {
	return []string{
		invPut(0, "k1", "v1", at(0)),
		invGet(1, "k2", at(5)),
		ok(0, at(10), nil), // k1 ok at 10, latency 10
		invPut(0, "k1", "v2", at(20)),
		ok(0, at(50), nil), // k1 ok at 50, latency 30
		invGet(2, "k1", at(60)),
		fail(2, at(61)),
		invGet(0, "k1", at(100)),
		ok(0, at(104), "v2"), // k1 ok at 104, latency 4
		timeout(1, at(3005)),
		invGet(1, "k2", at(3100)),
		ok(1, at(3120), nil), // k2 ok at 3120, latency 20
		invGet(0, "k1", at(3200)),
		ok(0, at(3300), "v2"), // k1 ok at 3300, latency 100
	}
}

func TestSummaryNumbers(t *testing.T) {
	lines := summaryHistory()
	h, err := ReadHistory(strings.NewReader(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	s := Summarize(h)
	// k1's longest gap is 104..3300 ms (3196 ms); k2's is 0..3120 ms.
	if s.Ok != 5 || s.Total != 7 || s.GapKey != "k1" || s.GapStart != at(104) || s.GapEnd != at(3300) ||
		s.Start != at(0) || s.End != at(3300) || s.P50 != 20*time.Millisecond || s.P99 != 100*time.Millisecond {
		t.Fatalf("summary %+v", s)
	}
	want := "summary: ok=5/7 (71.4%) longest_gap=3.2s key=k1 p50=20.0ms p99=100.0ms"
	if got := s.String(); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	// A key that never had an ok operation (an unfinished put) has the whole
	// span as its gap, and the unfinished operation counts as not ok.
	lines = append(lines, invPut(3, "k3", "v", at(200)))
	h, err = ReadHistory(strings.NewReader(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	want = "summary: ok=5/8 (62.5%) longest_gap=3.3s key=k3 p50=20.0ms p99=100.0ms"
	if got := Summarize(h).String(); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	// The command prints it.
	p := writeHistory(t, t.TempDir(), "h.jsonl", lines...)
	rc, out := runChecker(t, p)
	if rc != 0 || !strings.Contains(out, "\n"+want+"\n") {
		t.Fatalf("rc %d, output lacks %q:\n%s", rc, want, out)
	}
	// An empty history.
	if got := Summarize(&History{}).String(); got != "summary: ok=0/0 (0.0%) longest_gap=0.0s key=- p50=0.0ms p99=0.0ms" {
		t.Fatalf("empty: %s", got)
	}
}

func TestPercentile(t *testing.T) {
	vals := make([]int64, 100)
	for i := range vals {
		vals[i] = int64(i + 1)
	}
	for _, c := range []struct {
		vals []int64
		p    int
		want int64
	}{{vals, 50, 50}, {vals, 99, 99}, {vals, 100, 100}, {vals[:1], 99, 1}, {vals[:2], 50, 1}, {vals[:3], 50, 2}} {
		if got := percentile(c.vals, c.p); got != time.Duration(c.want) {
			t.Errorf("p%d of %d values: %d, want %d", c.p, len(c.vals), got, c.want)
		}
	}
}

// loadHistory: ok operations on x at [0.5 s, 1.0 s], [2.0 s, 2.5 s] and
// [4.0 s, 4.5 s], and a failed one at [2.7 s, 2.8 s].
func loadHistory(t *testing.T) string {
	return writeHistory(t, t.TempDir(), "load.jsonl",
		invPut(0, "x", "a", at(500)),
		ok(0, at(1000), nil),
		invGet(0, "x", at(2000)),
		ok(0, at(2500), "a"),
		invPut(1, "x", "b", at(2700)),
		fail(1, at(2800)),
		invGet(0, "x", at(4000)),
		ok(0, at(4500), "a"),
	)
}

func fault(fromMs, toMs int64) string { return fmt.Sprintf("%d:%d", at(fromMs), at(toMs)) }

func TestFaultOverlap(t *testing.T) {
	p := loadHistory(t)
	cases := []struct {
		name   string
		window string
		line   string
		miss   string // "" passes
	}{
		{"overlapped", fault(1500, 3000), "fault 1: 1 ok before, 1 ok during (1.5s), 1 ok after", ""},
		{"nothing before", fault(800, 3000), "fault 1: 0 ok before, 2 ok during (2.2s), 1 ok after", "no successful operation completed before it started"},
		// The failed operation inside the window does not count.
		{"nothing during", fault(2600, 3500), "fault 1: 2 ok before, 0 ok during (0.9s), 1 ok after", "no successful operation completed during it"},
		// The last operation began before the window ended.
		{"nothing after", fault(1500, 4200), "fault 1: 1 ok before, 1 ok during (2.7s), 0 ok after", "no successful operation invoked after it ended"},
	}
	for _, c := range cases {
		rc, out := runChecker(t, "-fault", c.window, p)
		if !strings.Contains(out, "\n"+c.line+"\n") {
			t.Errorf("%s: output lacks %q:\n%s", c.name, c.line, out)
		}
		if c.miss == "" {
			if rc != 0 || strings.Contains(out, "LOAD DID NOT OVERLAP") {
				t.Errorf("%s: rc %d, want 0:\n%s", c.name, rc, out)
			}
			continue
		}
		head := fmt.Sprintf("LOAD DID NOT OVERLAP FAULT 1 (%s..%s, ", strings.Split(c.window, ":")[0], strings.Split(c.window, ":")[1])
		if rc != 1 || !strings.Contains(out, head) || !strings.Contains(out, "): "+c.miss+"\n") ||
			strings.Count(out, "LOAD DID NOT OVERLAP") != 1 || !strings.Contains(out, "checker: FAIL") {
			t.Errorf("%s: rc %d, want 1 and exactly %q:\n%s", c.name, rc, head+"...): "+c.miss, out)
		}
	}
	// Several windows are numbered in order; only the second one is missed.
	rc, out := runChecker(t, "-fault", fault(1500, 3000), "-fault", fault(2600, 3500), p)
	if rc != 1 || !strings.Contains(out, "fault 2: 2 ok before, 0 ok during") || !strings.Contains(out, "LOAD DID NOT OVERLAP FAULT 2 (") ||
		strings.Contains(out, "FAULT 1 (") {
		t.Errorf("two windows: rc %d\n%s", rc, out)
	}
	// The window in relative seconds.
	if !strings.Contains(out, "+2.1s..+3.0s from the history's first invoke") {
		t.Errorf("two windows: no relative times\n%s", out)
	}
	for _, bad := range []string{"1:", "x:2", "5:3", "12"} {
		if rc, out := runChecker(t, "-fault", bad, p); rc != 2 {
			t.Errorf("-fault %q: rc %d, want 2\n%s", bad, rc, out)
		}
	}
}

func TestMaxGap(t *testing.T) {
	p := loadHistory(t)
	// x's gaps: 0.5..1.0 s, 1.0..2.5 s, 2.5..4.5 s: the longest is 2.0 s,
	// from +2.0 s to +4.0 s after the first invoke (0.5 s).
	if rc, out := runChecker(t, "-max-gap", "2s", p); rc != 0 || !strings.Contains(out, "longest_gap=2.0s key=x ") {
		t.Errorf("-max-gap 2s: rc %d, want 0\n%s", rc, out)
	}
	rc, out := runChecker(t, "-max-gap", "1900ms", p)
	want := "GAP TOO LONG: key x had no successful operation for 2.0s, from +2.0s to +4.0s after the history's first invoke (-max-gap 1.9s)"
	if rc != 1 || !strings.Contains(out, want) {
		t.Errorf("-max-gap 1900ms: rc %d, want 1 and %q\n%s", rc, want, out)
	}
}

func TestMinSuccess(t *testing.T) {
	p := loadHistory(t) // 3 ok of 4
	if rc, out := runChecker(t, "-min-success", "0.75", p); rc != 0 || !strings.Contains(out, "summary: ok=3/4 (75.0%)") {
		t.Errorf("-min-success 0.75: rc %d, want 0\n%s", rc, out)
	}
	rc, out := runChecker(t, "-min-success", "0.8", p)
	want := "SUCCESS RATE TOO LOW: ok=3/4 (75.0%) is below -min-success 0.8"
	if rc != 1 || !strings.Contains(out, want) {
		t.Errorf("-min-success 0.8: rc %d, want 1 and %q\n%s", rc, want, out)
	}
	if rc, out := runChecker(t, "-min-success", "1.5", p); rc != 2 {
		t.Errorf("-min-success 1.5: rc %d, want 2\n%s", rc, out)
	}
}

func TestOverallVerdict(t *testing.T) {
	for _, c := range []struct {
		history  Verdict
		problems []string
		want     Verdict
	}{
		{Pass, nil, Pass},
		{Inconclusive, nil, Inconclusive},
		{Violation, nil, Violation},
		{Pass, []string{"gap"}, Violation},
		{Inconclusive, []string{"gap"}, Violation},
	} {
		if got := overall(c.history, c.problems); got != c.want {
			t.Errorf("overall(%v, %v) = %v, want %v", c.history, c.problems, got, c.want)
		}
	}
}
