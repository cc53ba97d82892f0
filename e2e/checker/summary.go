package main

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Summary of the load a history records, over every invoked operation (the
// final reads included).
type Summary struct {
	// Ok operations answered ok, of Total invoked (ok, fail, timeout or
	// unfinished: all but ok count as not ok).
	Ok, Total int
	// Start, End: the span of the history, from its first invoke to its last
	// completion (ts_ns).
	Start, End int64
	// The longest interval [GapStart, GapEnd] in which key GapKey had no
	// operation complete ok (the span's ends count: a key's gap can run from
	// Start to its first ok, or from its last ok to End). GapKey is "" when
	// the history has no operation.
	GapKey           string
	GapStart, GapEnd int64
	// Latencies (completion - invoke) of the ok operations, nearest-rank
	// percentiles; 0 without any.
	P50, P99 time.Duration
}

// Gap is the longest interval without an ok operation on GapKey.
func (s Summary) Gap() time.Duration { return time.Duration(s.GapEnd - s.GapStart) }

// SuccessRate is Ok/Total, 0 when nothing was invoked.
func (s Summary) SuccessRate() float64 {
	if s.Total == 0 {
		return 0
	}
	return float64(s.Ok) / float64(s.Total)
}

// String is the summary line:
//
//	summary: ok=N/M (P%) longest_gap=G.Gs key=K p50=Xms p99=Yms
func (s Summary) String() string {
	key := s.GapKey
	if key == "" {
		key = "-"
	}
	return fmt.Sprintf("summary: ok=%d/%d (%.1f%%) longest_gap=%.1fs key=%s p50=%.1fms p99=%.1fms",
		s.Ok, s.Total, 100*s.SuccessRate(), s.Gap().Seconds(), key, ms(s.P50), ms(s.P99))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rel: a time of the history as seconds after its first invoke ("+12.3s").
func (s Summary) rel(ts int64) string {
	return fmt.Sprintf("%+.1fs", float64(ts-s.Start)/1e9)
}

// Summarize computes the summary of a history.
func Summarize(h *History) Summary {
	var s Summary
	if len(h.Attempts) == 0 {
		return s
	}
	s.Total = len(h.Attempts)
	s.Start, s.End = int64(math.MaxInt64), int64(math.MinInt64)
	oks := map[string][]int64{}
	var lat []int64
	for _, a := range h.Attempts {
		s.Start = min(s.Start, a.Call)
		if a.Outcome != "unfinished" {
			s.End = max(s.End, a.Return)
		}
		if _, seen := oks[a.Key]; !seen {
			oks[a.Key] = nil
		}
		if a.Outcome == "ok" {
			s.Ok++
			oks[a.Key] = append(oks[a.Key], a.Return)
			lat = append(lat, a.Return-a.Call)
		}
	}
	s.End = max(s.End, s.Start) // no completion at all: an empty span
	keys := make([]string, 0, len(oks))
	for k := range oks {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s.GapKey, s.GapStart, s.GapEnd = keys[0], s.Start, s.Start
	for _, k := range keys {
		times := append(oks[k], s.End)
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		prev := s.Start
		for _, t := range times {
			if t-prev > s.GapEnd-s.GapStart {
				s.GapKey, s.GapStart, s.GapEnd = k, prev, t
			}
			prev = t
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	s.P50, s.P99 = percentile(lat, 50), percentile(lat, 99)
	return s
}

// percentile: nearest rank (the smallest value with at least p% of the values
// at or below it) of sorted values.
func percentile(sorted []int64, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100
	return time.Duration(sorted[max(rank, 1)-1])
}

// Window is a disruption (fault) window, in ts_ns (epoch nanoseconds).
type Window struct{ Start, End int64 }

// windows is the repeatable -fault START_NS:END_NS flag.
type windows []Window

func (w *windows) String() string {
	parts := make([]string, len(*w))
	for i, x := range *w {
		parts[i] = fmt.Sprintf("%d:%d", x.Start, x.End)
	}
	return strings.Join(parts, ",")
}

func (w *windows) Set(v string) error {
	a, b, found := strings.Cut(v, ":")
	start, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	end, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
	if !found || err1 != nil || err2 != nil {
		return fmt.Errorf("want START_NS:END_NS (nanoseconds since the UNIX epoch), got %q", v)
	}
	if end < start {
		return fmt.Errorf("window %q ends before it starts", v)
	}
	*w = append(*w, Window{start, end})
	return nil
}

// FaultStats counts the ok operations around a fault window.
type FaultStats struct {
	Window
	// Before: ok operations that completed before Start; During: that
	// completed within [Start, End]; After: that were invoked after End.
	Before, During, After int
}

// LoadCriteria are the optional checks of the load itself (zero: none).
type LoadCriteria struct {
	Faults     []Window
	MaxGap     time.Duration // 0: no limit
	MinSuccess float64       // 0: no minimum
}

func (c LoadCriteria) any() bool { return len(c.Faults) > 0 || c.MaxGap > 0 || c.MinSuccess > 0 }

// LoadReport: the summary, the fault windows' counts, and the criteria the
// load missed (each a violation).
type LoadReport struct {
	Summary  Summary
	Faults   []FaultStats
	Problems []string
}

// CheckLoad summarizes the history and checks it against the criteria.
func CheckLoad(h *History, c LoadCriteria) LoadReport {
	r := LoadReport{Summary: Summarize(h)}
	s := r.Summary
	for i, w := range c.Faults {
		f := FaultStats{Window: w}
		for _, a := range h.Attempts {
			if a.Outcome != "ok" {
				continue
			}
			if a.Return < w.Start {
				f.Before++
			}
			if a.Return >= w.Start && a.Return <= w.End {
				f.During++
			}
			if a.Call > w.End {
				f.After++
			}
		}
		r.Faults = append(r.Faults, f)
		head := fmt.Sprintf("LOAD DID NOT OVERLAP FAULT %d (%d..%d, %s..%s from the history's first invoke)",
			i+1, w.Start, w.End, s.rel(w.Start), s.rel(w.End))
		if f.Before == 0 {
			r.Problems = append(r.Problems, head+": no successful operation completed before it started")
		}
		if f.During == 0 {
			r.Problems = append(r.Problems, head+": no successful operation completed during it")
		}
		if f.After == 0 {
			r.Problems = append(r.Problems, head+": no successful operation invoked after it ended")
		}
	}
	if c.MaxGap > 0 && s.Gap() > c.MaxGap {
		r.Problems = append(r.Problems, fmt.Sprintf("GAP TOO LONG: key %s had no successful operation for %.1fs, from %s to %s after the history's first invoke (-max-gap %s)",
			s.GapKey, s.Gap().Seconds(), s.rel(s.GapStart), s.rel(s.GapEnd), c.MaxGap))
	}
	if c.MinSuccess > 0 && s.SuccessRate() < c.MinSuccess {
		r.Problems = append(r.Problems, fmt.Sprintf("SUCCESS RATE TOO LOW: ok=%d/%d (%.1f%%) is below -min-success %g",
			s.Ok, s.Total, 100*s.SuccessRate(), c.MinSuccess))
	}
	return r
}

// Line is the per-window line: "fault 1: 1234 ok before, 56 ok during (3.2s), 789 ok after".
func (f FaultStats) Line(i int) string {
	return fmt.Sprintf("fault %d: %d ok before, %d ok during (%.1fs), %d ok after",
		i+1, f.Before, f.During, float64(f.End-f.Start)/1e9, f.After)
}
