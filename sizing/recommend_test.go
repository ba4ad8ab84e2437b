package sizing

import (
	"math"
	"testing"
	"time"
)

func TestSizeClassIsTheSmallestPowerOfTwoThatHolds(t *testing.T) {
	for n, want := range map[uint32]uint64{0: 128, 1: 128, 128: 128, 129: 256, 5153: 8192, 65536: 65536,
		65537: 131072, 1_000_000: 1 << 20, 16<<20 - 1: 16 << 20, 1 << 30: 1 << 30, 1<<30 + 1: 0} {
		if got := SizeClassUpper(SizeClassOf(uint64(n))); got != want {
			t.Errorf("need %d: class size %d, want %d", n, got, want)
		}
	}
}

func TestQuantilesAndDefaultsAreExact(t *testing.T) {
	defaults := []Default{{"a", 10 << 10}, {"b", 1_000_000}}
	w := newLoaderWindow(time.Hour, defaults)
	for range 99 {
		w.addNeed(1, 5000)
	}
	w.addNeed(1, 70000)
	s := w.sum(2)
	if s.known != 100 || s.loads != 100 || s.maxNeed != 70000 {
		t.Fatalf("summary %+v", s)
	}
	if q, ok := s.needs.Quantile(0.99); !ok || q != 8192 {
		t.Errorf("99%%: %d %v, want 8192", q, ok)
	}
	if q, ok := s.needs.Quantile(1); !ok || q != 131072 {
		t.Errorf("100%%: %d %v, want 131072", q, ok)
	}
	r := report(windowKey{loader: "l"}, defaults, s)
	// 10 KiB truncates the one 70000-byte log; it wastes 10240-5000 on each of the 99 others.
	if d := r.Defaults[0]; d.TruncatedFraction != 0.01 || d.AvgWasteBytes != 5240 {
		t.Errorf("10 KiB default: %+v", d)
	}
	// 1,000,000 B holds all; waste (99*(1e6-5000) + (1e6-70000)) / 100.
	if d := r.Defaults[1]; d.TruncatedFraction != 0 || math.Abs(d.AvgWasteBytes-(99*995000+930000)/100.0) > 1e-9 {
		t.Errorf("1,000,000 B default: %+v", d)
	}
	w.addNeed(3, 70000) // 2 of 101 above 8 KiB: 99% needs 128 KiB
	s = w.sum(3)
	if q, _ := s.needs.Quantile(0.99); q != 131072 {
		t.Errorf("99%% of 101 with 2 large: %d, want 131072", q)
	}
	if _, ok := (&SizeClasses{}).Quantile(1); ok {
		t.Error("quantile of nothing")
	}
}

func TestWindowForgetsOldSlotsWithFixedMemory(t *testing.T) {
	w := newLoaderWindow(24*time.Hour, WellKnownDefaults)
	hour := uint64(time.Hour)
	w.addNeed(10*hour, 70000)
	w.addNeed(20*hour, 5000)
	if s := w.sum(20 * hour); s.known != 2 {
		t.Fatalf("known %d, want 2", s.known)
	}
	if s := w.sum(34 * hour); s.known != 1 || s.maxNeed != 5000 {
		t.Fatalf("24 h after the first slot began: known %d max %d", s.known, s.maxNeed)
	}
	w.addNeed(50*hour, 300) // reuses a ring slot: its old counts must go
	if s := w.sum(50 * hour); s.known != 1 || s.defTruncated[0] != 0 {
		t.Fatalf("after reuse: %+v", s)
	}
	for i := range 1_000_000 {
		w.addNeed(50*hour+uint64(i), uint32(i))
		w.addAttempt(50*hour+uint64(i), uint32(i%20), true, false)
	}
	s := w.sum(50*hour + 1_000_000)
	if s.known != 1_000_001 || len(s.buffers) != topBuffers {
		t.Fatalf("known %d, %d buffer sizes tracked (fixed at %d)", s.known, len(s.buffers), topBuffers)
	}
}

func TestVerdict(t *testing.T) {
	for _, c := range []struct {
		rec       uint64
		typical   uint32
		truncated uint64
		want      Verdict
	}{
		{131072, 65536, 3, "undersized"},
		{131072, 65536, 0, "undersized"},
		{131072, 131072, 0, "right"},
		{131072, 400000, 0, "right"},
		{131072, 16<<20 - 1, 0, "oversized by 128x"},
		{0, 65536, 0, "unknown"},
		{0, 4096, 2, "undersized"},
	} {
		if got := VerdictOf(c.rec, uint64(c.typical), c.truncated); got != c.want {
			t.Errorf("recommended %d typical %d truncated %d: %q, want %q", c.rec, c.typical, c.truncated, got, c.want)
		}
	}
}
