// Package backends owns the real observability back-ends that end-to-end
// tests run against: a Prometheus server (Debian's package) that scrapes the
// exporter, and an OpenTelemetry Collector (v0.165.0, built by
// backends/install.sh with the otlp receiver and the file and debug
// exporters) that receives its OTLP traces, metrics and logs.
//
// It finds their binaries, writes their configurations, starts them on free
// loopback ports under a test, waits until they are ready, stops them at the
// test's cleanup, and reads back what they received: Prometheus through its
// HTTP query API, the Collector through the OTLP JSON its file exporter
// writes, flattened into plain Go values (Span, Metric, LogRecord).
//
// It is meant for tests (and WaitReady for the benchmark's storm).
// Binaries that are missing are installed by Install where the tests run as
// root, and otherwise reported with an error that says to run
// backends/install.sh; tests decide whether that skips them or fails them
// (kerneltest.MissingTool fails under CI=true).
package backends
