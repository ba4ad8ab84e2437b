package main

import (
	"fmt"
	"math/bits"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
)

// TestScrapePassesPromtool lints a real scrape with promtool check metrics.
func TestScrapePassesPromtool(t *testing.T) {
	kerneltest.Require(t)
	if _, err := backends.PromtoolBinary(); err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	s := startServer(t, buildExporter(t), nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	ciliumStyleChain(t, "vlog_lint")
	// Wait for the chain to end so that every family has a sample.
	deadline := time.Now().Add(60 * time.Second)
	for {
		body, families := s.scrape()
		if series(families, "bpf_prog_load_attempts", map[string]string{"loader": thisComm(t)}) != nil {
			if err := backends.PromtoolCheckMetrics([]byte(body)); err != nil {
				t.Fatalf("promtool check metrics: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("chain did not end")
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
}

// TestPrometheusScrapesAndCountsLoads has a real Prometheus scrape the
// exporter and answers a PromQL query with the number of loads issued.
func TestPrometheusScrapesAndCountsLoads(t *testing.T) {
	kerneltest.Require(t)
	s := startServer(t, buildExporter(t), nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	prom := backends.StartPrometheus(t, s.addr)

	const loads = 7
	for range loads {
		r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_prom", LogLevel: 2, LogSize: 256})
		if err != nil || r.Errno != syscall.ENOSPC {
			t.Fatalf("load: %v %v", r.Errno, err)
		}
	}
	query := fmt.Sprintf(`sum(bpf_prog_loads_total{job=%q,loader=%q,result="ENOSPC"})`, backends.PrometheusJob, thisComm(t))
	samples := prom.WaitForQuery(t, query, func(s []backends.Sample) bool { return len(s) == 1 && s[0].Value == loads }, 60*time.Second)
	if samples[0].Value != loads {
		t.Fatalf("%s = %v, want %d", query, samples[0].Value, loads)
	}
	up := prom.WaitForQuery(t, `up{job="verifierlog"}`, func(s []backends.Sample) bool { return len(s) == 1 && s[0].Value == 1 }, 30*time.Second)
	if up[0].Value != 1 {
		t.Fatalf("up = %v", up)
	}
	s.stop()
}

// TestCollectorReceivesChainSpansAndMetrics sends the exporter's OTLP to a
// real Collector over gRPC and over HTTP and checks what arrived: one trace
// per retry chain with a child span per attempt, attributes as the README
// says, wall-clock times that bracket the syscalls, and the metrics.
func TestCollectorReceivesChainSpansAndMetrics(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	for _, proto := range []string{"grpc", "http/protobuf"} {
		t.Run(strings.ReplaceAll(proto, "/", "_"), func(t *testing.T) {
			col := backends.StartCollector(t)
			endpoint := "http://" + col.GRPCEndpoint()
			if proto != "grpc" {
				endpoint = col.HTTPEndpoint()
			}
			s := startServer(t, bin, []string{
				"OTEL_TRACES_EXPORTER=otlp", "OTEL_METRICS_EXPORTER=otlp",
				"OTEL_EXPORTER_OTLP_PROTOCOL=" + proto, "OTEL_EXPORTER_OTLP_ENDPOINT=" + endpoint,
				"OTEL_METRIC_EXPORT_INTERVAL=500", "OTEL_BSP_SCHEDULE_DELAY=100",
				"OTEL_SERVICE_NAME=vlog-test", "OTEL_RESOURCE_ATTRIBUTES=deployment.environment=ci",
			}, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))

			name := "vlog_otlp_" + map[string]string{"grpc": "g", "http/protobuf": "h"}[proto]
			before := time.Now()
			first, second := ciliumStyleChain(t, name)
			after := time.Now()

			spans := col.WaitForSpans(t, func(sp []backends.Span) bool {
				n := 0
				for _, s := range sp {
					if s.Attributes["bpf.prog.name"] == name {
						n++
					}
				}
				return n >= 3
			}, 60*time.Second)
			var chain backends.Span
			var attempts []backends.Span
			for _, sp := range spans {
				if sp.Attributes["bpf.prog.name"] != name {
					continue
				}
				if sp.Name == "bpf.load" {
					chain = sp
				} else {
					attempts = append(attempts, sp)
				}
			}
			if chain.Name == "" || len(attempts) != 2 {
				t.Fatalf("want one bpf.load span and two attempts, got chain %q and %d attempts", chain.Name, len(attempts))
			}
			if attempts[0].Attributes["bpf.load.attempt"] != int64(1) {
				attempts[0], attempts[1] = attempts[1], attempts[0]
			}
			for i, a := range attempts {
				if a.Name != "BPF_PROG_LOAD" || a.TraceID != chain.TraceID || a.ParentSpanID != chain.SpanID {
					t.Errorf("attempt %d: name %q trace %s parent %s; chain trace %s span %s", i, a.Name, a.TraceID, a.ParentSpanID, chain.TraceID, chain.SpanID)
				}
				start, end := time.Unix(0, int64(a.StartUnixNano)), time.Unix(0, int64(a.EndUnixNano))
				if start.Before(before.Add(-time.Second)) || end.After(after.Add(time.Second)) || end.Before(start) {
					t.Errorf("attempt %d at %v..%v, outside the syscalls' %v..%v", i, start, end, before, after)
				}
			}
			a1, a2 := attempts[0].Attributes, attempts[1].Attributes
			want1 := map[string]any{"bpf.command": "BPF_PROG_LOAD", "bpf.prog.type": "socket_filter", "bpf.prog.insn_count": int64(first.InsnCnt),
				"bpf.log.level": int64(2), "bpf.log.mode": "rotating", "bpf.log.size": int64(65536), "bpf.log.true_size": int64(first.LogTrueSize),
				"bpf.log.truncated": true, "bpf.load.attempt": int64(1), "error.type": "ENOSPC", "thread.id": int64(first.TID),
				"process.executable.name": thisComm(t)}
			for k, v := range want1 {
				if a1[k] != v {
					t.Errorf("attempt 1 %s = %v (%T), want %v", k, a1[k], a1[k], v)
				}
			}
			if attempts[0].StatusCode != "Error" || attempts[1].StatusCode == "Error" {
				t.Errorf("statuses %q, %q", attempts[0].StatusCode, attempts[1].StatusCode)
			}
			if a2["bpf.log.size"] != int64(second.LogTrueSize) || a2["bpf.log.truncated"] != false || a2["bpf.load.attempt"] != int64(2) {
				t.Errorf("attempt 2: %v", a2)
			}
			if chain.Attributes["bpf.load.attempts"] != int64(2) || chain.StatusCode == "Error" {
				t.Errorf("chain: attrs %v status %q", chain.Attributes, chain.StatusCode)
			}
			if fs, ok := chain.Attributes["bpf.load.failed_seconds"].(float64); !ok || fs <= 0 {
				t.Errorf("chain failed_seconds %v", chain.Attributes["bpf.load.failed_seconds"])
			}
			if chain.StartUnixNano != attempts[0].StartUnixNano || chain.EndUnixNano != attempts[1].EndUnixNano {
				t.Errorf("chain %d..%d, attempts %d..%d", chain.StartUnixNano, chain.EndUnixNano, attempts[0].StartUnixNano, attempts[1].EndUnixNano)
			}
			if chain.Resource["service.name"] != "vlog-test" || chain.Resource["deployment.environment"] != "ci" {
				t.Errorf("resource %v", chain.Resource)
			}

			loader := thisComm(t)
			metrics := col.WaitForMetrics(t, func(ms []backends.Metric) bool {
				m, ok := backends.LastMetric(ms, "bpf_prog_load_attempts")
				if !ok {
					return false
				}
				for _, dp := range m.DataPoints {
					if dp.Attributes["loader"] == loader && dp.Count >= 1 {
						return true
					}
				}
				return false
			}, 60*time.Second)
			loadsMetric, ok := backends.LastMetric(metrics, "bpf_prog_loads")
			if !ok || loadsMetric.Type != "sum" || !loadsMetric.Monotonic {
				t.Fatalf("bpf_prog_loads: %+v", loadsMetric)
			}
			var enospc float64
			for _, dp := range loadsMetric.DataPoints {
				if dp.Attributes["loader"] == loader && dp.Attributes["result"] == "ENOSPC" {
					enospc += dp.Value
				}
			}
			if enospc != 1 {
				t.Errorf("bpf_prog_loads{result=ENOSPC} over OTLP = %v, want 1", enospc)
			}
			if m, ok := backends.LastMetric(metrics, "bpf_verifier_log_buffer_bytes"); !ok || m.Type != "histogram" || m.Unit != "By" ||
				len(m.DataPoints) == 0 || len(m.DataPoints[0].ExplicitBounds) != 24 || m.DataPoints[0].ExplicitBounds[0] != 128 {
				t.Errorf("bpf_verifier_log_buffer_bytes over OTLP: %+v", m)
			}

			// A failed load leaves its chain open (a retry may follow): SIGTERM
			// must end it and flush its span before the exporter exits.
			pending, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: name + "_p", LogLevel: 2, LogSize: 256})
			if err != nil || pending.Errno != syscall.ENOSPC {
				t.Fatalf("pending load: %v %v", pending.Errno, err)
			}
			s.stop()
			flushed := col.WaitForSpans(t, func(sp []backends.Span) bool {
				for _, s := range sp {
					if s.Name == "bpf.load" && s.Attributes["bpf.prog.name"] == name+"_p" {
						return true
					}
				}
				return false
			}, 30*time.Second)
			for _, sp := range flushed {
				if sp.Name == "bpf.load" && sp.Attributes["bpf.prog.name"] == name+"_p" &&
					(sp.StatusCode != "Error" || sp.Attributes["bpf.load.attempts"] != int64(1) || sp.Attributes["error.type"] != "ENOSPC") {
					t.Errorf("chain flushed at shutdown: status %q attrs %v", sp.StatusCode, sp.Attributes)
				}
			}
		})
	}
}

// TestCollectorReceivesExponentialHistograms: with the standard
// OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION asking for them,
// a real Collector receives the histograms as exponential ones at scale 0,
// the need of a cilium/ebpf-style chain in the bucket that holds it
// (OpenTelemetry's bucket j is (2^j, 2^(j+1)]).
func TestCollectorReceivesExponentialHistograms(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	col := backends.StartCollector(t)
	s := startServer(t, bin, []string{
		"OTEL_METRICS_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc", "OTEL_EXPORTER_OTLP_ENDPOINT=http://" + col.GRPCEndpoint(),
		"OTEL_METRIC_EXPORT_INTERVAL=500", "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=base2_exponential_bucket_histogram",
	}, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	first, _ := ciliumStyleChain(t, "vlog_otlp_exp")
	need := uint64(first.LogTrueSize)
	loader := thisComm(t)
	var got backends.DataPoint
	col.WaitForMetrics(t, func(ms []backends.Metric) bool {
		m, ok := backends.LastMetric(ms, "bpf_verifier_log_required_bytes")
		if !ok || m.Type != "exponential_histogram" {
			return false
		}
		for _, dp := range m.DataPoints {
			if dp.Attributes["loader"] == loader && dp.Attributes["command"] == "BPF_PROG_LOAD" && dp.Count >= 1 {
				got = dp
				return true
			}
		}
		return false
	}, 60*time.Second)
	if got.Scale != 0 || got.Count != 1 || got.Sum != float64(need) {
		t.Errorf("need histogram: scale %d count %d sum %v, want 0, 1, %d", got.Scale, got.Count, got.Sum, need)
	}
	// The bucket j with 2^j < need <= 2^(j+1).
	j := int32(bits.Len64(need-1)) - 1
	for i, c := range got.PositiveCounts {
		want := uint64(0)
		if got.PositiveOffset+int32(i) == j {
			want = 1
		}
		if c != want {
			t.Errorf("bucket %d holds %d, want %d (need %d is in bucket %d)", got.PositiveOffset+int32(i), c, want, need, j)
		}
	}
	if len(got.PositiveCounts) == 0 {
		t.Errorf("no buckets: %+v", got)
	}
	// /metrics keeps its classic buckets whatever OTLP pushes.
	_, families := s.scrape()
	h := series(families, "bpf_verifier_log_required_bytes", map[string]string{"loader": loader, "command": "BPF_PROG_LOAD"})
	if len(h) != 1 || bucket(h[0].GetHistogram(), float64(uint64(1)<<j)) != 0 || bucket(h[0].GetHistogram(), float64(uint64(1)<<(j+1))) != 1 {
		t.Errorf("/metrics need histogram, want its classic buckets with the need between le=2^%d and le=2^%d: %v", j, j+1, h)
	}
	s.stop()
}
