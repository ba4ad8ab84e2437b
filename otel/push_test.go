package otel

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/verifierlog/exporter/tracer"
)

// blockingExporter is an endpoint that accepts and never answers: each
// ExportSpans waits until release is closed, or, if honourCtx, until its
// context is done (as the OTLP exporters do); then it returns err (the
// context's error when that ended the wait).
type blockingExporter struct {
	release   chan struct{}
	honourCtx bool
	err       error
	started   chan int // the batch size of each call, as it starts
}

func newBlockingExporter(honourCtx bool) *blockingExporter {
	return &blockingExporter{release: make(chan struct{}), honourCtx: honourCtx, started: make(chan int, 1024)}
}

func (e *blockingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.started <- len(spans)
	done := ctx.Done()
	if !e.honourCtx {
		done = nil
	}
	select {
	case <-e.release:
		return e.err
	case <-done:
		return ctx.Err()
	}
}

func (e *blockingExporter) Shutdown(context.Context) error { return nil }

// flakyExporter fails every other call, as an endpoint answering
// Unavailable or 503 now and then, and records what it saw.
type flakyExporter struct {
	mu                 sync.Mutex
	calls, failed      int
	exported, maxBatch int
}

var errUnavailable = errors.New("rpc error: code = Unavailable desc = connection refused")

func (e *flakyExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls++
	e.maxBatch = max(e.maxBatch, len(spans))
	if e.calls%2 == 0 {
		e.failed++
		return errUnavailable
	}
	e.exported += len(spans)
	return nil
}

func (e *flakyExporter) Shutdown(context.Context) error { return nil }

// checkIdentity fails t unless ended == exported + dropped + pending.
func checkIdentity(t *testing.T, s spanStats) {
	t.Helper()
	if s.Ended != s.Exported+s.DroppedTotal()+uint64(s.Pending) {
		t.Errorf("ended %d != exported %d + dropped %v + pending %d", s.Ended, s.Exported, s.Dropped, s.Pending)
	}
}

// endSpans ends n spans through a tracer provider that feeds q.
func endSpans(tp *sdktrace.TracerProvider, n int) {
	tr := tp.Tracer("test")
	for range n {
		_, span := tr.Start(context.Background(), "s")
		span.End()
	}
}

// collect reads mp's metrics through reader, by name.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

// int64Points maps the points of a sum or gauge by their one attribute's
// value ("" without attributes).
func int64Points(t *testing.T, agg metricdata.Aggregation) map[string]int64 {
	t.Helper()
	var dps []metricdata.DataPoint[int64]
	switch a := agg.(type) {
	case metricdata.Sum[int64]:
		dps = a.DataPoints
	case metricdata.Gauge[int64]:
		dps = a.DataPoints
	default:
		t.Fatalf("aggregation %T", agg)
	}
	out := map[string]int64{}
	for _, dp := range dps {
		key := ""
		for _, kv := range dp.Attributes.ToSlice() {
			key = kv.Value.Emit()
		}
		out[key] = dp.Value
	}
	return out
}

func TestOTLPSpanQueueBoundsPendingAndNeverBlocksHandle(t *testing.T) {
	exp := newBlockingExporter(false)
	q := newSpanQueue(exp, spanQueueConfig{maxPending: 8, batchSize: 4, delay: 10 * time.Millisecond, exportTimeout: time.Hour})
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(q))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	if err := registerPushMetrics(mp.Meter(ScopeName), q, nil); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{MeterProvider: mp, TracerProvider: tp, Clock: tracer.WallClockWithOffset(0)})
	if err != nil {
		t.Fatal(err)
	}

	// 1000 chains of an ENOSPC and a retry: a chain span and two attempt
	// spans each, while the exporter holds its first batch forever.
	const chains = 1000
	handled := make(chan struct{})
	go func() {
		defer close(handled)
		for i := range uint64(chains) {
			evs := []tracer.LoadEvent{
				event("cilium-agent", uint32(i), "a", i*10*ms, i*10*ms+ms, 256, enospc),
				event("cilium-agent", uint32(i), "a", i*10*ms+2*ms, i*10*ms+3*ms, 1<<20, 7),
			}
			for j := range evs {
				p.Handle(&evs[j])
			}
		}
	}()
	select {
	case <-handled:
	case <-time.After(30 * time.Second):
		t.Fatal("Pipeline.Handle blocked behind an export that never returns")
	}

	s := q.snapshot()
	if s.Ended != 3*chains || s.Pending != 8 || s.Dropped[dropQueueFull] != 3*chains-8 || s.Exported != 0 || s.Dropped[dropExportFailed] != 0 {
		t.Errorf("with the exporter stuck: %+v; want 3000 ended, 8 pending (the bound), 2992 dropped as queue_full", s)
	}
	checkIdentity(t, s)
	m := collect(t, reader)
	if got := int64Points(t, m["verifierlog_exporter_otlp_spans_dropped"]); got["queue_full"] != 3*chains-8 || got["export_failed"] != 0 || got["shutdown"] != 0 {
		t.Errorf("verifierlog_exporter_otlp_spans_dropped %v", got)
	}
	if got := int64Points(t, m["verifierlog_exporter_otlp_spans_pending"]); got[""] != 8 {
		t.Errorf("verifierlog_exporter_otlp_spans_pending %v, want 8", got)
	}
	if got := int64Points(t, m["verifierlog_exporter_otlp_spans_ended"]); got[""] != 3*chains {
		t.Errorf("verifierlog_exporter_otlp_spans_ended %v, want %d", got, 3*chains)
	}

	close(exp.release) // the endpoint answers again
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tp.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	s = q.snapshot()
	if s.Exported != 8 || s.Pending != 0 || s.Dropped[dropQueueFull] != 3*chains-8 {
		t.Errorf("after the endpoint recovered: %+v; want the 8 pending spans exported", s)
	}
	checkIdentity(t, s)
	if err := tp.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func TestOTLPSpanQueueCountsFailedExportsExactly(t *testing.T) {
	LogSDKErrors(slog.New(slog.DiscardHandler))
	exp := &flakyExporter{}
	q := newSpanQueue(exp, spanQueueConfig{maxPending: 1000, batchSize: 7, delay: time.Hour, exportTimeout: time.Hour})
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(q))
	endSpans(tp, 100)
	if err := tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := q.snapshot()
	exp.mu.Lock()
	defer exp.mu.Unlock()
	if s.Ended != 100 || s.Pending != 0 || s.Dropped[dropQueueFull] != 0 {
		t.Errorf("%+v: want 100 ended, none pending, none dropped as queue_full", s)
	}
	if s.Exported != uint64(exp.exported) || s.Dropped[dropExportFailed] != uint64(100-exp.exported) {
		t.Errorf("exported %d, dropped as export_failed %d; the exporter took %d of 100", s.Exported, s.Dropped[dropExportFailed], exp.exported)
	}
	if s.Exports != uint64(exp.calls) || s.Failures != uint64(exp.failed) || exp.failed == 0 {
		t.Errorf("exports %d failures %d; the exporter saw %d calls, failed %d", s.Exports, s.Failures, exp.calls, exp.failed)
	}
	if exp.maxBatch > 7 {
		t.Errorf("a batch of %d spans, above the batch size 7", exp.maxBatch)
	}
	checkIdentity(t, s)
}

func TestOTLPSpanQueueShutdownWithADeadEndpointIsBoundedAndCounted(t *testing.T) {
	for _, tc := range []struct {
		name      string
		honourCtx bool
	}{{"export_honours_its_context", true}, {"export_ignores_its_context", false}} {
		t.Run(tc.name, func(t *testing.T) {
			exp := newBlockingExporter(tc.honourCtx)
			defer close(exp.release)
			q := newSpanQueue(exp, spanQueueConfig{maxPending: 8, batchSize: 4, delay: time.Hour, exportTimeout: time.Hour})
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(q))
			endSpans(tp, 8)
			<-exp.started // a batch is in flight, the rest queued

			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			returned := make(chan error, 1)
			go func() { returned <- q.Shutdown(ctx) }()
			var err error
			select {
			case err = <-returned:
			case <-time.After(30 * time.Second):
				t.Fatal("Shutdown did not return with the endpoint dead")
			}
			if err == nil || !strings.Contains(err.Error(), "not flushed") {
				t.Errorf("Shutdown: %v, want an error that says what was not flushed", err)
			}
			s := q.snapshot()
			if tc.honourCtx && (s.Dropped[dropShutdown] != 8 || s.Pending != 0 || s.Failures != 1) {
				t.Errorf("%+v: want all 8 spans dropped as shutdown, the aborted export a failure", s)
			}
			if !tc.honourCtx && (s.Pending != 4 || s.Dropped[dropShutdown] != 4) {
				t.Errorf("%+v: want the 4 queued spans dropped as shutdown, the 4 in the stuck export pending", s)
			}
			checkIdentity(t, s)

			endSpans(tp, 1) // a span ending after shutdown is counted, not queued
			if s2 := q.snapshot(); s2.Ended != 9 || s2.Dropped[dropShutdown] != s.Dropped[dropShutdown]+1 {
				t.Errorf("a span after shutdown: %+v", s2)
			}
		})
	}
}

// fakeMetricExporter fails while failing is set.
type fakeMetricExporter struct {
	failing atomic.Bool
}

func (e *fakeMetricExporter) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return sdkmetric.DefaultTemporalitySelector(k)
}

func (e *fakeMetricExporter) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	return sdkmetric.DefaultAggregationSelector(k)
}

func (e *fakeMetricExporter) Export(context.Context, *metricdata.ResourceMetrics) error {
	if e.failing.Load() {
		return errors.New("failed to send metrics: 503 Service Unavailable")
	}
	return nil
}

func (e *fakeMetricExporter) ForceFlush(context.Context) error { return nil }
func (e *fakeMetricExporter) Shutdown(context.Context) error   { return nil }

func TestOTLPMetricPushFailuresAreCounted(t *testing.T) {
	fake := &fakeMetricExporter{}
	fake.failing.Store(true)
	counting := &countingMetricExporter{Exporter: fake}
	manual := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(counting, sdkmetric.WithInterval(time.Hour))),
		sdkmetric.WithReader(manual))
	defer mp.Shutdown(context.Background())
	if err := registerPushMetrics(mp.Meter(ScopeName), nil, counting); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := mp.ForceFlush(context.Background()); err == nil {
			t.Fatal("a push to a failing endpoint reported no error")
		}
	}
	fake.failing.Store(false)
	if err := mp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	m := collect(t, manual)
	if got := int64Points(t, m["verifierlog_exporter_otlp_export_failures"]); len(got) != 1 || got["metrics"] != 3 {
		t.Errorf("verifierlog_exporter_otlp_export_failures %v, want {metrics: 3}", got)
	}
	if got := int64Points(t, m["verifierlog_exporter_otlp_exports"]); len(got) != 1 || got["metrics"] != 4 {
		t.Errorf("verifierlog_exporter_otlp_exports %v, want {metrics: 4}", got)
	}
	if _, ok := m["verifierlog_exporter_otlp_spans_dropped"]; ok {
		t.Error("span metrics registered though no spans are pushed")
	}
}

func TestOTLPSDKErrorsAreLoggedRateLimited(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	l := &sdkErrorLog{logger: slog.New(slog.NewTextHandler(&buf, nil)), every: 30 * time.Second, now: func() time.Time { return now }}
	for range 1000 {
		l.Handle(errUnavailable)
	}
	now = now.Add(29 * time.Second)
	l.Handle(errUnavailable)
	now = now.Add(time.Second)
	l.Handle(errors.New("traces export: context deadline exceeded"))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines for 1002 errors over 30 s, want 2:\n%s", len(lines), buf.String())
	}
	if !strings.Contains(lines[0], "suppressed_since_last=0") || !strings.Contains(lines[0], "Unavailable") {
		t.Errorf("first line: %s", lines[0])
	}
	if !strings.Contains(lines[1], "suppressed_since_last=1000") || !strings.Contains(lines[1], "deadline exceeded") {
		t.Errorf("second line: %s", lines[1])
	}
}

func TestOTLPSpanQueueReadsTheBSPVariables(t *testing.T) {
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
	t.Setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	t.Setenv("OTEL_BSP_EXPORT_TIMEOUT", "2000")
	cfg, err := spanQueueConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if want := (spanQueueConfig{maxPending: 16, batchSize: 16, delay: 100 * time.Millisecond, exportTimeout: 2 * time.Second}); cfg != want {
		t.Errorf("%+v, want %+v (the batch no larger than the queue)", cfg, want)
	}
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "lots")
	if _, err := spanQueueConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "OTEL_BSP_MAX_QUEUE_SIZE") {
		t.Errorf("invalid queue size: %v", err)
	}
}

// TestOTLPSetupWithAClosedPortCountsFailuresAndShutsDown runs the real
// OTLP gRPC exporters against a closed port: Prometheus still reports the
// counts, both signals count failed pushes, no span is unaccounted for, and
// Shutdown returns.
func TestOTLPSetupWithAClosedPortCountsFailuresAndShutsDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	for k, v := range map[string]string{
		"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + closed, "OTEL_EXPORTER_OTLP_TIMEOUT": "300",
		"OTEL_BSP_SCHEDULE_DELAY": "10", "OTEL_METRIC_EXPORT_INTERVAL": "100",
	} {
		t.Setenv(k, v)
	}
	LogSDKErrors(slog.New(slog.DiscardHandler))
	tel, err := Setup(context.Background(), BuildInfo{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{MeterProvider: tel.MeterProvider, Recorder: tel.Recorder, TracerProvider: tel.TracerProvider, Clock: tracer.WallClockWithOffset(0)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(10) {
		ev := event("bpftool", uint32(i), "p", i*ms, i*ms+ms/2, 1<<20, 3)
		p.Handle(&ev)
	}

	value := func(fs map[string]*dto.MetricFamily, name, label string) float64 {
		var v float64
		for _, m := range fs[name].GetMetric() {
			if label != "" && !hasLabelValue(m, label) {
				continue
			}
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return v
	}
	var fs map[string]*dto.MetricFamily
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := tel.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		fs = map[string]*dto.MetricFamily{}
		for _, f := range got {
			fs[f.GetName()] = f
		}
		if value(fs, "verifierlog_exporter_otlp_export_failures_total", "traces") > 0 &&
			value(fs, "verifierlog_exporter_otlp_export_failures_total", "metrics") > 0 &&
			value(fs, "verifierlog_exporter_otlp_spans_dropped_total", "") == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("failures and drops did not show in 60 s: %v %v %v", fs["verifierlog_exporter_otlp_export_failures_total"],
				fs["verifierlog_exporter_otlp_spans_dropped_total"], fs["verifierlog_exporter_otlp_spans_pending"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v := value(fs, "bpf_prog_loads_total", ""); v != 10 {
		t.Errorf("bpf_prog_loads_total %v, want 10", v)
	}
	if ended, exported, pending := value(fs, "verifierlog_exporter_otlp_spans_ended_total", ""), value(fs, "verifierlog_exporter_otlp_spans_exported_total", ""),
		value(fs, "verifierlog_exporter_otlp_spans_pending", ""); ended != 20 || exported != 0 || pending != 0 {
		t.Errorf("spans ended %v exported %v pending %v; want 20 (a chain and an attempt per load), 0, 0", ended, exported, pending)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	returned := make(chan error, 1)
	go func() { returned <- tel.Shutdown(ctx) }()
	select {
	case <-returned:
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown did not return with the endpoint down")
	}
}

func hasLabelValue(m *dto.Metric, v string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetValue() == v {
			return true
		}
	}
	return false
}

func TestOTLPSpanQueueShutdownStopsAtTheFirstFailedExport(t *testing.T) {
	LogSDKErrors(slog.New(slog.DiscardHandler))
	exp := newBlockingExporter(false)
	exp.err = errUnavailable
	q := newSpanQueue(exp, spanQueueConfig{maxPending: 100, batchSize: 4, delay: time.Hour, exportTimeout: time.Hour})
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(q))
	endSpans(tp, 12)
	<-exp.started // 4 spans in flight, 8 queued
	returned := make(chan error, 1)
	go func() { returned <- q.Shutdown(context.Background()) }()
	for !q.isStopped() {
		time.Sleep(time.Millisecond)
	}
	close(exp.release) // the export in flight fails
	if err := <-returned; err == nil || !strings.Contains(err.Error(), "not flushed") {
		t.Errorf("Shutdown: %v, want an error that says what was not flushed", err)
	}
	s := q.snapshot()
	if s.Exports != 1 || s.Dropped[dropExportFailed] != 4 || s.Dropped[dropShutdown] != 8 || s.Pending != 0 {
		t.Errorf("%+v: want one failed export of 4 spans, the 8 queued behind it dropped as shutdown without trying", s)
	}
	checkIdentity(t, s)
}
