package deploy

// Metric names against a real scrape: every metric the dashboard and the
// rules use, and every label they match on or group by, is one the running
// exporter serves.

import (
	"net"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

// usage is what the expressions ask of the exporter's metrics.
type usage struct {
	metrics map[string][]string            // metric name -> where
	labels  map[string]map[string][]string // metric name -> label ("by:label" when grouped by) -> where
}

// collectUsage walks the expressions' ASTs: every vector selector's metric
// name and label matchers, and the grouping labels of every aggregation,
// attributed to the metrics aggregated.
func collectUsage(t *testing.T, exprs []promExpr) usage {
	t.Helper()
	u := usage{metrics: map[string][]string{}, labels: map[string]map[string][]string{}}
	addLabel := func(metric, label, where string) {
		if u.labels[metric] == nil {
			u.labels[metric] = map[string][]string{}
		}
		u.labels[metric][label] = append(u.labels[metric][label], where)
	}
	p := parser.NewParser(parser.Options{})
	for _, e := range exprs {
		ast, err := p.ParseExpr(e.promq)
		if err != nil {
			t.Errorf("%s: %v", e.where, err)
			continue
		}
		parser.Inspect(ast, func(node parser.Node, _ []parser.Node) error {
			switch n := node.(type) {
			case *parser.VectorSelector:
				name := n.Name
				for _, m := range n.LabelMatchers {
					if m.Name == "__name__" {
						name = m.Value
					}
				}
				u.metrics[name] = append(u.metrics[name], e.where)
				for _, m := range n.LabelMatchers {
					if m.Name != "__name__" {
						addLabel(name, m.Name, e.where)
					}
				}
			case *parser.AggregateExpr:
				if n.Without {
					return nil
				}
				var inner []string
				parser.Inspect(n.Expr, func(node parser.Node, _ []parser.Node) error {
					if vs, ok := node.(*parser.VectorSelector); ok {
						inner = append(inner, vs.Name)
					}
					return nil
				})
				for _, l := range n.Grouping {
					for _, m := range inner {
						addLabel(m, "by:"+l, e.where)
					}
				}
			}
			return nil
		})
	}
	return u
}

// familyFor finds the served family of a metric name as PromQL sees it:
// the name itself, or a histogram's _bucket, _sum or _count series.
func familyFor(fams map[string]*dto.MetricFamily, name string) (*dto.MetricFamily, string) {
	if f, ok := fams[name]; ok {
		return f, ""
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if f, ok := fams[base]; ok && (f.GetType() == dto.MetricType_HISTOGRAM || (suffix != "_bucket" && f.GetType() == dto.MetricType_SUMMARY)) {
				return f, suffix
			}
		}
	}
	return nil, ""
}

func familyHasLabel(f *dto.MetricFamily, label string) bool {
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				return true
			}
		}
	}
	return false
}

// TestMetricNamesServed starts the exporter, issues loads that make every
// family appear (undersized and retried loads, a BTF load, a load whose need
// stays unknown), scrapes it, and checks that every metric the dashboard
// and the rules use is served, with every label they match or group by.
func TestMetricNamesServed(t *testing.T) {
	kerneltest.Require(t)
	bin := exporterBinary(t)
	// OTLP push to a closed port, so that its self metrics are served too.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	srv := startExporter(t, []string{"OTEL_TRACES_EXPORTER=otlp", "OTEL_METRICS_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + closed, "OTEL_METRIC_EXPORT_INTERVAL=500", "OTEL_BSP_SCHEDULE_DELAY=100"}, bin, "--chain-window=100ms")
	comm := testComm("m")
	loadgen(t, bin, "--imitate", "cilium-ebpf", "--program", "long", "--insns", "1500", "--log-level", "2", "--comm", comm)
	loadgen(t, bin, "--program", "long", "--log-level", "2", "--log-size", "256", "--comm", comm)
	loadgen(t, bin, "--btf", "--log-size", "128", "--comm", comm)
	// libbpf 1.1's attr size: no log_true_size, and ENOSPC leaves the need
	// unknown when the chain ends.
	loadgen(t, bin, "--attr-size", "128", "--program", "long", "--log-level", "2", "--log-size", "256", "--comm", comm)
	mine := map[string]string{"loader": comm}
	fams := srv.waitScrape(func(f map[string]*dto.MetricFamily) bool {
		for _, name := range []string{"bpf_verifier_log_unknown_size_total", "bpf_prog_load_attempts",
			"bpf_verifier_log_required_bytes", "bpf_verifier_log_shortfall_bytes", "bpf_verifier_log_recommended_buffer_bytes"} {
			if _, ok := sample(f, name, mine); !ok {
				return false
			}
		}
		return true
	}, 20*time.Second)

	// The scrape as the README describes it, for our own loads.
	if n, _ := sample(fams, "bpf_prog_loads_total", map[string]string{"loader": comm, "command": "BPF_BTF_LOAD", "result": "ENOSPC"}); n != 1 {
		t.Errorf("bpf_prog_loads_total{command=BPF_BTF_LOAD,result=ENOSPC,loader=%s} = %v, want 1", comm, n)
	}
	if _, ok := sample(fams, "verifierlog_exporter_build_info", map[string]string{"version": buildVersion}); !ok {
		t.Errorf("verifierlog_exporter_build_info has no version=%q: build-image.sh's -X main.version does not reach it", buildVersion)
	}

	exprs := append(dashboardExprs(t, readDashboard(t)), ruleExprs(t)...)
	u := collectUsage(t, exprs)
	recorded := map[string]bool{}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	// Labels Prometheus adds to every scraped series.
	targetLabels := map[string]bool{"job": true, "instance": true}
	var names []string
	for n := range u.metrics {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "up" || recorded[name] {
			continue
		}
		f, suffix := familyFor(fams, name)
		if f == nil {
			t.Errorf("metric %s (used by %s) is not served by the exporter", name, strings.Join(slices.Compact(u.metrics[name]), "; "))
			continue
		}
		for l, where := range u.labels[name] {
			label, grouped := strings.CutPrefix(l, "by:")
			if targetLabels[label] || (label == "le" && suffix == "_bucket") || familyHasLabel(f, label) {
				continue
			}
			how := "matches on"
			if grouped {
				how = "groups by"
			}
			t.Errorf("%s %s label %q, which %s does not have", strings.Join(slices.Compact(where), "; "), how, label, f.GetName())
		}
	}
	t.Logf("checked %d metric names of %d expressions against a scrape of %d families", len(names), len(exprs), len(fams))
}
