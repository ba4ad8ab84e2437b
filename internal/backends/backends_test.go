package backends

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

const knownExposition = `# HELP verifierlog_backends_test_value A value the test knows.
# TYPE verifierlog_backends_test_value gauge
verifierlog_backends_test_value{kind="known"} 42.5
# HELP verifierlog_backends_test_events_total Events the test counted.
# TYPE verifierlog_backends_test_events_total counter
verifierlog_backends_test_events_total 7
`

func TestPrometheusScrapesTarget(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		fmt.Fprint(w, knownExposition)
	}))
	defer srv.Close()
	target := strings.TrimPrefix(srv.URL, "http://")

	p := StartPrometheus(t, target)
	if err := ValidatePrometheusConfig(p.ConfigPath()); err != nil {
		t.Errorf("the server's own config: %v", err)
	}
	if !strings.HasPrefix(p.URL(), "http://127.0.0.1:") || strings.HasSuffix(p.URL(), ":9090") {
		t.Errorf("URL() = %q, want a free 127.0.0.1 port", p.URL())
	}

	got := p.WaitForQuery(t, `verifierlog_backends_test_value{job="verifierlog"}`, func(s []Sample) bool { return len(s) == 1 }, 30*time.Second)
	want := map[string]string{"__name__": "verifierlog_backends_test_value", "job": PrometheusJob, "instance": target, "kind": "known"}
	if got[0].Value != 42.5 || !equalMaps(got[0].Labels, want) {
		t.Errorf("sample = %+v, want value 42.5 and labels %v", got[0], want)
	}

	ctx := context.Background()
	s, err := p.Query(ctx, `sum(verifierlog_backends_test_events_total)`)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1 || s[0].Value != 7 || len(s[0].Labels) != 0 {
		t.Errorf("sum(...) = %+v, want one unlabelled sample of 7", s)
	}
	s, err = p.Query(ctx, `scalar(up{job="verifierlog"}) * 2`)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1 || s[0].Value != 2 {
		t.Errorf("scalar query = %+v, want 2", s)
	}
	if _, err := p.Query(ctx, `this is not promql`); err == nil {
		t.Error("a bad query returned no error")
	}

	targets, err := p.Targets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 1 || targets[0].Health != "up" || targets[0].ScrapeURL != srv.URL+"/metrics" {
		t.Errorf("targets = %+v, want %s/metrics up", targets, srv.URL)
	}
}

func TestPromtool(t *testing.T) {
	if _, err := PromtoolBinary(); err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	if err := PromtoolCheckMetrics([]byte(knownExposition)); err != nil {
		t.Errorf("good exposition: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yml")
	if err := os.WriteFile(bad, []byte("scrape_configs:\n  - job_name: x\n    scrape_interval: 1s\n    scrape_timeout: 2s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ValidatePrometheusConfig(bad); err == nil {
		t.Error("a scrape_timeout above scrape_interval passed promtool check config")
	}
	badMetrics := "# TYPE verifierlog_bad counter\nverifierlog_bad 1\n" // a counter without _total
	if err := PromtoolCheckMetrics([]byte(badMetrics)); err == nil {
		t.Error("a counter without _total passed promtool's lint")
	} else {
		t.Logf("as expected: %v", err)
	}
}

func TestCollectorReceivesOTLP(t *testing.T) {
	c := StartCollector(t)
	if err := ValidateCollectorConfig(c.ConfigPath()); err != nil {
		t.Errorf("the collector's own config does not validate: %v", err)
	}
	ctx := context.Background()

	for _, tc := range []struct {
		name    string
		traces  func() (sdktrace.SpanExporter, error)
		metrics func() (sdkmetric.Exporter, error)
	}{
		{
			name: "grpc",
			traces: func() (sdktrace.SpanExporter, error) {
				return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(c.GRPCEndpoint()), otlptracegrpc.WithInsecure())
			},
			metrics: func() (sdkmetric.Exporter, error) {
				return otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(c.GRPCEndpoint()), otlpmetricgrpc.WithInsecure())
			},
		},
		{
			name: "http",
			traces: func() (sdktrace.SpanExporter, error) {
				return otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(c.HTTPEndpoint()+"/v1/traces"))
			},
			metrics: func() (sdkmetric.Exporter, error) {
				return otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpointURL(c.HTTPEndpoint()+"/v1/metrics"))
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			service := "backends-test-" + tc.name
			res := resource.NewSchemaless(attribute.String("service.name", service))

			// Traces: a parent with a child that failed.
			te, err := tc.traces()
			if err != nil {
				t.Fatal(err)
			}
			tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSyncer(te))
			tracer := tp.Tracer("backends-test")
			pctx, parent := tracer.Start(ctx, "parent", trace.WithAttributes(attribute.String("transport", tc.name), attribute.Int("n", 3)))
			_, child := tracer.Start(pctx, "child", trace.WithSpanKind(trace.SpanKindClient),
				trace.WithAttributes(attribute.Bool("retried", true), attribute.StringSlice("tags", []string{"a", "b"})))
			child.AddEvent("attempt", trace.WithAttributes(attribute.Int("attempt", 2)))
			child.SetStatus(codes.Error, "verifier rejected")
			child.End()
			parent.End()
			if err := tp.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			pc, cc := parent.SpanContext(), child.SpanContext()

			ofService := func(spans []Span) []Span {
				return slices.DeleteFunc(slices.Clone(spans), func(s Span) bool { return s.Resource["service.name"] != service })
			}
			spans := ofService(c.WaitForSpans(t, func(s []Span) bool { return len(ofService(s)) >= 2 }, 20*time.Second))
			p, ok1 := FindSpan(spans, "parent")
			ch, ok2 := FindSpan(spans, "child")
			if !ok1 || !ok2 || len(spans) != 2 {
				t.Fatalf("spans = %+v, want parent and child", spans)
			}
			if p.TraceID != pc.TraceID().String() || p.SpanID != pc.SpanID().String() || p.ParentSpanID != "" {
				t.Errorf("parent ids = %s/%s/%q, want %s/%s/\"\"", p.TraceID, p.SpanID, p.ParentSpanID, pc.TraceID(), pc.SpanID())
			}
			if ch.TraceID != cc.TraceID().String() || ch.SpanID != cc.SpanID().String() || ch.ParentSpanID != p.SpanID {
				t.Errorf("child ids = %s/%s/%s, want %s/%s/%s", ch.TraceID, ch.SpanID, ch.ParentSpanID, cc.TraceID(), cc.SpanID(), p.SpanID)
			}
			if p.Attributes["transport"] != tc.name || p.Attributes["n"] != int64(3) || p.StatusCode != "Unset" || p.Kind != "Internal" {
				t.Errorf("parent = %+v", p)
			}
			if ch.Attributes["retried"] != true || fmt.Sprint(ch.Attributes["tags"]) != "[a b]" ||
				ch.StatusCode != "Error" || ch.StatusMessage != "verifier rejected" || ch.Kind != "Client" || ch.Scope != "backends-test" {
				t.Errorf("child = %+v", ch)
			}
			if len(ch.Events) != 1 || ch.Events[0].Name != "attempt" || ch.Events[0].Attributes["attempt"] != int64(2) {
				t.Errorf("child events = %+v", ch.Events)
			}
			if ch.StartUnixNano == 0 || ch.EndUnixNano < ch.StartUnixNano || p.EndUnixNano < ch.EndUnixNano {
				t.Errorf("times: parent %d..%d, child %d..%d", p.StartUnixNano, p.EndUnixNano, ch.StartUnixNano, ch.EndUnixNano)
			}

			// Metrics: a counter, a gauge and a histogram, exported once at
			// shutdown.
			me, err := tc.metrics()
			if err != nil {
				t.Fatal(err)
			}
			reader := sdkmetric.NewPeriodicReader(me, sdkmetric.WithInterval(time.Hour))
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(reader), sdkmetric.WithView(
				sdkmetric.NewView(sdkmetric.Instrument{Name: "test.duration"},
					sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: []float64{1, 10}}})))
			meter := mp.Meter("backends-test")
			counter, _ := meter.Int64Counter("test.loads", metric.WithUnit("{load}"))
			counter.Add(ctx, 2, metric.WithAttributes(attribute.String("result", "ok")))
			counter.Add(ctx, 1, metric.WithAttributes(attribute.String("result", "ok")))
			gauge, _ := meter.Float64Gauge("test.level")
			gauge.Record(ctx, 0.25)
			hist, _ := meter.Float64Histogram("test.duration", metric.WithUnit("s"))
			for _, v := range []float64{0.5, 5, 50} {
				hist.Record(ctx, v)
			}
			if err := mp.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}

			mOfService := func(ms []Metric) []Metric {
				return slices.DeleteFunc(slices.Clone(ms), func(m Metric) bool { return m.Resource["service.name"] != service })
			}
			metrics := mOfService(c.WaitForMetrics(t, func(ms []Metric) bool { return len(mOfService(ms)) >= 3 }, 20*time.Second))
			loads, ok := LastMetric(metrics, "test.loads")
			if !ok || loads.Type != "sum" || !loads.Monotonic || loads.Temporality != "cumulative" || loads.Unit != "{load}" || loads.Scope != "backends-test" ||
				len(loads.DataPoints) != 1 || loads.DataPoints[0].Value != 3 || loads.DataPoints[0].Attributes["result"] != "ok" {
				t.Errorf("test.loads = %+v", loads)
			}
			level, ok := LastMetric(metrics, "test.level")
			if !ok || level.Type != "gauge" || len(level.DataPoints) != 1 || level.DataPoints[0].Value != 0.25 {
				t.Errorf("test.level = %+v", level)
			}
			dur, ok := LastMetric(metrics, "test.duration")
			if !ok || dur.Type != "histogram" || len(dur.DataPoints) != 1 {
				t.Fatalf("test.duration = %+v", dur)
			}
			dp := dur.DataPoints[0]
			if dp.Count != 3 || dp.Sum != 55.5 || !slices.Equal(dp.BucketCounts, []uint64{1, 1, 1}) || !slices.Equal(dp.ExplicitBounds, []float64{1, 10}) ||
				dp.Min == nil || *dp.Min != 0.5 || dp.Max == nil || *dp.Max != 50 {
				t.Errorf("test.duration point = %+v", dp)
			}
		})
	}
}

func TestValidateCollectorConfig(t *testing.T) {
	if _, err := CollectorBinary(); err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, CollectorConfig("127.0.0.1:4317", "127.0.0.1:4318", dir), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ValidateCollectorConfig(good); err != nil {
		t.Errorf("CollectorConfig does not validate: %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	cfg := strings.Replace(string(CollectorConfig("127.0.0.1:4317", "127.0.0.1:4318", dir)), "[file/traces, debug]", "[file/traces, nosuch]", 1)
	if err := os.WriteFile(bad, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ValidateCollectorConfig(bad); err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("a pipeline with an unknown exporter: err = %v, want one naming it", err)
	}
}

func TestFreePort(t *testing.T) {
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("FreeAddr() = %s, which cannot be bound: %v", addr, err)
	}
	l.Close()
}

// The file exporter writes trace and span IDs as hex, which protojson would
// read as base64 without complaint; the reader must not.
func TestReadSpansHexIDs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "traces.jsonl")
	line := `{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"x"}}]},"scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173","name":"x","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","attributes":[{"key":"a","value":{"intValue":"5"}},{"key":"m","value":{"kvlistValue":{"values":[{"key":"k","value":{"doubleValue":1.5}}]}}}],"status":{"message":"bad","code":2},"newerField":1}]}]}]}`
	// The second line is still being written: no newline yet.
	if err := os.WriteFile(path, []byte(line+"\n"+line[:40]), 0o644); err != nil {
		t.Fatal(err)
	}
	spans, err := readSpans(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) != 1 {
		t.Fatalf("spans = %+v, want 1", spans)
	}
	s := spans[0]
	if s.TraceID != "5b8efff798038103d269b633813fc60c" || s.SpanID != "eee19b7ec3c1b174" || s.ParentSpanID != "eee19b7ec3c1b173" ||
		s.Kind != "Server" || s.StatusCode != "Error" || s.StartUnixNano != 1544712660000000000 ||
		s.Attributes["a"] != int64(5) || fmt.Sprint(s.Attributes["m"]) != "map[k:1.5]" || s.Resource["service.name"] != "x" {
		t.Errorf("span = %+v", s)
	}
	if got, err := readSpans(filepath.Join(t.TempDir(), "none.jsonl")); err != nil || len(got) != 0 {
		t.Errorf("missing file: %v, %v; want no spans and no error", got, err)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
