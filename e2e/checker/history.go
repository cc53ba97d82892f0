package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
)

// Event is one line of a client history file (JSON lines). See e2e/README.md.
type Event struct {
	Client   int              `json:"client"`
	Op       string           `json:"op"`
	Key      string           `json:"key"`
	Value    *string          `json:"value"`
	Expected *string          `json:"expected"`
	Kind     string           `json:"kind"`
	Output   *json.RawMessage `json:"output"`
	TsNs     int64            `json:"ts_ns"`
}

// Outcome of an operation as the client saw it.
type Outcome int

const (
	// OK: the operation took effect and its output is known.
	OK Outcome = iota
	// Unknown: the operation may or may not have taken effect (timeout, lost
	// connection, client killed before the answer): it is checked as if it
	// could take effect at any time after its invocation.
	Unknown
)

// Input of an operation, as the model sees it.
type Input struct {
	Op       string
	Key      string
	Value    string // put, cas: the new value
	Expected *string
}

// Output of an operation, as the model sees it.
type Output struct {
	Outcome Outcome
	// get: whether the key was present and its value.
	Found bool
	Value string
	// cas: whether the swap happened; delete: whether the key existed
	// (HasBool false means the client did not record it).
	Bool    bool
	HasBool bool
}

// Op is a completed (or unknown-outcome) operation: an invoke paired with its
// completion.
type Op struct {
	Client int
	Input  Input
	Output Output
	Call   int64
	Return int64  // math.MaxInt64 when the outcome is unknown
	Line   int    // line of the invoke event, for messages
	File   string // file of the invoke event when the history has several, else ""
}

// Where names the invoke event of op: "line 12", or "b.jsonl line 12" in a
// history read from several files.
func (op Op) Where() string { return where(op.File, op.Line) }

func where(file string, line int) string {
	if file == "" {
		return fmt.Sprintf("line %d", line)
	}
	return fmt.Sprintf("%s line %d", file, line)
}

// Attempt is any invoked operation, whatever became of it: the load summary
// (summary.go) counts them.
type Attempt struct {
	Key     string
	Call    int64
	Return  int64  // the completion's time; 0 when Outcome is "unfinished"
	Outcome string // "ok", "fail", "timeout" or "unfinished"
}

// Infinity is the return time of an operation whose outcome is unknown.
const Infinity = int64(math.MaxInt64)

// History is a parsed history.
type History struct {
	Ops []Op
	// Counts of events by kind, and the reads/failed operations dropped
	// because they cannot affect the state.
	Invokes, Oks, Fails, Timeouts, Unfinished int
	DroppedReads                              int
	// Every invoked operation, in the order of their completions (unfinished
	// ones last).
	Attempts []Attempt
}

func isWrite(op string) bool { return op == "put" || op == "cas" || op == "delete" }

// ReadHistory parses JSON lines. Each client has at most one operation in
// flight: a completion event ("ok", "fail", "timeout") completes the client's
// pending "invoke". An invoke with no completion (the client was killed) is
// an unknown outcome.
func ReadHistory(r io.Reader) (*History, error) {
	p := newParser()
	if err := p.read(r, ""); err != nil {
		return nil, err
	}
	return p.finish(), nil
}

// ReadHistoryFiles parses the concatenation of the files, in order, as one
// history: clients are the same clients in every file, and a client's
// operation invoked in one file may complete in a later one. An error names
// the file and line.
func ReadHistoryFiles(paths []string) (*History, error) {
	p := newParser()
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		name := ""
		if len(paths) > 1 {
			name = path
		}
		err = p.read(f, name)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return p.finish(), nil
}

type pending struct {
	ev   Event
	file string
	line int
}

// parser reads one or more files of a history, keeping the operations in
// flight from one file to the next.
type parser struct {
	h        *History
	inflight map[int]pending
}

func newParser() *parser { return &parser{h: &History{}, inflight: map[int]pending{}} }

// read parses one file (named file in messages about other files' lines;
// "" for a single history).
func (p *parser) read(r io.Reader, file string) error {
	h := p.h
	inflight := p.inflight
	// at: where a pending invoke was, as seen from a line of this file.
	at := func(q pending) string {
		if q.file == file {
			return fmt.Sprintf("line %d", q.line)
		}
		return where(q.file, q.line)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(trimSpace(b)) == 0 {
			continue
		}
		var ev Event
		if err := json.Unmarshal(b, &ev); err != nil {
			return fmt.Errorf("line %d: not a JSON event: %v", line, err)
		}
		switch ev.Kind {
		case "invoke":
			if err := validateInvoke(ev); err != nil {
				return fmt.Errorf("line %d: %v", line, err)
			}
			if q, ok := inflight[ev.Client]; ok {
				return fmt.Errorf("line %d: client %d invokes %s while its %s from %s has not completed (one operation in flight per client)",
					line, ev.Client, ev.Op, q.ev.Op, at(q))
			}
			inflight[ev.Client] = pending{ev, file, line}
			h.Invokes++
		case "ok", "fail", "timeout":
			q, ok := inflight[ev.Client]
			if !ok {
				return fmt.Errorf("line %d: %q event for client %d, which has no operation in flight", line, ev.Kind, ev.Client)
			}
			delete(inflight, ev.Client)
			if ev.Op != "" && ev.Op != q.ev.Op {
				return fmt.Errorf("line %d: client %d completes a %s but invoked a %s on %s", line, ev.Client, ev.Op, q.ev.Op, at(q))
			}
			if ev.TsNs < q.ev.TsNs {
				return fmt.Errorf("line %d: completion at ts_ns %d is before its invoke at %d (%s)", line, ev.TsNs, q.ev.TsNs, at(q))
			}
			h.Attempts = append(h.Attempts, Attempt{Key: q.ev.Key, Call: q.ev.TsNs, Return: ev.TsNs, Outcome: ev.Kind})
			switch ev.Kind {
			case "ok":
				h.Oks++
				out, err := parseOutput(q.ev.Op, ev.Output)
				if err != nil {
					return fmt.Errorf("line %d: %v", line, err)
				}
				h.Ops = append(h.Ops, Op{Client: ev.Client, Input: inputOf(q.ev), Output: out, Call: q.ev.TsNs, Return: ev.TsNs, Line: q.line, File: q.file})
			case "fail":
				// Known not to have taken effect: it cannot constrain anything.
				h.Fails++
			case "timeout":
				h.Timeouts++
				h.addUnknown(q)
			}
		default:
			return fmt.Errorf("line %d: kind %q is none of invoke, ok, fail, timeout", line, ev.Kind)
		}
	}
	return sc.Err()
}

// finish: the invokes still in flight at the end of the last file are
// unknown outcomes.
func (p *parser) finish() *History {
	h := p.h
	clients := make([]int, 0, len(p.inflight))
	for c := range p.inflight {
		clients = append(clients, c)
	}
	sort.Ints(clients)
	for _, c := range clients {
		q := p.inflight[c]
		h.Unfinished++
		h.Attempts = append(h.Attempts, Attempt{Key: q.ev.Key, Call: q.ev.TsNs, Outcome: "unfinished"})
		h.addUnknown(q)
	}
	p.inflight = map[int]pending{}
	return h
}

func (h *History) addUnknown(q pending) {
	inv := q.ev
	if !isWrite(inv.Op) {
		// A read with no answer observed nothing.
		h.DroppedReads++
		return
	}
	h.Ops = append(h.Ops, Op{Client: inv.Client, Input: inputOf(inv), Output: Output{Outcome: Unknown}, Call: inv.TsNs, Return: Infinity, Line: q.line, File: q.file})
}

func inputOf(ev Event) Input {
	in := Input{Op: ev.Op, Key: ev.Key, Expected: ev.Expected}
	if ev.Value != nil {
		in.Value = *ev.Value
	}
	return in
}

func validateInvoke(ev Event) error {
	switch ev.Op {
	case "get", "delete":
	case "put":
		if ev.Value == nil {
			return fmt.Errorf("put without a value")
		}
	case "cas":
		if ev.Value == nil {
			return fmt.Errorf("cas without a (new) value")
		}
	default:
		return fmt.Errorf("op %q is none of put, get, cas, delete", ev.Op)
	}
	return nil
}

func parseOutput(op string, raw *json.RawMessage) (Output, error) {
	out := Output{Outcome: OK}
	isNull := raw == nil || string(*raw) == "null"
	switch op {
	case "get":
		// A string: the value; null: the key is absent.
		if isNull {
			return out, nil
		}
		var s string
		if err := json.Unmarshal(*raw, &s); err != nil {
			return out, fmt.Errorf("get output must be a string or null, got %s", string(*raw))
		}
		out.Found, out.Value = true, s
	case "cas":
		if isNull {
			return out, fmt.Errorf("cas output must be true (swapped) or false, got null")
		}
		if err := json.Unmarshal(*raw, &out.Bool); err != nil {
			return out, fmt.Errorf("cas output must be true (swapped) or false, got %s", string(*raw))
		}
		out.HasBool = true
	case "delete":
		// true/false: whether the key existed; null: not recorded.
		if !isNull {
			if err := json.Unmarshal(*raw, &out.Bool); err != nil {
				return out, fmt.Errorf("delete output must be true/false (existed) or null, got %s", string(*raw))
			}
			out.HasBool = true
		}
	}
	return out, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
