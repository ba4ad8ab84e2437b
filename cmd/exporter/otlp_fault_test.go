package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/otel"
)

// faultyEndpoint is an OTLP endpoint that fails every export in one way.
type faultyEndpoint struct {
	protocol, endpoint string
	// reached says whether the endpoint saw the exporter push both
	// signals; nil where there is nothing to see (a closed port).
	reached func() bool
}

// closedPort is an address nobody listens on: connection refused.
func closedPort(t *testing.T) faultyEndpoint {
	return faultyEndpoint{protocol: "grpc", endpoint: "http://" + freeAddr(t)}
}

// silentListener accepts connections, reads what comes and never answers.
func silentListener(t *testing.T) faultyEndpoint {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return faultyEndpoint{protocol: "grpc", endpoint: "http://" + l.Addr().String(), reached: func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(conns) > 0
	}}
}

// httpStatus answers every OTLP/HTTP request with code.
func httpStatus(t *testing.T, code int) faultyEndpoint {
	var traces, metrics atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/traces":
			traces.Add(1)
		case "/v1/metrics":
			metrics.Add(1)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, http.StatusText(code), code)
	}))
	t.Cleanup(srv.Close)
	return faultyEndpoint{protocol: "http/protobuf", endpoint: srv.URL, reached: func() bool { return traces.Load() > 0 && metrics.Load() > 0 }}
}

// stopWithin sends SIGTERM and fails the test unless the exporter exits 0
// within bound.
func (s *runningServer) stopWithin(bound time.Duration) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() {
		<-s.done
		exited <- s.cmd.Wait()
	}()
	select {
	case err := <-exited:
		if err != nil {
			s.t.Fatalf("exporter exited with %v after SIGTERM:\n%s", err, s.log())
		}
	case <-time.After(bound):
		s.t.Fatalf("exporter still running %v after SIGTERM, with the OTLP endpoint failing:\n%s", bound, s.log())
	}
}

// sum adds the counter and gauge values of the series of name whose
// labels include want.
func sum(families map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	var v float64
	for _, m := range series(families, name, want) {
		v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return v
}

// TestOTLPFaultsKeepCountsExactAndShutdownBounded runs the exporter with
// OTLP traces and metrics pointed at an endpoint that is down, silent, or
// refusing (HTTP 503 and 400), issues retry chains from a loader name of
// its own, and checks that /metrics still counts every load, that the
// failed pushes and the spans they lost are counted and add up, that SDK
// errors are logged rate-limited, and that SIGTERM ends the exporter with
// exit 0 in bounded time.
func TestOTLPFaultsKeepCountsExactAndShutdownBounded(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	for _, tc := range []struct {
		name, comm string
		endpoint   func(*testing.T) faultyEndpoint
	}{
		{"closed_port_grpc", "vlogf_closed", closedPort},
		{"silent_listener_grpc", "vlogf_silent", silentListener},
		{"http_503", "vlogf_503", func(t *testing.T) faultyEndpoint { return httpStatus(t, http.StatusServiceUnavailable) }},
		{"http_400", "vlogf_400", func(t *testing.T) faultyEndpoint { return httpStatus(t, http.StatusBadRequest) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ep := tc.endpoint(t)
			const queue, batch = 16, 4
			started := time.Now()
			s := startServer(t, bin, []string{
				"OTEL_TRACES_EXPORTER=otlp", "OTEL_METRICS_EXPORTER=otlp",
				"OTEL_EXPORTER_OTLP_PROTOCOL=" + ep.protocol, "OTEL_EXPORTER_OTLP_ENDPOINT=" + ep.endpoint,
				"OTEL_EXPORTER_OTLP_TIMEOUT=2000", "OTEL_METRIC_EXPORT_INTERVAL=500", "OTEL_METRIC_EXPORT_TIMEOUT=2000",
				"OTEL_BSP_SCHEDULE_DELAY=100", "OTEL_BSP_EXPORT_TIMEOUT=2000", fmt.Sprint("OTEL_BSP_MAX_QUEUE_SIZE=", queue), fmt.Sprint("OTEL_BSP_MAX_EXPORT_BATCH_SIZE=", batch),
			}, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))

			// Chains of an ENOSPC and a retry that fits: a chain span and a
			// span per attempt each. The program is named after the subtest
			// so that the parallel subtests' chains stay apart.
			const chains = 20
			attempts := 0
			for range chains {
				p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: tc.comm, LogLevel: loadgen.LogLevel2, LogSize: 256, Comm: tc.comm}
				first, err := loadgen.LoadProgram(p)
				if err != nil || first.Errno != syscall.ENOSPC {
					t.Fatalf("first attempt: %v %v, want ENOSPC", first.Errno, err)
				}
				p.LogSize = 1 << 20
				retry, err := loadgen.LoadProgram(p)
				if err != nil || !retry.OK() {
					t.Fatalf("retry with 1 MiB: %v %v", retry.Errno, err)
				}
				attempts += 2 + first.EAGAINRetries + retry.EAGAINRetries
			}
			ourSpans := float64(chains + attempts)

			loader := map[string]string{"loader": tc.comm}
			traces, metrics := map[string]string{"signal": "traces"}, map[string]string{"signal": "metrics"}
			var families map[string]*dto.MetricFamily
			deadline := time.Now().Add(90 * time.Second)
			for {
				_, families = s.scrape()
				var chainsSeen uint64
				if ms := series(families, "bpf_prog_load_attempts", loader); len(ms) == 1 {
					chainsSeen = ms[0].GetHistogram().GetSampleCount()
				}
				loads := sum(families, "bpf_prog_loads_total", loader)
				traceFailures := sum(families, "verifierlog_exporter_otlp_export_failures_total", traces)
				metricFailures := sum(families, "verifierlog_exporter_otlp_export_failures_total", metrics)
				dropped := sum(families, "verifierlog_exporter_otlp_spans_dropped_total", nil)
				if chainsSeen == chains && loads >= float64(attempts) && traceFailures > 0 && metricFailures > 0 && dropped >= ourSpans {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after 90 s: %d of %d chains, %v of %d attempts, %v failed trace and %v failed metric pushes, %v of at least %v spans dropped; events lost %v\n%s",
						chainsSeen, chains, loads, attempts, traceFailures, metricFailures, dropped, ourSpans,
						sum(families, "verifierlog_exporter_events_lost_total", nil), s.log())
				}
				time.Sleep(200 * time.Millisecond)
			}

			if v := sum(families, "bpf_prog_loads_total", loader); v != float64(attempts) {
				t.Errorf("bpf_prog_loads_total{loader=%s} = %v, want the %d attempts issued", tc.comm, v, attempts)
			}
			if v := sum(families, "bpf_prog_loads_total", map[string]string{"loader": tc.comm, "result": "ENOSPC"}); v != chains {
				t.Errorf("ENOSPC attempts %v, want %d", v, chains)
			}
			ended := sum(families, "verifierlog_exporter_otlp_spans_ended_total", nil)
			exported := sum(families, "verifierlog_exporter_otlp_spans_exported_total", nil)
			dropped := sum(families, "verifierlog_exporter_otlp_spans_dropped_total", nil)
			pending := sum(families, "verifierlog_exporter_otlp_spans_pending", nil)
			byReason := map[string]float64{}
			for _, r := range []string{"queue_full", "export_failed", "shutdown"} {
				byReason[r] = sum(families, "verifierlog_exporter_otlp_spans_dropped_total", map[string]string{"reason": r})
			}
			t.Logf("spans: ended %v exported %v dropped %v pending %v", ended, exported, byReason, pending)
			if ended < ourSpans || exported != 0 || ended != exported+dropped+pending || pending > queue {
				t.Errorf("spans ended %v exported %v dropped %v pending %v: want ended >= %v (ours), nothing exported, ended = exported + dropped + pending, pending <= %d",
					ended, exported, dropped, pending, ourSpans, queue)
			}
			if byReason["shutdown"] != 0 || byReason["queue_full"]+byReason["export_failed"] != dropped {
				t.Errorf("dropped by reason %v, total %v: before shutdown only queue_full and export_failed", byReason, dropped)
			}
			traceFailures := sum(families, "verifierlog_exporter_otlp_export_failures_total", traces)
			if traceFailures > sum(families, "verifierlog_exporter_otlp_exports_total", traces) ||
				byReason["export_failed"] < traceFailures || byReason["export_failed"] > batch*traceFailures {
				t.Errorf("%v failed trace exports of %v, %v spans dropped as export_failed: each failed export holds 1 to %d spans",
					traceFailures, sum(families, "verifierlog_exporter_otlp_exports_total", traces), byReason["export_failed"], batch)
			}
			if f, n := sum(families, "verifierlog_exporter_otlp_export_failures_total", metrics), sum(families, "verifierlog_exporter_otlp_exports_total", metrics); f != n {
				t.Errorf("metric pushes: %v failed of %v, want all failed", f, n)
			}
			if ep.reached != nil && !ep.reached() {
				t.Error("the endpoint saw no export: the failures are not the endpoint's")
			}
			if _, err := s.get("/healthz"); err != nil {
				t.Errorf("/healthz: %v", err)
			}

			stopping := time.Now()
			s.stopWithin(60 * time.Second)
			elapsed := time.Since(started)
			t.Logf("exited %v after SIGTERM, %v after start", time.Since(stopping), elapsed)
			logged := strings.Count(s.log(), `msg="OpenTelemetry SDK error"`)
			if limit := 1 + int(elapsed/otel.SDKErrorLogInterval); logged < 1 || logged > limit {
				t.Errorf("%d SDK error lines in %v, want 1 to %d (one per %v):\n%s", logged, elapsed, limit, otel.SDKErrorLogInterval, s.log())
			}
			if !strings.Contains(s.log(), `msg="flushing telemetry"`) {
				t.Errorf("shutdown did not report the push it could not flush:\n%s", s.log())
			}
		})
	}
}
