package soak

import (
	"fmt"
	"time"
)

// The flatness rule. A sampled series is judged after a warm-up (the first
// WarmUp of the time the samples span: the exporter's heap, label caches
// and chain table fill up then), and the rest is cut in two halves of equal
// time:
//
//   - RSS is flat if the largest RSS of the second half exceeds the largest
//     of the first half by at most max(RSSSlackBytes, RSSSlackRatio x that
//     first maximum). Maxima, not means or a fitted slope: a Go heap moves
//     in a sawtooth (GC cycles, the scavenger returning pages late), which
//     a maximum ignores, while a leak keeps raising the later maximum.
//   - Goroutines are flat if their largest and smallest count after the
//     warm-up differ by at most GoroutineSpread (scrape connections and
//     OTel export goroutines come and go; a leak grows without bound).
//
// Each half needs at least two samples; fewer is a failed verdict that says
// to run longer or sample more often.
const (
	WarmUp          = 0.2
	RSSSlackBytes   = 8 << 20
	RSSSlackRatio   = 0.10
	GoroutineSpread = 10
)

// Point is a value sampled At a time since the soak began.
type Point struct {
	At time.Duration
	V  float64
}

// Verdict is one check of a soak.
type Verdict struct {
	Name   string
	OK     bool
	Detail string
}

// settled drops the warm-up of ps (sorted by At) and splits the rest into
// two halves of equal time.
func settled(ps []Point) (first, second []Point, err error) {
	if len(ps) == 0 {
		return nil, nil, fmt.Errorf("no samples")
	}
	start, end := ps[0].At, ps[len(ps)-1].At
	cut := start + time.Duration(WarmUp*float64(end-start))
	mid := cut + (end-cut)/2
	for _, p := range ps {
		switch {
		case p.At < cut:
		case p.At < mid:
			first = append(first, p)
		default:
			second = append(second, p)
		}
	}
	if len(first) < 2 || len(second) < 2 {
		return nil, nil, fmt.Errorf("too few samples after the warm-up (%d and %d in the two halves, want 2 each): run longer or sample more often", len(first), len(second))
	}
	return first, second, nil
}

func maxOf(ps []Point) float64 {
	m := ps[0].V
	for _, p := range ps[1:] {
		m = max(m, p.V)
	}
	return m
}

func minOf(ps []Point) float64 {
	m := ps[0].V
	for _, p := range ps[1:] {
		m = min(m, p.V)
	}
	return m
}

// RSSFlat applies the RSS rule to rss, in bytes.
func RSSFlat(rss []Point) Verdict {
	v := Verdict{Name: "RSS flat"}
	first, second, err := settled(rss)
	if err != nil {
		v.Detail = err.Error()
		return v
	}
	a, b := maxOf(first), maxOf(second)
	slack := max(RSSSlackBytes, RSSSlackRatio*a)
	v.OK = b <= a+slack
	v.Detail = fmt.Sprintf("max %.1f MiB in the first half after warm-up, %.1f MiB in the second (%+.1f MiB, allowed +%.1f MiB)",
		a/(1<<20), b/(1<<20), (b-a)/(1<<20), slack/(1<<20))
	return v
}

// GoroutinesFlat applies the goroutine rule to n.
func GoroutinesFlat(n []Point) Verdict {
	v := Verdict{Name: "goroutines flat"}
	first, second, err := settled(n)
	if err != nil {
		v.Detail = err.Error()
		return v
	}
	all := append(first, second...)
	lo, hi := minOf(all), maxOf(all)
	v.OK = hi-lo <= GoroutineSpread
	v.Detail = fmt.Sprintf("%.0f to %.0f after warm-up (spread %.0f, allowed %d)", lo, hi, hi-lo, GoroutineSpread)
	return v
}
