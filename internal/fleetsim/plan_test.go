package fleetsim

import (
	"testing"
	"time"

	"github.com/verifierlog/exporter/sizing"
)

// The plan's truth must be unambiguous from the buckets where the report
// claims exactness, and round() must recover every series' count, at the
// scrape intervals the test allows.
func TestPlanIsExactFromBuckets(t *testing.T) {
	for _, scrape := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second} {
		plan := NewPlan(1000, NewTimeline(scrape, 10*time.Second+6*scrape), 1)
		if b := plan.RoundingBound(); b >= 0.45 {
			t.Errorf("scrape %v: rounding bound %.2f", scrape, b)
		}
		truth := plan.Truth()
		for name, lt := range truth.Loaders {
			for _, d := range sizing.WellKnownDefaults {
				if lt.Straddles(d.Bytes) {
					t.Errorf("%s: a need lies in the bucket default %s (%d) is inside", name, d.Name, d.Bytes)
				}
			}
			if lt.Loads != lt.NeedsKnown+lt.Unknown || uint64(len(lt.Needs)) != lt.NeedsKnown {
				t.Errorf("%s: %d loads, %d known needs (%d listed), %d unknown", name, lt.Loads, lt.NeedsKnown, len(lt.Needs), lt.Unknown)
			}
		}
		tl := plan.Timeline
		// Every load is visible (past the hold, and a join's discovery
		// and first scrape) a few intervals before what follows it.
		for _, gap := range []time.Duration{tl.Wave, tl.Leave - tl.Wave} {
			if gap < tl.Hold+2*scrape {
				t.Errorf("scrape %v: a gap of %v between events, less than the hold %v and two intervals", scrape, gap, tl.Hold)
			}
		}
		if tl.Hold < 5*time.Second+2*scrape {
			t.Errorf("scrape %v: hold %v shorter than a joiner's discovery and first scrape", scrape, tl.Hold)
		}
	}
}

// The truth's figures on a hand-made loader.
func TestLoaderTruth(t *testing.T) {
	plan := Plan{Nodes: []NodePlan{{ID: 0, Steps: []Step{{Loads: []Load{
		{Loader: LoaderCilium, Need: 5 << 20, Buffers: []uint32{4 << 20, 8 << 20}},
		{Loader: LoaderCilium, Need: 1<<20 + 1, Buffers: []uint32{4 << 20}},
		{Loader: LoaderCilium, Need: 3 << 20, Buffers: []uint32{4 << 20}},
		{Loader: LoaderCilium, Mode: NeedUnknown, Need: 3 << 20, Buffers: []uint32{4 << 20}},
	}}}}}}
	lt := plan.Truth().Loaders[LoaderCilium]
	if lt.Loads != 4 || lt.NeedsKnown != 3 || lt.Unknown != 1 || lt.Truncated != 1 {
		t.Errorf("loads %d known %d unknown %d truncated %d", lt.Loads, lt.NeedsKnown, lt.Unknown, lt.Truncated)
	}
	if q := lt.Quantile(0.5); q != 4<<20 {
		t.Errorf("p50 %d", q)
	}
	if q := lt.Quantile(1); q != 8<<20 {
		t.Errorf("p100 %d", q)
	}
	if a, m := lt.MaxNeedBucket(); a != 4<<20 || m != 8<<20 {
		t.Errorf("max need in (%d, %d]", a, m)
	}
	if a, m := lt.TypicalBufferBucket(); a != 2<<20 || m != 4<<20 {
		t.Errorf("typical buffer in (%d, %d]", a, m)
	}
	if f := lt.TruncatedFraction(4 << 20); f != 1.0/3 {
		t.Errorf("4 MiB truncates %v", f)
	}
	if w, ok := lt.AvgWaste(4 << 20); !ok || w != float64((4<<20-(1<<20+1))+(4<<20-3<<20))/2 {
		t.Errorf("4 MiB wastes %v, %v", w, ok)
	}
	if !lt.Straddles(5<<20) || lt.Straddles(4<<20) || lt.Straddles(1_000_000) {
		t.Error("Straddles")
	}
}
