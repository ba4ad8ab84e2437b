package otel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
)

// ServiceName is the default service.name; OTEL_SERVICE_NAME overrides it.
const ServiceName = "verifierlog-exporter"

// Telemetry holds the SDK providers and where they export: a Prometheus
// registry always (pull, /metrics), OTLP when the standard OTEL_* variables
// ask for it (push).
type Telemetry struct {
	Registry       *prometheus.Registry
	MeterProvider  *metric.MeterProvider
	TracerProvider *sdktrace.TracerProvider // nil unless OTEL_TRACES_EXPORTER asks for spans
	// Recorder holds the per-event metrics; every reader collects it.
	Recorder *Recorder
	// Pushing says which signals are pushed ("traces", "metrics").
	Pushing []string

	spans   *spanQueue              // nil unless spans are pushed
	metrics *countingMetricExporter // nil unless metrics are pushed over OTLP
}

// Setup builds the providers. OTLP is off unless OTEL_TRACES_EXPORTER or
// OTEL_METRICS_EXPORTER is set (to otlp or console); the protocol,
// endpoint, headers and intervals come from the OTEL_EXPORTER_OTLP_* and
// OTEL_METRIC_EXPORT_* variables, the span queue's bounds from OTEL_BSP_*,
// the resource from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES. Pushes
// that fail are counted (registerPushMetrics), never waited for on the
// per-event path.
func Setup(ctx context.Context, build BuildInfo) (*Telemetry, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(ServiceName), semconv.ServiceVersion(build.Version)),
		resource.WithHost(),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // last: the variables win
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("resource: %w", err)
	}

	t := &Telemetry{Registry: prometheus.NewRegistry(), Recorder: NewRecorder()}
	// The Recorder's series go to /metrics straight, not through the
	// OpenTelemetry exporter, which cannot give one histogram both classic
	// and native buckets.
	t.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), t.Recorder)
	switch v := os.Getenv("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"); v {
	case "", "explicit_bucket_histogram":
	case "base2_exponential_bucket_histogram":
		t.Recorder.SetExponentialHistograms(true)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=%s: want explicit_bucket_histogram or base2_exponential_bucket_histogram", v)
	}
	promExporter, err := otelprom.New(
		otelprom.WithRegisterer(t.Registry),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
		otelprom.WithoutScopeInfo(),
		otelprom.WithoutTargetInfo(),
	)
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	// No exemplars: the spans are not in the recording context, and the
	// filter costs every measurement.
	metricOpts := []metric.Option{metric.WithResource(res), metric.WithReader(promExporter), metric.WithExemplarFilter(exemplar.AlwaysOffFilter)}

	switch v := os.Getenv("OTEL_METRICS_EXPORTER"); v {
	case "", "none":
	case "prometheus":
		return nil, errors.New("OTEL_METRICS_EXPORTER=prometheus: the exporter always serves Prometheus on /metrics; set otlp, console or none")
	case "otlp":
		reader, exp, err := newOTLPMetricReader(ctx, t.Recorder)
		if err != nil {
			return nil, fmt.Errorf("OTEL_METRICS_EXPORTER=%s: %w", v, err)
		}
		t.metrics = exp
		metricOpts = append(metricOpts, metric.WithReader(reader))
		t.Pushing = append(t.Pushing, "metrics")
	default:
		autoexport.WithFallbackMetricProducer(func(context.Context) (metric.Producer, error) { return t.Recorder, nil })
		reader, err := autoexport.NewMetricReader(ctx)
		if err != nil {
			return nil, fmt.Errorf("OTEL_METRICS_EXPORTER=%s: %w", v, err)
		}
		metricOpts = append(metricOpts, metric.WithReader(reader))
		t.Pushing = append(t.Pushing, "metrics")
	}
	t.MeterProvider = metric.NewMeterProvider(metricOpts...)

	switch v := os.Getenv("OTEL_TRACES_EXPORTER"); v {
	case "", "none":
	default:
		cfg, err := spanQueueConfigFromEnv()
		if err != nil {
			_ = t.MeterProvider.Shutdown(ctx)
			return nil, err
		}
		exp, err := newSpanExporter(ctx, v)
		if err != nil {
			_ = t.MeterProvider.Shutdown(ctx)
			return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%s: %w", v, err)
		}
		// Not the SDK's batcher: it drops spans without counting them.
		t.spans = newSpanQueue(exp, cfg)
		t.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSpanProcessor(t.spans))
		t.Pushing = append(t.Pushing, "traces")
	}
	if err := registerPushMetrics(t.MeterProvider.Meter(ScopeName), t.spans, t.metrics); err != nil {
		_ = t.Shutdown(ctx)
		return nil, err
	}
	return t, nil
}

// Shutdown flushes pending spans and metrics and stops the exporters. The
// two signals shut down at once, so each has until ctx's deadline: with
// the endpoint down, Shutdown returns about then (see spanQueue.Shutdown),
// and the spans it could not flush are counted as dropped{reason="shutdown"}.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var traceErr error
	var wg sync.WaitGroup
	if t.TracerProvider != nil {
		wg.Go(func() { traceErr = t.TracerProvider.Shutdown(ctx) })
	}
	metricErr := t.MeterProvider.Shutdown(ctx)
	wg.Wait()
	return errors.Join(traceErr, metricErr)
}
