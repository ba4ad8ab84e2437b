// Package otel is the exporter's telemetry: the Pipeline records what the
// sizing package concludes of each load (it is a sizing.Sink) as the
// OpenTelemetry metrics and spans of the README's public interface; the
// Recorder aggregates the per-event metrics and hands them to the SDK's
// readers; Setup builds the providers that export them to Prometheus
// (pull) and OTLP (push), with a bounded span queue and counted push
// failures; the self metrics describe the tracer. It reads no kernel and
// judges no buffer itself.
//
// The package shares its name with go.opentelemetry.io/otel, which its own
// files import as otelglobal.
package otel
