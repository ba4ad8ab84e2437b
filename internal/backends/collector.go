package backends

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

// Collector is an OpenTelemetry Collector started by StartCollector.
type Collector struct {
	grpcAddr, httpAddr string
	dir                string
	configPath         string
	proc               *process
}

// StartCollector runs the OpenTelemetry Collector for the test: the otlp
// receiver on free 127.0.0.1 ports for gRPC and HTTP, and traces, metrics
// and logs pipelines exporting to the file exporter (OTLP JSON, one file per
// signal, flushed every 100ms) and to the debug exporter (basic verbosity,
// in the collector's log). It returns once both ports accept connections
// and stops the collector at t.Cleanup. Without a collector binary it skips
// t (fails it under CI=true).
func StartCollector(t testing.TB) *Collector {
	t.Helper()
	bin, err := CollectorBinary()
	if err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` builds it")
	}
	c := &Collector{dir: t.TempDir()}
	c.configPath = filepath.Join(c.dir, "otelcol.yaml")
	c.proc = startWithRetry(t, func(attempt int) (*process, error) {
		var err error
		if c.grpcAddr, err = FreeAddr(); err != nil {
			return nil, err
		}
		if c.httpAddr, err = FreeAddr(); err != nil {
			return nil, err
		}
		cfg := CollectorConfig(c.grpcAddr, c.httpAddr, c.dir)
		if err := os.WriteFile(c.configPath, cfg, 0o644); err != nil {
			return nil, err
		}
		proc, err := startProcess("otelcol", filepath.Join(c.dir, fmt.Sprintf("otelcol-%d.log", attempt)), bin, "--config="+c.configPath)
		if err != nil {
			return nil, err
		}
		return proc, proc.waitReady(60*time.Second, func() error {
			if err := dialable(c.grpcAddr); err != nil {
				return err
			}
			return dialable(c.httpAddr)
		})
	})
	return c
}

// Collector output files, in the directory given to CollectorConfig.
const (
	TracesFile  = "traces.jsonl"
	MetricsFile = "metrics.jsonl"
	LogsFile    = "logs.jsonl"
)

// CollectorConfig returns the configuration StartCollector runs the
// collector with: OTLP on grpcAddr and httpAddr (host:port), file exporters
// writing TracesFile, MetricsFile and LogsFile in dir.
//
// Its own telemetry is turned off (metrics level none), so that it does not
// bind the default :8888 and parallel collectors do not collide.
func CollectorConfig(grpcAddr, httpAddr, dir string) []byte {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	return []byte(`receivers:
  otlp:
    protocols:
      grpc:
        endpoint: ` + q(grpcAddr) + `
      http:
        endpoint: ` + q(httpAddr) + `
exporters:
  file/traces:
    path: ` + q(filepath.Join(dir, TracesFile)) + `
    flush_interval: 100ms
  file/metrics:
    path: ` + q(filepath.Join(dir, MetricsFile)) + `
    flush_interval: 100ms
  file/logs:
    path: ` + q(filepath.Join(dir, LogsFile)) + `
    flush_interval: 100ms
  debug:
    verbosity: basic
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file/traces, debug]
    metrics:
      receivers: [otlp]
      exporters: [file/metrics, debug]
    logs:
      receivers: [otlp]
      exporters: [file/logs, debug]
`)
}

// GRPCEndpoint is the OTLP/gRPC receiver's host:port (no scheme; use it
// with an insecure connection).
func (c *Collector) GRPCEndpoint() string { return c.grpcAddr }

// HTTPEndpoint is the OTLP/HTTP receiver's base URL, http://host:port; the
// signals' paths are /v1/traces, /v1/metrics and /v1/logs.
func (c *Collector) HTTPEndpoint() string { return "http://" + c.httpAddr }

// ConfigPath is the configuration file the collector runs with.
func (c *Collector) ConfigPath() string { return c.configPath }

// LogPath is the file that has the collector's own output, the debug
// exporter's lines included.
func (c *Collector) LogPath() string { return c.proc.logPath }

// Spans returns every span the collector has written so far, in the order
// it received them.
func (c *Collector) Spans() ([]Span, error) {
	return readSpans(filepath.Join(c.dir, TracesFile))
}

// Metrics returns every metric the collector has written so far, one Metric
// per metric per export (a cumulative counter exported three times appears
// three times; LastMetric picks the newest).
func (c *Collector) Metrics() ([]Metric, error) {
	return readMetrics(filepath.Join(c.dir, MetricsFile))
}

// Logs returns every log record the collector has written so far.
func (c *Collector) Logs() ([]LogRecord, error) {
	return readLogs(filepath.Join(c.dir, LogsFile))
}

// WaitForSpans polls Spans every 100ms until pred holds and returns them;
// after timeout it fails t with what it had.
func (c *Collector) WaitForSpans(t testing.TB, pred func([]Span) bool, timeout time.Duration) []Span {
	t.Helper()
	return waitFor(t, "WaitForSpans", c.Spans, pred, timeout)
}

// WaitForMetrics polls Metrics every 100ms until pred holds and returns
// them; after timeout it fails t with what it had.
func (c *Collector) WaitForMetrics(t testing.TB, pred func([]Metric) bool, timeout time.Duration) []Metric {
	t.Helper()
	return waitFor(t, "WaitForMetrics", c.Metrics, pred, timeout)
}

// WaitForLogs polls Logs every 100ms until pred holds and returns them;
// after timeout it fails t with what it had.
func (c *Collector) WaitForLogs(t testing.TB, pred func([]LogRecord) bool, timeout time.Duration) []LogRecord {
	t.Helper()
	return waitFor(t, "WaitForLogs", c.Logs, pred, timeout)
}

func waitFor[T any](t testing.TB, what string, read func() ([]T, error), pred func([]T) bool, timeout time.Duration) []T {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, err := read()
		if err == nil && pred(got) {
			return got
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("%s: not satisfied within %v; last read failed: %v", what, timeout, err)
			}
			var b strings.Builder
			for i, g := range got {
				if i == 50 {
					fmt.Fprintf(&b, "\n  ... %d more", len(got)-50)
					break
				}
				fmt.Fprintf(&b, "\n  %+v", g)
			}
			t.Fatalf("%s: not satisfied within %v; had %d:%s", what, timeout, len(got), b.String())
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ValidateCollectorConfig runs "otelcol validate --config=path" and returns
// its output as the error if the collector rejects the configuration.
func ValidateCollectorConfig(path string) error {
	bin, err := CollectorBinary()
	if err != nil {
		return err
	}
	out, err := exec.Command(bin, "validate", "--config="+path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("otelcol validate --config=%s: %v:\n%s", path, err, out)
	}
	return nil
}
