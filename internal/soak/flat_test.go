package soak

import (
	"strings"
	"testing"
	"time"
)

const mb = 1 << 20

// series samples f every second for n seconds.
func series(n int, f func(i int) float64) []Point {
	var ps []Point
	for i := range n {
		ps = append(ps, Point{At: time.Duration(i) * time.Second, V: f(i)})
	}
	return ps
}

func TestRSSFlatRule(t *testing.T) {
	for _, tc := range []struct {
		name string
		rss  []Point
		ok   bool
	}{
		{"a GC sawtooth is flat", series(100, func(i int) float64 { return float64(30*mb + (i%7)*mb) }), true},
		{"growth during the warm-up is ignored", series(100, func(i int) float64 { return float64(min(i, 19)*5*mb + 20*mb) }), true},
		{"a steady leak is not flat", series(100, func(i int) float64 { return float64(30*mb + i*mb/4) }), false},
		{"a step past the slack is not flat", series(100, func(i int) float64 {
			if i > 70 {
				return 39 * mb
			}
			return 30 * mb
		}), false},
		{"a step within 8 MiB is flat", series(100, func(i int) float64 {
			if i > 70 {
				return 38 * mb
			}
			return 30 * mb
		}), true},
		{"a large RSS may grow by 10%", series(100, func(i int) float64 {
			if i > 70 {
				return 219 * mb
			}
			return 200 * mb
		}), true},
		{"but not by more", series(100, func(i int) float64 {
			if i > 70 {
				return 221 * mb
			}
			return 200 * mb
		}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := RSSFlat(tc.rss)
			if v.OK != tc.ok {
				t.Errorf("RSSFlat: OK %v, want %v (%s)", v.OK, tc.ok, v.Detail)
			}
		})
	}
}

func TestGoroutinesFlatRule(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    []Point
		ok   bool
	}{
		{"connections coming and going are flat", series(60, func(i int) float64 { return float64(12 + i%(GoroutineSpread+1)) }), true},
		{"a warm-up spike is ignored", series(60, func(i int) float64 {
			if i < 10 {
				return 80
			}
			return 12
		}), true},
		{"one goroutine leaked per sample is not flat", series(60, func(i int) float64 { return float64(12 + i) }), false},
		{"a spread one above the bound is not flat", series(60, func(i int) float64 { return float64(12 + (i%2)*(GoroutineSpread+1)) }), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := GoroutinesFlat(tc.n)
			if v.OK != tc.ok {
				t.Errorf("GoroutinesFlat: OK %v, want %v (%s)", v.OK, tc.ok, v.Detail)
			}
		})
	}
}

func TestTooFewSamplesFailWithAdvice(t *testing.T) {
	for _, v := range []Verdict{RSSFlat(series(4, func(int) float64 { return mb })), GoroutinesFlat(nil)} {
		if v.OK || !strings.Contains(v.Detail, "sample") {
			t.Errorf("%s with too few samples: OK %v, %q; want a failure that asks for more samples", v.Name, v.OK, v.Detail)
		}
	}
}
