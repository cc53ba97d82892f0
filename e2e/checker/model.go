package main

import (
	"fmt"
	"sort"

	"github.com/anishathalye/porcupine"
)

// state of one key.
type state struct {
	present bool
	value   string
}

func (s state) String() string {
	if !s.present {
		return "<absent>"
	}
	return fmt.Sprintf("%q", s.value)
}

// casApplies: whether a cas with this input swaps in state s.
func casApplies(s state, in Input) bool {
	if in.Expected == nil {
		return !s.present
	}
	return s.present && s.value == *in.Expected
}

// step is the sequential specification of one key. An operation with an
// unknown outcome always takes its effect here: because its return time is
// infinite, porcupine may also linearize it after every other operation,
// which covers "it never happened".
func step(s state, in Input, out Output) (bool, state) {
	switch in.Op {
	case "get":
		if out.Found != s.present || (s.present && out.Value != s.value) {
			return false, s
		}
		return true, s
	case "put":
		return true, state{true, in.Value}
	case "delete":
		if out.Outcome == OK && out.HasBool && out.Bool != s.present {
			return false, s
		}
		return true, state{}
	case "cas":
		applies := casApplies(s, in)
		if out.Outcome == OK && out.Bool != applies {
			return false, s
		}
		if applies {
			return true, state{true, in.Value}
		}
		return true, s
	}
	return false, s
}

func describe(in Input, out Output) string {
	var call string
	switch in.Op {
	case "get", "delete":
		call = fmt.Sprintf("%s(%q)", in.Op, in.Key)
	case "put":
		call = fmt.Sprintf("put(%q, %q)", in.Key, in.Value)
	case "cas":
		exp := "<absent>"
		if in.Expected != nil {
			exp = fmt.Sprintf("%q", *in.Expected)
		}
		call = fmt.Sprintf("cas(%q, %s -> %q)", in.Key, exp, in.Value)
	}
	if out.Outcome == Unknown {
		return call + " -> ?"
	}
	switch in.Op {
	case "get":
		return call + " -> " + state{out.Found, out.Value}.String()
	case "cas":
		return fmt.Sprintf("%s -> %v", call, out.Bool)
	case "delete":
		if out.HasBool {
			return fmt.Sprintf("%s -> existed=%v", call, out.Bool)
		}
	}
	return call + " -> ok"
}

// kvModel is a key-value store partitioned by key: the history is
// linearizable iff each key's sub-history is.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(Input).Key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, byKey[k])
		}
		return parts
	},
	Init: func() interface{} { return state{} },
	Step: func(s, in, out interface{}) (bool, interface{}) {
		return step(s.(state), in.(Input), out.(Output))
	},
	Equal:             func(a, b interface{}) bool { return a.(state) == b.(state) },
	DescribeOperation: func(in, out interface{}) string { return describe(in.(Input), out.(Output)) },
	DescribeState:     func(s interface{}) string { return s.(state).String() },
}

func toPorcupine(ops []Op) []porcupine.Operation {
	res := make([]porcupine.Operation, len(ops))
	for i, op := range ops {
		res[i] = porcupine.Operation{ClientId: op.Client, Input: op.Input, Output: op.Output, Call: op.Call, Return: op.Return}
	}
	return res
}
