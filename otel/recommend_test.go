package otel

import (
	"testing"
	"time"

	"github.com/verifierlog/exporter/sizing"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

func TestRecommendationsReportPerLoader(t *testing.T) {
	r := newRig(t, 0)
	now := uint64(time.Hour)
	r.p.now = func() uint64 { return now }
	// cilium/ebpf style: 64 KiB ENOSPC then the true size, 10 times.
	for i := range 10 {
		start := uint64(i) * 10 * ms
		r.handle(withTrueSize(event("cilium-agent", 7, "p", start, start+ms, 65536, enospc), 70000),
			withTrueSize(event("cilium-agent", 7, "p", start+2*ms, start+3*ms, 70000, 3), 70000))
	}
	// An old-kernel loader: ENOSPC at 4 KiB, then the window passes.
	r.handle(event("old", 8, "q", 0, ms, 4096, enospc))
	r.p.Sweep(uint64(sizing.DefaultChainWindow) + 2*ms)

	rec := r.p.Recommendations()
	if len(rec.Loaders) != 2 || rec.WindowSeconds != 86400 {
		t.Fatalf("report %+v", rec)
	}
	c := rec.Loaders[0]
	if c.Loader != "cilium-agent" || c.Loads != 10 || c.NeedsKnown != 10 || c.Truncated != 10 || c.NeedMaxBytes != 70000 ||
		c.Recommended["1"] != 131072 || c.Recommended["0.99"] != 131072 || c.TypicalBufferBytes != 70000 || c.Verdict != "undersized" {
		t.Errorf("cilium-agent: %+v", c)
	}
	o := rec.Loaders[1]
	if o.Loader != "old" || o.UnknownNeeds != 1 || o.UnknownNeedAboveBytes != 4096 || o.Verdict != "undersized" || len(o.Recommended) != 0 {
		t.Errorf("old: %+v", o)
	}
	data, _ := r.metric(t, "bpf_verifier_log_recommended_buffer_bytes").(metricdata.Gauge[int64])
	got := map[string]int64{}
	for _, dp := range data.DataPoints {
		got[labels(dp.Attributes.ToSlice())] = dp.Value
	}
	if len(got) != 2 || got["command=BPF_PROG_LOAD,coverage=0.99,loader=cilium-agent"] != 131072 || got["command=BPF_PROG_LOAD,coverage=1,loader=cilium-agent"] != 131072 {
		t.Errorf("recommended gauge %v", got)
	}
	var bounded bool
	for _, s := range r.spans.GetSpans() {
		if s.Name == "bpf.load" && attrs(s.Attributes)["bpf.prog.name"] == "q" {
			bounded = attrs(s.Attributes)["bpf.log.need_above"] == "4096"
		}
	}
	if !bounded {
		t.Error("the unknown-need chain's span does not say need_above=4096")
	}
	now += uint64(25 * time.Hour)
	if rec := r.p.Recommendations(); len(rec.Loaders) != 0 {
		t.Errorf("recommendations outlived the window: %+v", rec.Loaders)
	}
}
