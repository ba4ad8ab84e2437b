package otel

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	otelglobal "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	protov2 "google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Signal names of the verifierlog_exporter_otlp_export* metrics.
const (
	signalTraces  = "traces"
	signalMetrics = "metrics"
)

// countingMetricExporter counts the metric pushes (Export calls) and those
// that failed. The PeriodicReader calls it once per interval, one call at
// a time, and reports each failure to the SDK error handler.
type countingMetricExporter struct {
	sdkmetric.Exporter
	exports, failures atomic.Uint64
}

// Export pushes rm and counts the outcome.
func (e *countingMetricExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	err := e.Exporter.Export(ctx, rm)
	e.exports.Add(1)
	if err != nil {
		e.failures.Add(1)
	}
	return err
}

// newOTLPMetricReader is autoexport's "otlp" metric reader (the protocol
// from OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL,
// else http/protobuf; interval and timeout from OTEL_METRIC_EXPORT_*), built
// here so that its exporter can be wrapped to count failed pushes: the
// reader autoexport builds hides its exporter. It reads producer.
func newOTLPMetricReader(ctx context.Context, producer sdkmetric.Producer) (sdkmetric.Reader, *countingMetricExporter, error) {
	key := "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
	proto := os.Getenv(key)
	if proto == "" {
		key = "OTEL_EXPORTER_OTLP_PROTOCOL"
		proto = os.Getenv(key)
	}
	var exp sdkmetric.Exporter
	var err error
	switch proto {
	case "grpc":
		exp, err = otlpmetricgrpc.New(ctx)
	case "", "http/protobuf":
		exp, err = otlpmetrichttp.New(ctx)
	default:
		return nil, nil, fmt.Errorf("%s=%s: want grpc or http/protobuf", key, proto)
	}
	if err != nil {
		return nil, nil, err
	}
	c := &countingMetricExporter{Exporter: exp}
	return sdkmetric.NewPeriodicReader(c, sdkmetric.WithProducer(producer)), c, nil
}

// registerPushMetrics registers the self metrics of OTLP push: exports and
// failed exports per signal, and the span queue's accounting. spans or
// metrics is nil where that signal is not pushed (or not through OTLP).
func registerPushMetrics(m metric.Meter, spans *spanQueue, metrics *countingMetricExporter) error {
	if spans == nil && metrics == nil {
		return nil
	}
	exports, err := m.Int64ObservableCounter("verifierlog_exporter_otlp_exports",
		metric.WithDescription("OTLP export calls (batches of spans, metric pushes), by signal."), metric.WithUnit("{export}"))
	if err != nil {
		return err
	}
	failures, err := m.Int64ObservableCounter("verifierlog_exporter_otlp_export_failures",
		metric.WithDescription("OTLP export calls that failed (endpoint down, slow past the timeout, or refusing), by signal."), metric.WithUnit("{export}"))
	if err != nil {
		return err
	}
	observed := []metric.Observable{exports, failures}
	tracesAttr := metric.WithAttributes(attribute.String("signal", signalTraces))
	metricsAttr := metric.WithAttributes(attribute.String("signal", signalMetrics))
	var ended, exported, dropped metric.Int64ObservableCounter
	var pending metric.Int64ObservableGauge
	reasonAttrs := make([]metric.ObserveOption, numDropReasons)
	if spans != nil {
		if ended, err = m.Int64ObservableCounter("verifierlog_exporter_otlp_spans_ended",
			metric.WithDescription("Spans ended for OTLP export; ended = exported + dropped + pending."), metric.WithUnit("{span}")); err != nil {
			return err
		}
		if exported, err = m.Int64ObservableCounter("verifierlog_exporter_otlp_spans_exported",
			metric.WithDescription("Spans the OTLP endpoint accepted."), metric.WithUnit("{span}")); err != nil {
			return err
		}
		if dropped, err = m.Int64ObservableCounter("verifierlog_exporter_otlp_spans_dropped",
			metric.WithDescription("Spans never exported, by reason: queue_full (OTEL_BSP_MAX_QUEUE_SIZE spans were pending), export_failed, shutdown (not flushed before the shutdown deadline)."),
			metric.WithUnit("{span}")); err != nil {
			return err
		}
		if pending, err = m.Int64ObservableGauge("verifierlog_exporter_otlp_spans_pending",
			metric.WithDescription("Spans queued for OTLP export or in the export in flight; at most OTEL_BSP_MAX_QUEUE_SIZE."), metric.WithUnit("{span}")); err != nil {
			return err
		}
		observed = append(observed, ended, exported, dropped, pending)
		for r := range numDropReasons {
			reasonAttrs[r] = metric.WithAttributes(attribute.String(keyReason, r.String()))
		}
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if metrics != nil {
			o.ObserveInt64(exports, int64(metrics.exports.Load()), metricsAttr)
			o.ObserveInt64(failures, int64(metrics.failures.Load()), metricsAttr)
		}
		if spans != nil {
			s := spans.snapshot() // one snapshot: the identity holds in every collection
			o.ObserveInt64(exports, int64(s.Exports), tracesAttr)
			o.ObserveInt64(failures, int64(s.Failures), tracesAttr)
			o.ObserveInt64(ended, int64(s.Ended))
			o.ObserveInt64(exported, int64(s.Exported))
			for r, n := range s.Dropped {
				o.ObserveInt64(dropped, int64(n), reasonAttrs[r])
			}
			o.ObserveInt64(pending, int64(s.Pending))
		}
		return nil
	}, observed...)
	return err
}

// SDKErrorLogInterval is the least time between two log lines of
// OpenTelemetry SDK errors.
const SDKErrorLogInterval = 30 * time.Second

// sdkErrorLog writes the OpenTelemetry SDK's errors (failed exports, for
// the most part) to a logger: the first at once, then at most one line per
// interval, which says how many it suppressed since the previous line. A
// dead endpoint thus costs a line per interval, not one per export; the
// exact counts are the verifierlog_exporter_otlp_* metrics. At debug level
// every error is logged.
type sdkErrorLog struct {
	logger *slog.Logger
	every  time.Duration
	now    func() time.Time

	mu         sync.Mutex
	last       time.Time // of the last line at warn level; zero before the first
	suppressed int
}

// Handle logs err, or counts it as suppressed.
func (l *sdkErrorLog) Handle(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		l.logger.Debug("OpenTelemetry SDK error", "err", err)
		return
	}
	l.logger.Warn("OpenTelemetry SDK error", "err", err, "suppressed_since_last", l.suppressed, "at_most_every", l.every)
	l.last, l.suppressed = now, 0
}

// LogSDKErrors makes logger the OpenTelemetry SDK's error handler (a global
// of the SDK), at most one warning per SDKErrorLogInterval.
func LogSDKErrors(logger *slog.Logger) {
	otelglobal.SetErrorHandler(&sdkErrorLog{logger: logger, every: SDKErrorLogInterval, now: time.Now})
}

// newSpanExporter is autoexport's span exporter for OTEL_TRACES_EXPORTER=name,
// except that OTLP over gRPC marshals each batch with exactSizeCodec.
func newSpanExporter(ctx context.Context, name string) (sdktrace.SpanExporter, error) {
	if name != "otlp" {
		return autoexport.NewSpanExporter(ctx)
	}
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if proto != "grpc" {
		return autoexport.NewSpanExporter(ctx)
	}
	return otlptracegrpc.New(ctx, otlptracegrpc.WithDialOption(
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(exactSizeCodec{encoding.GetCodecV2("proto")}))))
}

// exactSizeCodec is gRPC's proto codec, except that it marshals a message
// into a buffer of the message's size. gRPC's own takes a buffer from its
// pool's next larger tier, and between 32 KiB and 1 MiB that is 1 MiB: a
// batch of 512 spans (a few hundred KiB) held a 1 MiB buffer, zeroed for
// each export, and the pool kept one or more of them alive between
// collections, a third of the heap under a load storm.
type exactSizeCodec struct{ encoding.CodecV2 }

// Marshal marshals v into a new buffer of v's size.
func (c exactSizeCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(protoreflect.ProtoMessage)
	if !ok {
		return c.CodecV2.Marshal(v)
	}
	b, err := protov2.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}
