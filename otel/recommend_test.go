package otel

import (
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

func TestSizeClassIsTheSmallestPowerOfTwoThatHolds(t *testing.T) {
	for n, want := range map[uint32]uint64{0: 128, 1: 128, 128: 128, 129: 256, 5153: 8192, 65536: 65536,
		65537: 131072, 1_000_000: 1 << 20, 16<<20 - 1: 16 << 20, 1 << 30: 1 << 30, 1<<30 + 1: 0} {
		if got := classSize(sizeClass(n)); got != want {
			t.Errorf("need %d: class size %d, want %d", n, got, want)
		}
	}
}

func TestRecommendCoverage(t *testing.T) {
	w := newNeedWindow(time.Hour)
	for range 99 {
		w.add(1, 5000) // 8 KiB
	}
	w.add(1, 70000) // 128 KiB
	counts, total := w.totals(2)
	if total != 100 {
		t.Fatalf("total %d", total)
	}
	if s, ok := recommend(counts, total, 0.99); !ok || s != 8192 {
		t.Errorf("99%%: %d %v, want 8192", s, ok)
	}
	if s, ok := recommend(counts, total, 1); !ok || s != 131072 {
		t.Errorf("100%%: %d %v, want 131072", s, ok)
	}
	w.add(3, 70000) // now 2 of 101 above 8 KiB: 99% needs 128 KiB
	counts, total = w.totals(3)
	if s, _ := recommend(counts, total, 0.99); s != 131072 {
		t.Errorf("99%% of 101 with 2 large: %d, want 131072", s)
	}
	if _, ok := recommend([sizeClasses]uint64{}, 0, 1); ok {
		t.Error("recommendation from no data")
	}
}

func TestNeedWindowForgetsOldSlots(t *testing.T) {
	w := newNeedWindow(24 * time.Hour)
	hour := uint64(time.Hour)
	w.add(10*hour, 70000)
	w.add(20*hour, 5000)
	if _, total := w.totals(20 * hour); total != 2 {
		t.Fatalf("total %d, want 2", total)
	}
	// 24 h after the first slot began, it is out; the second is in.
	counts, total := w.totals(34 * hour)
	if total != 1 || counts[sizeClass(5000)] != 1 {
		t.Fatalf("after 24h: total %d", total)
	}
	w.add(50*hour, 300) // reuses a ring slot: the old counts must go
	if _, total := w.totals(50 * hour); total != 1 {
		t.Fatalf("after reuse: total %d, want 1", total)
	}
	// Memory is fixed: a million needs change no size.
	for i := range 1_000_000 {
		w.add(50*hour+uint64(i), uint32(i))
	}
	if _, total := w.totals(50*hour + 1_000_000); total != 1_000_001 {
		t.Fatalf("total %d", total)
	}
}

func TestRecommendedBufferGauge(t *testing.T) {
	r := newRig(t, 0)
	now := uint64(time.Hour)
	r.p.now = func() uint64 { return now }
	for i := range 100 {
		need := uint32(5000)
		if i == 0 {
			need = 70000
		}
		start := uint64(i) * 10 * ms
		r.handle(withTrueSize(event("loader", 7, "p", start, start+ms, 1<<20, 3), need))
	}
	data, _ := r.metric(t, "bpf_verifier_log_recommended_buffer_bytes").(metricdata.Gauge[int64])
	got := map[string]int64{}
	for _, dp := range data.DataPoints {
		got[labels(dp.Attributes.ToSlice())] = dp.Value
	}
	want := map[string]int64{
		"command=BPF_PROG_LOAD,coverage=0.99,loader=loader": 8192,
		"command=BPF_PROG_LOAD,coverage=1,loader=loader":    131072,
	}
	if len(got) != 2 || got["command=BPF_PROG_LOAD,coverage=0.99,loader=loader"] != 8192 || got["command=BPF_PROG_LOAD,coverage=1,loader=loader"] != 131072 {
		t.Errorf("recommended %v, want %v", got, want)
	}
	now += uint64(25 * time.Hour)
	data, _ = r.metric(t, "bpf_verifier_log_recommended_buffer_bytes").(metricdata.Gauge[int64])
	if len(data.DataPoints) != 0 {
		t.Errorf("recommendations outlived the window: %v", data.DataPoints)
	}
}
