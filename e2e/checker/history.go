package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
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
	Return int64 // math.MaxInt64 when the outcome is unknown
	Line   int   // line of the invoke event, for messages
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
}

func isWrite(op string) bool { return op == "put" || op == "cas" || op == "delete" }

// ReadHistory parses JSON lines. Each client has at most one operation in
// flight: a completion event ("ok", "fail", "timeout") completes the client's
// pending "invoke". An invoke with no completion (the client was killed) is
// an unknown outcome.
func ReadHistory(r io.Reader) (*History, error) {
	h := &History{}
	type pending struct {
		ev   Event
		line int
	}
	inflight := map[int]pending{}
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
			return nil, fmt.Errorf("line %d: not a JSON event: %v", line, err)
		}
		switch ev.Kind {
		case "invoke":
			if err := validateInvoke(ev); err != nil {
				return nil, fmt.Errorf("line %d: %v", line, err)
			}
			if p, ok := inflight[ev.Client]; ok {
				return nil, fmt.Errorf("line %d: client %d invokes %s while its %s from line %d has not completed (one operation in flight per client)",
					line, ev.Client, ev.Op, p.ev.Op, p.line)
			}
			inflight[ev.Client] = pending{ev, line}
			h.Invokes++
		case "ok", "fail", "timeout":
			p, ok := inflight[ev.Client]
			if !ok {
				return nil, fmt.Errorf("line %d: %q event for client %d, which has no operation in flight", line, ev.Kind, ev.Client)
			}
			delete(inflight, ev.Client)
			if ev.Op != "" && ev.Op != p.ev.Op {
				return nil, fmt.Errorf("line %d: client %d completes a %s but invoked a %s on line %d", line, ev.Client, ev.Op, p.ev.Op, p.line)
			}
			if ev.TsNs < p.ev.TsNs {
				return nil, fmt.Errorf("line %d: completion at ts_ns %d is before its invoke at %d (line %d)", line, ev.TsNs, p.ev.TsNs, p.line)
			}
			switch ev.Kind {
			case "ok":
				h.Oks++
				out, err := parseOutput(p.ev.Op, ev.Output)
				if err != nil {
					return nil, fmt.Errorf("line %d: %v", line, err)
				}
				h.Ops = append(h.Ops, Op{Client: ev.Client, Input: inputOf(p.ev), Output: out, Call: p.ev.TsNs, Return: ev.TsNs, Line: p.line})
			case "fail":
				// Known not to have taken effect: it cannot constrain anything.
				h.Fails++
			case "timeout":
				h.Timeouts++
				h.addUnknown(p.ev, p.line)
			}
		default:
			return nil, fmt.Errorf("line %d: kind %q is none of invoke, ok, fail, timeout", line, ev.Kind)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	clients := make([]int, 0, len(inflight))
	for c := range inflight {
		clients = append(clients, c)
	}
	sort.Ints(clients)
	for _, c := range clients {
		h.Unfinished++
		h.addUnknown(inflight[c].ev, inflight[c].line)
	}
	return h, nil
}

func (h *History) addUnknown(inv Event, line int) {
	if !isWrite(inv.Op) {
		// A read with no answer observed nothing.
		h.DroppedReads++
		return
	}
	h.Ops = append(h.Ops, Op{Client: inv.Client, Input: inputOf(inv), Output: Output{Outcome: Unknown}, Call: inv.TsNs, Return: Infinity, Line: line})
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
