package main

import (
	"fmt"
	"sort"
)

// LostWrite reports a read, made after every write of its key had been
// answered, that returned a state which some acknowledged write had already
// replaced: that write was acknowledged and then lost.
type LostWrite struct {
	Key  string
	Read Op
	// Writes acknowledged before the read began that the read shows no trace
	// of: none of them, nor any write that could follow them, produced what
	// the read returned.
	Lost []Op
}

func (l LostWrite) String() string {
	s := fmt.Sprintf("key %q: read by client %d (%s, invoked at %d ns) returned %s, after every write of the key had completed; acknowledged write(s) lost:",
		l.Key, l.Read.Client, l.Read.Where(), l.Read.Call, state{l.Read.Output.Found, l.Read.Output.Value})
	for _, w := range l.Lost {
		s += fmt.Sprintf("\n    client %d (%s): %s, acknowledged at %d ns", w.Client, w.Where(), describe(w.Input, w.Output), w.Return)
	}
	return s
}

// writes: whether op may have changed its key, and the state it leaves.
func writeEffect(op Op) (isWrite bool, result state) {
	switch op.Input.Op {
	case "put":
		return true, state{true, op.Input.Value}
	case "delete":
		return true, state{}
	case "cas":
		if op.Output.Outcome == OK && !op.Output.Bool {
			return false, state{}
		}
		return true, state{true, op.Input.Value}
	}
	return false, state{}
}

// FindLostWrites checks every "final" read, one invoked after each write of
// its key had returned (or, with an unknown outcome, been invoked). The read
// must show the effect of a write that no acknowledged write definitely
// followed (one that returned before the other was invoked).
func FindLostWrites(ops []Op) []LostWrite {
	keys, byKey := groupByKey(ops)
	var res []LostWrite
	for _, k := range keys {
		kops := byKey[k]
		var writes, acked []Op
		for _, op := range kops {
			if w, _ := writeEffect(op); w {
				writes = append(writes, op)
				if op.Output.Outcome == OK {
					acked = append(acked, op)
				}
			}
		}
		// A write is a candidate final state unless an acknowledged write
		// was invoked after it returned.
		candidates := map[state]bool{}
		if len(acked) == 0 {
			candidates[state{}] = true // nothing acknowledged: the initial state may remain
		}
		for _, w := range writes {
			superseded := false
			for _, a := range acked {
				if a.Call > w.Return {
					superseded = true
					break
				}
			}
			if !superseded {
				_, s := writeEffect(w)
				candidates[s] = true
			}
		}
		for _, r := range kops {
			if r.Input.Op != "get" || r.Output.Outcome != OK {
				continue
			}
			final := true
			for _, w := range writes {
				end := w.Return
				if w.Output.Outcome == Unknown {
					end = w.Call
				}
				if end >= r.Call {
					final = false
					break
				}
			}
			got := state{r.Output.Found, r.Output.Value}
			if !final || candidates[got] {
				continue
			}
			// Lost: the acknowledged writes that definitely came after every
			// write that could have produced what the read saw.
			var producedAt []int64
			for _, w := range writes {
				if _, s := writeEffect(w); s == got {
					producedAt = append(producedAt, w.Return)
				}
			}
			var lost []Op
			for _, a := range acked {
				after := true
				for _, ret := range producedAt {
					if a.Call <= ret {
						after = false
						break
					}
				}
				if after {
					lost = append(lost, a)
				}
			}
			res = append(res, LostWrite{Key: k, Read: r, Lost: lost})
		}
	}
	return res
}

// groupByKey: the keys in sorted order, and each key's operations.
func groupByKey(ops []Op) ([]string, map[string][]Op) {
	byKey := map[string][]Op{}
	for _, op := range ops {
		byKey[op.Input.Key] = append(byKey[op.Input.Key], op)
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, byKey
}
