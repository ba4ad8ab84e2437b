package deploy

// The dashboard and the short-window rules against a classic and a native
// Prometheus: both read what the exporter serves, one as classic
// histograms, the other as native ones, and every expression must work on
// both and, for the key ones, give the values the loads fed imply.

import (
	"context"
	"fmt"
	"math"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/otel"
	"github.com/verifierlog/exporter/tracer"
)

// nativeLoad is one logical load: the buffers of its attempts (all but
// the last get ENOSPC) and its need; need 0 leaves the need unknown (the
// last attempt's log could not be read back).
type nativeLoad struct {
	loader string
	bufs   []uint32
	need   uint32
	errno  unix.Errno // of the last attempt; 0: it succeeds
}

// nativeLoads is what the test feeds, twice. cilium-agent: two loads of
// one attempt needing 3000 B (bucket (2048, 4096]) and two needing
// 100000 B (bucket (65536, 131072]) that retry after ENOSPC at 64 KiB. So
// 4 chains, 6 attempts with a buffer, 2 of them undersized, 2 chains
// retried, and the median need is the bound 4096. bpftrace: one load of
// one attempt needing 700000 B, the median interpolated in its bucket
// (524288, 1048576]: 786432. oldlib: one load whose need stays unknown.
// rejected-x: one load the verifier rejects (EACCES) with a 1500 B log.
var nativeLoads = []nativeLoad{
	{"cilium-agent", []uint32{65536}, 3000, 0},
	{"cilium-agent", []uint32{65536}, 3000, 0},
	{"cilium-agent", []uint32{65536, 131072}, 100000, 0},
	{"cilium-agent", []uint32{65536, 131072}, 100000, 0},
	{"bpftrace", []uint32{1000000}, 700000, 0},
	{"oldlib", []uint32{4096}, 0, 0},
	{"rejected-x", []uint32{4096}, 1500, unix.EACCES},
}

// nativeSource stands in for the tracer behind the self metrics; its
// counters rise with each round of loads (one lost record per round).
type nativeSource struct {
	mu             sync.Mutex
	events, rounds uint64
}

func (s *nativeSource) Mode() tracer.AttachMode    { return tracer.AttachTracepoint }
func (s *nativeSource) Variant() tracer.Variant    { return tracer.VariantModern }
func (s *nativeSource) KernelRelease() string      { return "6.8.0-test" }
func (s *nativeSource) LogTrueSizeSupported() bool { return true }
func (s *nativeSource) Events() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.events
}
func (s *nativeSource) LogScanFaults() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rounds
}
func (s *nativeSource) Lost() (map[tracer.LostReason]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return map[tracer.LostReason]uint64{tracer.LostReasons()[0]: s.rounds}, nil
}

// nativeEmpty are the expressions that are empty on both servers for the
// data fed, and why. Keys are promExpr.where.
var nativeEmpty = map[string]string{
	`panel 23 "OTLP push: spans dropped and failed exports" target A`: "OTLP push is off, so its counters are not served",
	`panel 23 "OTLP push: spans dropped and failed exports" target B`: "OTLP push is off, so its counters are not served",
	`rule VerifierlogExporterOTLPSpansDropped`:                        "OTLP push is off, so its counters are not served",
	`rule VerifierlogExporterDown`:                                    "the target is up",
}

// fleetPanel reports whether e reads the fleet groups' recorded series,
// which these servers do not evaluate (every 5 minutes and every hour;
// the fleet's own test checks them).
func fleetPanel(e promExpr) bool {
	return strings.Contains(e.promq, ":increase1d") || strings.Contains(e.promq, ":recommended1d") ||
		strings.Contains(e.promq, ":recommended7d") || strings.Contains(e.promq, ":above_default_ratio1d")
}

// TestDashboardAndRulesOnNativeAndClassicPrometheus serves an exporter's
// registry (otel.Setup, a Pipeline, a stand-in tracer for the self
// metrics), fed nativeLoads twice, to two Prometheus servers scraping
// every second: one classic (text format: _bucket, _count and _sum
// series) and one with native histograms (protobuf: one native series per
// histogram). The first round makes every series exist; the second is
// what rate() sees. Then every dashboard expression and every expression
// of the recording and alerting groups, as instant queries, must give a
// result on both servers (but nativeEmpty and the fleet panels), and the
// median need, the mean attempts, the undersized share and the share of
// chains retried must be what the loads imply, on both.
func TestDashboardAndRulesOnNativeAndClassicPrometheus(t *testing.T) {
	for _, v := range []string{"OTEL_METRICS_EXPORTER", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"} {
		t.Setenv(v, "")
	}
	ctx := context.Background()
	tel, err := otel.Setup(ctx, otel.BuildInfo{Version: "test", Revision: "test", GoVersion: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	// Held until both servers have scraped every series at zero, so that
	// rate() sees the whole rise, from zero: then float counters and
	// native histograms extrapolate alike (Prometheus 2.42 never
	// extrapolates a native histogram's rate back past its first sample,
	// but a float counter's up to half a scrape interval unless it starts
	// at zero), and the ratios of the two kinds are exact.
	tel.Recorder.SetNewSeriesHold(time.Hour)
	src := &nativeSource{}
	var clock atomic.Uint64 // CLOCK_MONOTONIC of the loads fed
	clock.Store(uint64(time.Hour))
	pipe, err := otel.New(otel.Config{MeterProvider: tel.MeterProvider, Recorder: tel.Recorder, Source: src,
		Build: otel.BuildInfo{Version: "test", Revision: "test", GoVersion: "test"},
		Clock: tracer.WallClockWithOffset(0), Now: clock.Load})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(promhttp.HandlerFor(tel.Registry, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	t.Cleanup(srv.Close)
	target := strings.TrimPrefix(srv.URL, "http://")

	classic := backends.StartPrometheus(t, target)
	native := startNativePrometheus(t, target)
	servers := []struct {
		name string
		p    *backends.Prometheus
	}{{"classic", classic}, {"native", native}}

	// One round: every load, each attempt 1 ms after the last one's end,
	// the loads 10 s apart (beyond the chain window).
	var attempts uint64
	round := func() {
		for i, l := range nativeLoads {
			ns := clock.Add(uint64(10 * time.Second))
			pid := uint32(100 + i)
			for j, buf := range l.bufs {
				last := j == len(l.bufs)-1
				ev := tracer.LoadEvent{Command: tracer.CmdProgLoad, PID: pid, TID: pid, ProgType: 2, InsnCnt: 1000,
					LogLevel: 1, LogSize: buf, HasLogBuf: true, StartNs: ns, EndNs: ns + uint64(time.Millisecond), Ret: 7,
					AttachMode: tracer.AttachTracepoint}
				ns = clock.Add(2 * uint64(time.Millisecond))
				copy(ev.Comm[:], l.loader)
				copy(ev.ProgName[:], fmt.Sprintf("p%d", i))
				if !last {
					ev.Ret = -int64(unix.ENOSPC)
				} else if l.errno != 0 {
					ev.Ret = -int64(l.errno)
				}
				if l.need > 0 {
					ev.LogTrueSize, ev.LogTrueSizeKnown = l.need, true
				} else {
					ev.LogScanFault = last
				}
				pipe.Handle(&ev)
				attempts++
			}
		}
		clock.Add(uint64(10 * time.Second))
		pipe.Flush()
	}
	// Both servers have scraped the attempts (every series comes from
	// the same scrape, so all of them): held at zero, then released.
	waitAttempts := func(want uint64) {
		for _, s := range servers {
			s.p.WaitForQuery(t, `sum(bpf_prog_loads_total)`, func(r []backends.Sample) bool {
				return len(r) == 1 && r[0].Value == float64(want)
			}, 30*time.Second)
		}
	}
	round()
	waitAttempts(0)
	tel.Recorder.SetNewSeriesHold(0)
	src.mu.Lock()
	src.events, src.rounds = attempts, 1
	src.mu.Unlock()
	waitAttempts(attempts)

	// Every expression on both servers.
	exprs := dashboardExprs(t, readDashboard(t))
	for _, g := range readRules(t).Groups {
		if g.Name != "verifierlog-exporter.recording" && g.Name != "verifierlog-exporter.alerts" {
			continue
		}
		for _, r := range g.Rules {
			// The servers' scrape job is backends.PrometheusJob.
			q := strings.ReplaceAll(r.Expr, `job="`+jobName+`"`, `job="`+backends.PrometheusJob+`"`)
			exprs = append(exprs, promExpr{"rule " + r.Record + r.Alert, r.Expr, q})
		}
	}
	heatmapTargets := map[string]string{} // where -> "classic" or "native"
	for _, p := range readDashboard(t).allPanels() {
		if p.Type != "heatmap" {
			continue
		}
		for _, tg := range p.Targets {
			kind := "native"
			if strings.Contains(tg.Expr, "_bucket") {
				kind = "classic"
			}
			heatmapTargets[fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID)] = kind
		}
	}
	results := map[string]map[string][]backends.Sample{} // server -> where -> result
	checked := 0
	for _, s := range servers {
		results[s.name] = map[string][]backends.Sample{}
		for _, e := range exprs {
			q := e.promq
			reason, allowed := nativeEmpty[e.where]
			if fleetPanel(e) {
				allowed, reason = true, "fleet rules not evaluated here"
			}
			// A heatmap has a target for each kind of histogram: the
			// other kind's is empty. The native one's result is a
			// histogram, which Query does not read: its count stands in.
			if h, ok := heatmapTargets[e.where]; ok {
				if h == "native" {
					q = "histogram_count(" + q + ")"
				}
				if h != s.name {
					allowed, reason = true, "the heatmap's target for "+h+" histograms"
				}
			}
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err := s.p.Query(qctx, q)
			cancel()
			if err != nil {
				t.Errorf("%s: %s: %v", s.name, e.where, err)
				continue
			}
			results[s.name][e.where] = res
			switch {
			case len(res) == 0 && !allowed:
				t.Errorf("%s Prometheus: %s: empty result\n  %s", s.name, e.where, e.promq)
			case len(res) > 0 && allowed:
				t.Errorf("%s Prometheus: %s: %v, want empty (%s)\n  %s", s.name, e.where, res, reason, e.promq)
			case len(res) > 0:
				checked++
			}
		}
	}
	t.Logf("%d expressions, %d non-empty results over both servers", len(exprs), checked)

	// The key values, from the rules and the dashboard, on both servers.
	byLoader := func(server, where string) map[string]float64 {
		out := map[string]float64{}
		for _, s := range results[server][where] {
			out[s.Labels["loader"]] = s.Value
		}
		return out
	}
	near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
	type want struct {
		where, loader string
		value         float64
	}
	const (
		p50Need = `panel 12 "Need vs buffer per loader (p50)" target A`
		mean    = `panel 14 "Attempts per logical load (retry chains)" target C`
		share   = `panel 4 "Undersized share of attempts with a buffer" target A`
		retried = `panel 15 "Chains that needed a retry" target A`
		rules   = "rule loader:bpf_"
	)
	wants := []want{
		{p50Need, "cilium-agent", 4096}, {p50Need, "bpftrace", 786432},
		{mean, "cilium-agent", 1.5}, {mean, "bpftrace", 1}, {mean, "oldlib", 1},
		{share, "cilium-agent", 2.0 / 6},
		{rules + "prog_load_attempts:mean5m", "cilium-agent", 1.5}, {rules + "prog_load_attempts:mean5m", "bpftrace", 1},
		{rules + "verifier_log_undersized:ratio_rate5m", "cilium-agent", 2.0 / 6},
	}
	for _, s := range servers {
		for _, w := range wants {
			got, ok := byLoader(s.name, w.where)[w.loader]
			if ok && s.name == "native" && (w.where == share || strings.HasSuffix(w.where, "undersized:ratio_rate5m")) {
				// A float counter over a native histogram's count: here
				// Prometheus 2.42 extrapolates the two rates differently
				// (a counter that starts at zero in the window not back
				// past its first sample, a native histogram by half a
				// scrape interval: it skips the zero clamp), so the share
				// is low by at most a third (two samples, one interval
				// apart) and exact once the series are older than the
				// window.
				if got > w.value*(1+1e-9) || got < w.value*2/3 {
					t.Errorf("%s Prometheus: %s for %s = %v, want %v, or down to 2/3 of it", s.name, w.where, w.loader, got, w.value)
				}
				continue
			}
			if !ok || !near(got, w.value) {
				t.Errorf("%s Prometheus: %s for %s = %v (found %v), want %v", s.name, w.where, w.loader, got, ok, w.value)
			}
		}
		// The verifier's rejections, in the panel and the alert: rejected-x's
		// EACCES loads, and no other loader's.
		for _, where := range []string{`panel 29 "Loads the verifier rejected, by loader" target A`, "rule VerifierRejections"} {
			got := byLoader(s.name, where)
			if v, ok := got["rejected-x"]; !ok || v <= 0 || len(got) != 1 {
				t.Errorf("%s Prometheus: %s = %v, want rejected-x alone, above 0", s.name, where, got)
			}
		}
		// Chains retried, as a share of the chains: 2 of 4 for
		// cilium-agent, none for the others. Each share is one query, so
		// that both rates come from the same evaluation.
		chains := map[string]string{
			"rule":      ruleExpr(t, "loader:bpf_prog_load_chains:rate5m"),
			"dashboard": `sum by (loader) (rate(bpf_prog_load_attempts_count[5m])) or sum by (loader) (histogram_count(rate(bpf_prog_load_attempts[5m])))`,
		}
		for kind, retriedExpr := range map[string]string{"rule": ruleExpr(t, "loader:bpf_prog_load_retried_chains:rate5m"), "dashboard": exprOf(exprs, retried)} {
			q := fmt.Sprintf("(%s) / (%s)", retriedExpr, chains[kind])
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err := s.p.Query(qctx, q)
			cancel()
			if err != nil {
				t.Errorf("%s: %v", s.name, err)
				continue
			}
			got := map[string]float64{}
			for _, r := range res {
				got[r.Labels["loader"]] = r.Value
			}
			for loader, wantShare := range map[string]float64{"cilium-agent": 0.5, "bpftrace": 0, "oldlib": 0} {
				if v, ok := got[loader]; !ok || !near(v, wantShare) {
					t.Errorf("%s Prometheus: %s's chains retried, as a share of its chains (%s): %v (found %v), want %v\n  %s", s.name, loader, kind, v, ok, wantShare, q)
				}
			}
		}
	}
}

// ruleExpr is the expression of the recording rule record.
func ruleExpr(t *testing.T, record string) string {
	t.Helper()
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Record == record {
				return r.Expr
			}
		}
	}
	t.Fatalf("no recording rule %s", record)
	return ""
}

// exprOf is the substituted PromQL of the expression at where.
func exprOf(exprs []promExpr, where string) string {
	for _, e := range exprs {
		if e.where == where {
			return e.promq
		}
	}
	return "absent_no_such_expression"
}

// startNativePrometheus is backends.StartPrometheus with native histograms
// enabled: the server scrapes the protobuf format and stores a histogram
// with native buckets as one native series, without _bucket, _count and
// _sum series.
func startNativePrometheus(t *testing.T, targets ...string) *backends.Prometheus {
	t.Helper()
	bin, err := backends.PrometheusBinary()
	if err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	p, err := backends.LaunchPrometheus(bin, backends.PrometheusOptions{Dir: t.TempDir(), Config: backends.PrometheusConfig(targets...),
		Flags: []string{"--enable-feature=native-histograms"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	return p
}
