package otel

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/sizing"
	"github.com/verifierlog/exporter/tracer"
)

const ms = uint64(time.Millisecond)

// event builds a PROG_LOAD attempt of loader comm from pid.
func event(comm string, pid uint32, name string, startNs, endNs uint64, logSize uint32, ret int64) tracer.LoadEvent {
	ev := tracer.LoadEvent{Command: tracer.CmdProgLoad, PID: pid, TID: pid, ProgType: 1, InsnCnt: 100,
		LogLevel: 1, LogSize: logSize, HasLogBuf: logSize > 0, StartNs: startNs, EndNs: endNs, Ret: ret, AttachMode: tracer.AttachTracepoint}
	copy(ev.Comm[:], comm)
	copy(ev.ProgName[:], name)
	return ev
}

func withTrueSize(ev tracer.LoadEvent, n uint32) tracer.LoadEvent {
	ev.LogTrueSize, ev.LogTrueSizeKnown = n, true
	return ev
}

var enospc = -int64(unix.ENOSPC)

type rig struct {
	p      *Pipeline
	reader *sdkmetric.ManualReader
	spans  *tracetest.InMemoryExporter
	tp     *sdktrace.TracerProvider
}

func newRig(t *testing.T, limit int) *rig {
	t.Helper()
	rec := NewRecorder()
	r := &rig{reader: sdkmetric.NewManualReader(sdkmetric.WithProducer(rec)), spans: tracetest.NewInMemoryExporter()}
	r.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(r.spans))
	p, err := New(Config{
		Recorder:       rec,
		MeterProvider:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader)),
		TracerProvider: r.tp,
		Clock:          tracer.WallClockWithOffset(time.Duration(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano())),
		LoaderLimit:    limit,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	return r
}

func (r *rig) handle(evs ...tracer.LoadEvent) {
	for i := range evs {
		r.p.Handle(&evs[i])
	}
}

// metric returns the data of the named instrument.
func (r *rig) metric(t *testing.T, name string) metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data
			}
		}
	}
	return nil
}

// sums flattens a counter into "k=v,k=v" -> value.
func (r *rig) sums(t *testing.T, name string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	data, _ := r.metric(t, name).(metricdata.Sum[int64])
	for _, dp := range data.DataPoints {
		out[labels(dp.Attributes.ToSlice())] = dp.Value
	}
	return out
}

// histograms flattens a histogram into labels -> (count, sum, bucket counts).
func (r *rig) histograms(t *testing.T, name string) map[string]metricdata.HistogramDataPoint[int64] {
	t.Helper()
	out := map[string]metricdata.HistogramDataPoint[int64]{}
	data, _ := r.metric(t, name).(metricdata.Histogram[int64])
	for _, dp := range data.DataPoints {
		out[labels(dp.Attributes.ToSlice())] = dp
	}
	return out
}

func labels(kvs []attribute.KeyValue) string {
	var parts []string
	for _, a := range kvs {
		parts = append(parts, fmt.Sprintf("%s=%s", a.Key, a.Value.Emit()))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func TestAttemptMetricsCountEveryAttempt(t *testing.T) {
	r := newRig(t, 0)
	r.handle(
		withTrueSize(event("cilium-agent", 10, "a", 0, 2*ms, 65536, enospc), 70000),
		withTrueSize(event("cilium-agent", 10, "a", 3*ms, 5*ms, 70000, 7), 70000),
		event("bpftool", 20, "b", 0, 1*ms, 1<<24, 8),
	)
	loads := r.sums(t, "bpf_prog_loads")
	want := map[string]int64{
		"command=BPF_PROG_LOAD,loader=cilium-agent,log_mode=rotating,prog_type=socket_filter,result=ENOSPC": 1,
		"command=BPF_PROG_LOAD,loader=cilium-agent,log_mode=rotating,prog_type=socket_filter,result=ok":     1,
		"command=BPF_PROG_LOAD,loader=bpftool,log_mode=rotating,prog_type=socket_filter,result=ok":          1,
	}
	if fmt.Sprint(loads) != fmt.Sprint(want) {
		t.Errorf("bpf_prog_loads\n got %v\nwant %v", loads, want)
	}
	if u := r.sums(t, "bpf_verifier_log_undersized"); u["command=BPF_PROG_LOAD,loader=cilium-agent"] != 1 || len(u) != 1 {
		t.Errorf("undersized %v", u)
	}
	sf := r.histograms(t, "bpf_verifier_log_shortfall_bytes")["command=BPF_PROG_LOAD,loader=cilium-agent"]
	if sf.Count != 1 || sf.Sum != 70000-65536 {
		t.Errorf("shortfall count %d sum %d", sf.Count, sf.Sum)
	}
	buf := r.histograms(t, "bpf_verifier_log_buffer_bytes")["command=BPF_PROG_LOAD,loader=cilium-agent"]
	if buf.Count != 2 || buf.Sum != 65536+70000 {
		t.Errorf("buffer count %d sum %d", buf.Count, buf.Sum)
	}
	// 65536 is a bucket bound: it falls in the bucket "<= 65536".
	i := slices.Index(buf.Bounds, 65536)
	if i < 0 || buf.BucketCounts[i] != 1 || buf.BucketCounts[i+1] != 1 {
		t.Errorf("65536 and 70000 in buckets %v of bounds %v", buf.BucketCounts, buf.Bounds)
	}
}

func TestCiliumStyleRetryIsOneTraceWithTwoChildSpans(t *testing.T) {
	r := newRig(t, 0)
	first := withTrueSize(event("cilium-agent", 10, "tail_call", 1000*ms, 1002*ms, 65536, enospc), 70000)
	second := withTrueSize(event("cilium-agent", 10, "tail_call", 1003*ms, 1006*ms, 70000, 7), 70000)
	r.handle(first, second)

	spans := r.spans.GetSpans()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3 (chain + 2 attempts)", len(spans))
	}
	var parent tracetest.SpanStub
	var children []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == "bpf.load" {
			parent = s
		} else {
			children = append(children, s)
		}
	}
	if parent.Name == "" || len(children) != 2 {
		t.Fatalf("spans %v", spans)
	}
	for i, c := range children {
		if c.Name != "BPF_PROG_LOAD" || c.Parent.SpanID() != parent.SpanContext.SpanID() || c.SpanContext.TraceID() != parent.SpanContext.TraceID() {
			t.Errorf("child %d: name %q parent %v", i, c.Name, c.Parent.SpanID())
		}
	}
	clock := tracer.WallClockWithOffset(time.Duration(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano()))
	if !parent.StartTime.Equal(clock.Time(first.StartNs)) || !parent.EndTime.Equal(clock.Time(second.EndNs)) {
		t.Errorf("chain span %v..%v, want the first start and the last end", parent.StartTime, parent.EndTime)
	}
	a := attrs(children[0].Attributes)
	want := map[string]string{"bpf.command": "BPF_PROG_LOAD", "bpf.prog.name": "tail_call", "bpf.prog.type": "socket_filter",
		"bpf.prog.insn_count": "100", "bpf.log.level": "1", "bpf.log.mode": "rotating", "bpf.log.size": "65536",
		"bpf.log.true_size": "70000", "bpf.log.truncated": "true", "bpf.load.attempt": "1", "error.type": "ENOSPC",
		"process.pid": "10", "thread.id": "10", "process.executable.name": "cilium-agent"}
	for k, v := range want {
		if a[k] != v {
			t.Errorf("first attempt %s = %q, want %q", k, a[k], v)
		}
	}
	if children[0].Status.Code != codes.Error || children[1].Status.Code == codes.Error {
		t.Errorf("statuses %v, %v", children[0].Status, children[1].Status)
	}
	if !children[0].StartTime.Equal(clock.Time(first.StartNs)) || !children[0].EndTime.Equal(clock.Time(first.EndNs)) {
		t.Errorf("attempt span %v..%v", children[0].StartTime, children[0].EndTime)
	}
	pa := attrs(parent.Attributes)
	if pa["bpf.load.attempts"] != "2" || pa["bpf.load.failed_seconds"] != "0.002" || parent.Status.Code == codes.Error {
		t.Errorf("chain attributes %v status %v", pa, parent.Status)
	}
	att := r.histograms(t, "bpf_prog_load_attempts")["command=BPF_PROG_LOAD,loader=cilium-agent"]
	if att.Count != 1 || att.Sum != 2 {
		t.Errorf("attempts histogram count %d sum %d, want one chain of 2", att.Count, att.Sum)
	}
	req := r.histograms(t, "bpf_verifier_log_required_bytes")["command=BPF_PROG_LOAD,loader=cilium-agent,source=kernel"]
	if req.Count != 1 || req.Sum != 70000 {
		t.Errorf("required bytes count %d sum %d, want one observation of 70000 per load", req.Count, req.Sum)
	}
}

func attrs(kvs []attribute.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.Emit()
	}
	return m
}

func TestChainWindowEdges(t *testing.T) {
	r := newRig(t, 0)
	w := uint64(sizing.DefaultChainWindow)
	a := event("l", 1, "p", 0, 10*ms, 128, enospc)
	atEdge := event("l", 1, "p", 10*ms+w, 11*ms+w, 256, enospc)       // exactly one window after: same chain
	past := event("l", 1, "p", 11*ms+2*w+1, 12*ms+2*w+1, 512, enospc) // one ns past: a new chain
	r.handle(a, atEdge, past)
	if n := r.p.OpenChains(); n != 1 {
		t.Fatalf("%d open chains, want 1", n)
	}
	att := r.histograms(t, "bpf_prog_load_attempts")["command=BPF_PROG_LOAD,loader=l"]
	if att.Count != 1 || att.Sum != 2 {
		t.Fatalf("ended chains: count %d sum %d, want one chain of 2", att.Count, att.Sum)
	}
	r.p.Sweep(12*ms + 2*w + 1 + w) // exactly at the edge: still open
	if n := r.p.OpenChains(); n != 1 {
		t.Fatalf("chain ended exactly at its window edge")
	}
	r.p.Sweep(12*ms + 3*w + 2) // one ns past the window
	if n := r.p.OpenChains(); n != 0 {
		t.Fatalf("%d open chains after the window passed", n)
	}
	att = r.histograms(t, "bpf_prog_load_attempts")["command=BPF_PROG_LOAD,loader=l"]
	if att.Count != 2 || att.Sum != 3 {
		t.Fatalf("chains: count %d sum %d, want 2 chains, 3 attempts", att.Count, att.Sum)
	}
	if u := r.sums(t, "bpf_verifier_log_unknown_size"); u["command=BPF_PROG_LOAD,loader=l"] != 2 {
		t.Errorf("unknown size %v, want 2 chains", u)
	}
	var failed int
	for _, s := range r.spans.GetSpans() {
		if s.Name == "bpf.load" && s.Status.Code == codes.Error {
			failed++
		}
	}
	if failed != 2 {
		t.Errorf("%d failed chain spans, want 2", failed)
	}
}

func TestInterleavedProcessesKeepSeparateChains(t *testing.T) {
	r := newRig(t, 0)
	r.handle(
		event("l", 1, "p", 0, 1*ms, 128, enospc),
		event("l", 2, "p", 1*ms, 2*ms, 128, enospc), // other process, same program
		event("l", 1, "q", 2*ms, 3*ms, 128, enospc), // same process, other program
		event("l", 1, "p", 3*ms, 4*ms, 4096, 5),     // ends pid 1's "p"
		event("l", 2, "p", 4*ms, 5*ms, 4096, 6),     // ends pid 2's "p"
	)
	if n := r.p.OpenChains(); n != 1 {
		t.Fatalf("%d open chains, want 1 (pid 1 q)", n)
	}
	att := r.histograms(t, "bpf_prog_load_attempts")["command=BPF_PROG_LOAD,loader=l"]
	if att.Count != 2 || att.Sum != 4 {
		t.Fatalf("chains count %d sum %d, want 2 chains of 2", att.Count, att.Sum)
	}
	r.p.Flush()
	if n := r.p.OpenChains(); n != 0 {
		t.Fatalf("Flush left %d chains", n)
	}
	att = r.histograms(t, "bpf_prog_load_attempts")["command=BPF_PROG_LOAD,loader=l"]
	if att.Count != 3 {
		t.Fatalf("after Flush %d chains, want 3", att.Count)
	}
}

func TestLoaderCardinalityIsCapped(t *testing.T) {
	r := newRig(t, 3)
	for i := range 10 {
		r.handle(event(fmt.Sprintf("loader%d", i), uint32(i), "p", 0, 1, 0, 3))
	}
	r.handle(event("other", 99, "p", 0, 1, 0, 3), event("", 98, "p", 0, 1, 0, 3))
	got := map[string]int64{}
	for k, v := range r.sums(t, "bpf_prog_loads") {
		for _, part := range strings.Split(k, ",") {
			if l, ok := strings.CutPrefix(part, "loader="); ok {
				got[l] += v
			}
		}
	}
	want := map[string]int64{"loader0": 1, "loader1": 1, "loader2": 1, "other": 9}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("loaders %v, want %v", got, want)
	}
}

func TestMetricsPathDoesNotAllocate(t *testing.T) {
	p, err := New(Config{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))})
	if err != nil {
		t.Fatal(err)
	}
	evs := []tracer.LoadEvent{
		withTrueSize(event("cilium-agent", 10, "a", 0, 2*ms, 65536, enospc), 70000),
		withTrueSize(event("cilium-agent", 10, "a", 3*ms, 5*ms, 70000, 7), 70000),
	}
	for i := range evs {
		p.Handle(&evs[i]) // warm the caches
	}
	allocs := testing.AllocsPerRun(1000, func() {
		for i := range evs {
			p.Handle(&evs[i])
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per chain of two attempts on the metrics path, want 0", allocs)
	}
}

// BenchmarkPipelineHandle is the per-event cost of classification, retry
// chains and metrics, as `exporter` serve records them (SDK meter provider
// read by the Prometheus exporter, no spans): a cilium/ebpf-style chain of
// an ENOSPC and a retry, and a load with the log off.
func BenchmarkPipelineHandle(b *testing.B) {
	tel, err := Setup(context.Background(), BuildInfo{Version: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	p, err := New(Config{MeterProvider: tel.MeterProvider, Recorder: tel.Recorder})
	if err != nil {
		b.Fatal(err)
	}
	benchmarkHandle(b, p)
}

// benchmarkHandle hands p, in turn, a cilium/ebpf-style chain of an ENOSPC
// and a retry, and a load with the log off.
func benchmarkHandle(b *testing.B, p *Pipeline) {
	evs := []tracer.LoadEvent{
		withTrueSize(event("cilium-agent", 10, "a", 0, 2*ms, 65536, enospc), 70000),
		withTrueSize(event("cilium-agent", 10, "a", 3*ms, 5*ms, 70000, 7), 70000),
		event("systemd", 1, "sd_fw_egress", 6*ms, 7*ms, 0, 8),
	}
	evs[2].LogLevel = 0
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p.Handle(&evs[i%len(evs)])
		i++
	}
}
