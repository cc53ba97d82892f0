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
