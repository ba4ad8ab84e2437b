package otel

import (
	"bytes"
	"context"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/verifierlog/exporter/tracer"
)

// exposedRig is a Pipeline whose Recorder is read by a registry, as serve
// reads it, with a clock the test moves.
type exposedRig struct {
	p   *Pipeline
	rec *Recorder
	reg *prometheus.Registry
	now time.Time
}

func newExposedRig(t *testing.T) *exposedRig {
	t.Helper()
	r := &exposedRig{rec: NewRecorder(), reg: prometheus.NewRegistry(), now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	r.rec.now = func() time.Time { return r.now }
	r.reg.MustRegister(r.rec)
	p, err := New(Config{Recorder: r.rec, MeterProvider: sdkmetric.NewMeterProvider(), Clock: tracer.WallClockWithOffset(0)})
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	return r
}

// everyOutcome is one loader's loads of every kind: a chain of ENOSPC and
// a retry, a rejection at level 2, a load without a log, and a BTF load.
func everyOutcome(comm string) []tracer.LoadEvent {
	rejected := withTrueSize(event(comm, 10, "r", 20*ms, 21*ms, 1<<20, -13), 3000)
	rejected.LogLevel = 2
	nolog := event(comm, 10, "n", 30*ms, 31*ms, 0, 9)
	nolog.LogLevel = 0
	btf := withTrueSize(event(comm, 10, "", 40*ms, 41*ms, 4096, 11), 1)
	btf.Command = tracer.CmdBTFLoad
	return []tracer.LoadEvent{
		withTrueSize(event(comm, 10, "a", 0, 2*ms, 65536, enospc), 70000),
		withTrueSize(event(comm, 10, "a", 3*ms, 5*ms, 1<<17, 7), 70000),
		rejected, nolog, btf,
	}
}

func (r *exposedRig) handle(evs ...tracer.LoadEvent) {
	for i := range evs {
		r.p.Handle(&evs[i])
	}
	r.p.Flush()
}

func (r *exposedRig) gather(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// TestExpositionIsWhatTheOTelExporterServed checks that serving the
// Recorder straight changed nothing a scraper of the text format sees:
// every family's name, type, help, label sets, values and classic buckets
// are those the OpenTelemetry Prometheus exporter made of the same data.
func TestExpositionIsWhatTheOTelExporterServed(t *testing.T) {
	r := newExposedRig(t)
	r.handle(everyOutcome("cilium-agent")...)
	r.handle(everyOutcome("bpftrace")...)

	old := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(old), otelprom.WithProducer(r.rec),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		t.Fatal(err)
	}
	_ = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	want := textOf(t, old)
	got := textOf(t, r.reg)
	if got != want {
		t.Errorf("exposition differs from the OpenTelemetry exporter's\n got:\n%s\nwant:\n%s", got, want)
	}
	for _, name := range []string{"bpf_prog_loads_total", "bpf_verifier_log_required_bytes", "bpf_prog_load_duration_seconds", "bpf_prog_load_attempts"} {
		if !strings.Contains(got, "# TYPE "+name+" ") {
			t.Errorf("no family %s in\n%s", name, got)
		}
	}
}

// textOf is g's text exposition without the families only one side has
// (the SDK's own, none here) and with created timestamps, which the text
// format does not carry, ignored.
func textOf(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// TestNativeBucketsHoldWhatTheClassicOnesHold checks the protobuf
// exposition's native buckets (schema 0) against the classic ones: the
// size bounds are powers of two, so native bucket i, (2^(i-1), 2^i], is
// classic bucket le=2^i from 256 B up.
func TestNativeBucketsHoldWhatTheClassicOnesHold(t *testing.T) {
	r := newExposedRig(t)
	r.handle(everyOutcome("cilium-agent")...)
	mfs := r.gather(t)
	checked := 0
	for _, name := range []string{"bpf_verifier_log_buffer_bytes", "bpf_verifier_log_required_bytes", "bpf_verifier_log_shortfall_bytes"} {
		mf := mfs[name]
		if mf == nil {
			t.Fatalf("no %s", name)
		}
		for _, m := range mf.Metric {
			h := m.GetHistogram()
			if h.GetSchema() != 0 || h.GetZeroThreshold() <= 0 {
				t.Errorf("%s: schema %d, zero threshold %g; want 0 and > 0", name, h.GetSchema(), h.GetZeroThreshold())
			}
			native := nativeCounts(h)
			var nativeTotal uint64
			for _, n := range native {
				nativeTotal += n
			}
			if nativeTotal+h.GetZeroCount() != h.GetSampleCount() {
				t.Errorf("%s: native buckets hold %d+%d, count %d", name, nativeTotal, h.GetZeroCount(), h.GetSampleCount())
			}
			var prev uint64
			for _, b := range h.Bucket {
				classic := b.GetCumulativeCount() - prev
				prev = b.GetCumulativeCount()
				_, exp := math.Frexp(b.GetUpperBound()) // bound = 2^(exp-1)
				if b.GetUpperBound() > 128 && native[int32(exp-1)] != classic {
					t.Errorf("%s le=%g: classic %d, native bucket %d holds %d", name, b.GetUpperBound(), classic, exp-1, native[int32(exp-1)])
				}
				checked++
			}
		}
	}
	if checked == 0 {
		t.Fatal("no buckets checked")
	}
	// The ENOSPC chain's need, 70000 B: bucket 17, (65536, 131072].
	req := mfs["bpf_verifier_log_required_bytes"]
	found := false
	for _, m := range req.Metric {
		if labelValue(m, "loader") == "cilium-agent" && labelValue(m, "command") == "BPF_PROG_LOAD" {
			if n := nativeCounts(m.GetHistogram()); n[17] != 1 {
				t.Errorf("need 70000 B: native buckets %v, want one in bucket 17", n)
			}
			found = true
		}
	}
	if !found {
		t.Error("no required_bytes series for cilium-agent")
	}
}

func nativeCounts(h *dto.Histogram) map[int32]uint64 {
	out := map[int32]uint64{}
	var count int64
	d := 0
	var idx int32
	for _, s := range h.PositiveSpan {
		idx += s.GetOffset()
		for range s.GetLength() {
			count += h.PositiveDelta[d]
			if count != 0 {
				out[idx] = uint64(count)
			}
			d++
			idx++
		}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestNativeIndex(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want int32
	}{{1, 0}, {2, 1}, {3, 2}, {4, 2}, {4.5, 3}, {128, 7}, {129, 8}, {70000, 17}, {65536, 16}, {1 << 30, 30}, {0.5, -1}, {0.3, -1}, {0.25, -2}, {1e-6, -19}} {
		if got := nativeIndex(c.v); got != c.want {
			t.Errorf("nativeIndex(%g) = %d, want %d", c.v, got, c.want)
		}
	}
	var b nativeBuckets
	for _, v := range []float64{1000, 3, 0, 1 << 20, 1000} {
		b.observe(v)
	}
	if b.first != 2 || b.zero != 1 || len(b.counts) != 19 || b.counts[10-2] != 2 || b.counts[0] != 1 || b.counts[18] != 1 {
		t.Errorf("buckets first %d zero %d counts %v", b.first, b.zero, b.counts)
	}
}

// TestNewSeriesShowZeroForTheirHold: a series is exposed as zero (an empty
// histogram, still native) for the hold after its creation, then as it is;
// its created timestamp is its creation either way. A series created later
// is held from its own creation.
func TestNewSeriesShowZeroForTheirHold(t *testing.T) {
	r := newExposedRig(t)
	r.rec.SetNewSeriesHold(time.Minute)
	created := r.now
	r.handle(everyOutcome("cilium-agent")...)

	r.now = created.Add(59 * time.Second)
	held := r.gather(t)
	loads := held["bpf_prog_loads_total"]
	if loads == nil || len(loads.Metric) == 0 {
		t.Fatal("held series are not exposed at all")
	}
	for _, m := range loads.Metric {
		if m.GetCounter().GetValue() != 0 || !m.GetCounter().GetCreatedTimestamp().AsTime().Equal(created) {
			t.Errorf("held counter %v: value %g created %v; want 0 and %v", m.Label, m.GetCounter().GetValue(), m.GetCounter().GetCreatedTimestamp().AsTime(), created)
		}
	}
	for _, m := range held["bpf_verifier_log_required_bytes"].Metric {
		h := m.GetHistogram()
		if h.GetSampleCount() != 0 || h.GetSampleSum() != 0 || len(h.PositiveDelta) != 0 || h.GetZeroThreshold() <= 0 ||
			len(h.PositiveSpan) != 1 || h.PositiveSpan[0].GetLength() != 0 || h.Bucket[len(h.Bucket)-1].GetCumulativeCount() != 0 {
			t.Errorf("held histogram is not an empty native+classic one: %v", h)
		}
	}

	r.now = created.Add(time.Minute)
	r.handle(everyOutcome("bpftrace")...) // new series, held from now
	shown := r.gather(t)
	var ciliumLoads, bpftraceLoads float64
	for _, m := range shown["bpf_prog_loads_total"].Metric {
		switch labelValue(m, "loader") {
		case "cilium-agent":
			ciliumLoads += m.GetCounter().GetValue()
		case "bpftrace":
			bpftraceLoads += m.GetCounter().GetValue()
		}
	}
	if ciliumLoads != 5 || bpftraceLoads != 0 {
		t.Errorf("a minute on: cilium-agent %g loads (want 5, its hold is over), bpftrace %g (want 0, held)", ciliumLoads, bpftraceLoads)
	}
	for _, m := range shown["bpf_verifier_log_required_bytes"].Metric {
		if labelValue(m, "loader") == "cilium-agent" && m.GetHistogram().GetSampleCount() == 0 {
			t.Errorf("cilium-agent's need histogram still held: %v", m)
		}
	}
}

// TestExponentialHistogramsForOTLP: with exponential histograms on, the
// Producer hands scale-0 exponential points whose buckets are the native
// ones shifted by one (OpenTelemetry's bucket j is (2^j, 2^(j+1)]).
func TestExponentialHistogramsForOTLP(t *testing.T) {
	r := newExposedRig(t)
	r.rec.SetExponentialHistograms(true)
	r.handle(everyOutcome("cilium-agent")...)
	sms, err := r.rec.Produce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, m := range sms[0].Metrics {
		switch d := m.Data.(type) {
		case metricdata.ExponentialHistogram[int64]:
			kinds[m.Name] = "exponential"
			if m.Name == "bpf_verifier_log_required_bytes" {
				for _, dp := range d.DataPoints {
					if dp.Scale != 0 {
						t.Errorf("scale %d, want 0", dp.Scale)
					}
					got := map[int32]uint64{}
					for i, c := range dp.PositiveBucket.Counts {
						if c > 0 {
							got[dp.PositiveBucket.Offset+int32(i)] = c
						}
					}
					loader, _ := dp.Attributes.Value("command")
					// PROG: need 70000 and 3000; BTF: need 1.
					want := map[int32]uint64{16: 1, 11: 1}
					if loader.AsString() == "BPF_BTF_LOAD" {
						want = map[int32]uint64{-1: 1}
					}
					if !maps.Equal(got, want) {
						t.Errorf("%s buckets %v, want %v (OpenTelemetry indices)", loader.AsString(), got, want)
					}
				}
			}
		case metricdata.ExponentialHistogram[float64]:
			kinds[m.Name] = "exponential"
		case metricdata.Histogram[int64], metricdata.Histogram[float64]:
			kinds[m.Name] = "explicit"
		}
	}
	for _, name := range []string{"bpf_verifier_log_buffer_bytes", "bpf_verifier_log_required_bytes", "bpf_prog_load_duration_seconds", "bpf_prog_load_attempts"} {
		if kinds[name] != "exponential" {
			t.Errorf("%s is %q, want exponential", name, kinds[name])
		}
	}
}

// TestProtobufExpositionRoundTrips encodes the registry as a scraper asking
// for protobuf gets it and decodes it back: both kinds of buckets survive.
func TestProtobufExpositionRoundTrips(t *testing.T) {
	r := newExposedRig(t)
	r.handle(everyOutcome("cilium-agent")...)
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	dec := expfmt.NewDecoder(&b, expfmt.NewFormat(expfmt.TypeProtoDelim))
	var names []string
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err != nil {
			break
		}
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			h := mf.Metric[0].GetHistogram()
			if len(h.Bucket) == 0 || (len(h.PositiveDelta) == 0 && h.GetZeroCount() == 0) {
				t.Errorf("%s lost a kind of bucket: %v", mf.GetName(), h)
			}
		}
		names = append(names, mf.GetName())
	}
	if !slices.Contains(names, "bpf_verifier_log_required_bytes") {
		t.Errorf("decoded families %v", names)
	}
}
