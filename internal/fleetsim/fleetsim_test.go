package fleetsim

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/verifierlog/exporter/fleet"
	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/sizing"
)

// fleetNodes is the fleet's size: $VERIFIERLOG_FLEET_NODES, default 1000.
func fleetNodes(t *testing.T) int {
	s := os.Getenv("VERIFIERLOG_FLEET_NODES")
	if s == "" {
		return 1000
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 40 {
		t.Fatalf("VERIFIERLOG_FLEET_NODES=%q: want a number of nodes >= 40 (every role needs a node)", s)
	}
	return n
}

// fleetScrape is the scrape interval: $VERIFIERLOG_FLEET_SCRAPE (a Go
// duration), default 5s: 1,000 targets every 2s on two cores shared with
// other tests had scrapes time out.
func fleetScrape(t *testing.T) time.Duration {
	s := os.Getenv("VERIFIERLOG_FLEET_SCRAPE")
	if s == "" {
		return 5 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second {
		t.Fatalf("VERIFIERLOG_FLEET_SCRAPE=%q: want a duration >= 1s", s)
	}
	return d
}

// TestFleetReportMatchesTruth runs a simulated fleet in real time, scraped
// by a classic Prometheus (text scrape, classic buckets) and a native one
// (--enable-feature=native-histograms: protobuf scrape, native buckets),
// and checks that fleet.Query's report from each equals what the plan
// did: exact counts across exporter restarts, nodes that joined within the
// window (with loads before their first scrape) and nodes that left. It
// logs the query times and each server's memory and series, the figures of
// BENCHMARKS.md's "Fleet".
func TestFleetReportMatchesTruth(t *testing.T) {
	bin, err := backends.PrometheusBinary()
	if err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	n, scrape := fleetNodes(t), fleetScrape(t)
	// The hold must outlast a joining node's discovery (file_sd, then up
	// to 5 s until the scrape manager hears of it) and its first scrape.
	// Under load a target may miss a few scrapes, and a joiner's
	// discovery take longer: the hold is well above both.
	hold := 10*time.Second + 6*scrape
	plan := NewPlan(n, NewTimeline(scrape, hold), 1)
	if b := plan.RoundingBound(); b >= 0.45 {
		t.Fatalf("the plan's series may be off by %.2f after increase()'s extrapolation, too close to 0.5 for round(): fewer loads per node or a shorter scrape interval", b)
	}
	truth := plan.Truth()
	checkPlanCoversEveryCase(t, plan, truth)

	dir := t.TempDir()
	rules, rulesPath := shortenedRules(t, dir)
	f, err := NewFleet(plan, hold, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.StartInitial(); err != nil {
		t.Fatal(err)
	}
	initial := f.Present()

	// The window starts before the servers do, so that each series'
	// first sample (zero, the hold) lies in it.
	windowStart := time.Now().Add(-time.Second)
	servers := make([]*Prometheus, 2)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, native := range []bool{false, true} {
		wg.Go(func() {
			name := map[bool]string{false: "classic", true: "native"}[native]
			servers[i], errs[i] = StartPrometheus(bin, name, filepath.Join(dir, name), f.SDPath(), scrape, native, "")
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(servers[i].Stop)
	}
	apis := make([]v1.API, len(servers))
	for i, p := range servers {
		c, err := api.NewClient(api.Config{Address: p.URL})
		if err != nil {
			t.Fatal(err)
		}
		apis[i] = v1.NewAPI(c)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range servers {
				t.Logf("%s prometheus log (tail):\n%s", p.Name, p.LogTail(3000))
			}
		}
	})

	// Boot once every initial target has been scraped by both servers.
	for i, a := range apis {
		waitFor(t, a, servers[i].Name, fmt.Sprintf(`count(max_over_time(up{job=%q}[1h]) == 1)`, Job), float64(initial), 60*time.Second+10*scrape)
	}
	boot := time.Now()
	t.Logf("%d nodes (%d initial), scrape interval %v, hold %v; %d initial targets up on both servers %v after their start; boot, then a wave (restarts, joins, loads) at %v, leaves at %v, end at %v after it; plan rounding bound %.2f",
		n, initial, scrape, hold, initial, boot.Sub(windowStart).Round(time.Second), plan.Timeline.Wave, plan.Timeline.Leave, plan.Timeline.End, plan.RoundingBound())
	ctx, cancel := context.WithTimeout(context.Background(), plan.Timeline.End+time.Minute)
	defer cancel()
	if err := f.Run(ctx, boot); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	case <-time.After(time.Until(boot.Add(plan.Timeline.End))):
	}
	// Both servers scrape every target present at the end, and no other.
	for i, a := range apis {
		waitFor(t, a, servers[i].Name, fmt.Sprintf(`count(up{job=%q})`, Job), float64(f.Present()), 30*time.Second)
	}

	// The rules from now on: each evaluation reads every sample of the
	// run (a classic server's 1d and 7d groups some 2 million each), and
	// during the run they took the scrapes' CPU: a classic server missed
	// a restarted node's held zeros. Every window still holds every load.
	rulesFrom := time.Now()
	for _, p := range servers {
		if err := p.LoadRules(rulesPath); err != nil {
			t.Fatal(err)
		}
	}

	eval := time.Now()
	window := eval.Sub(windowStart).Truncate(time.Second) + time.Second
	for i, p := range servers {
		want := fleet.HistogramsClassic
		if p.Native {
			want = fleet.HistogramsNative
		}
		qctx, qcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		start := time.Now()
		rep, err := fleet.Query(qctx, apis[i], fleet.Options{Selector: fmt.Sprintf(`{job=%q}`, Job), Window: window, Time: eval, Histograms: want})
		took := time.Since(start)
		if err != nil {
			qcancel()
			t.Fatalf("%s: fleet.Query: %v", p.Name, err)
		}
		// auto picks the form the server stores.
		auto, err := fleet.Query(qctx, apis[i], fleet.Options{Selector: fmt.Sprintf(`{job=%q}`, Job), Window: window, Time: eval})
		qcancel()
		if err != nil {
			t.Fatalf("%s: fleet.Query (auto): %v", p.Name, err)
		}
		if auto.Histograms != want {
			t.Errorf("%s: auto read %q histograms, want %q", p.Name, auto.Histograms, want)
		}
		if rep.Histograms != want {
			t.Errorf("%s: the report read %q histograms, want %q", p.Name, rep.Histograms, want)
		}
		if !compare(t, p.Name, rep, truth, plan.MaxStretch()) {
			explain(t, apis[i], p.Name, plan, window, eval)
		}
		st, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: fleet report in %v over a %v window; prometheus_tsdb_head_series %.0f, process_resident_memory_bytes %.1f MiB, VmHWM %.1f MiB, CPU %.1f s since its start (%.0f s ago), %.1f s of it in %.0f rule group evaluations",
			p.Name, took.Round(time.Millisecond), window, st.HeadSeries, st.RSSBytes/(1<<20), float64(st.VmHWMBytes)/(1<<20), st.CPUSeconds, time.Since(windowStart).Seconds(), st.RuleSeconds, st.RuleEvals)
	}
	// The recording rules: each window (1d, 7d) holds every load.
	for i, p := range servers {
		checkRecordingRules(t, apis[i], p, rules, truth, plan.MaxStretch(), rulesFrom, rulesFrom.Add(2*ruleEvery))
	}
}

// ruleEvery is the interval of every rule group in the fleet's copy of the
// rules file: the fleet groups run every 5 minutes and every hour, and the
// run lasts a few minutes. The servers load them after the run.
const ruleEvery = 5 * time.Second

// shortenedRules reads the repository's rules file and writes to dir a
// copy whose groups' intervals are ruleEvery, and nothing else changed.
// It returns the copy, parsed, and its path.
func shortenedRules(t *testing.T, dir string) (RuleFile, string) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", RulesPath))
	if err != nil {
		t.Fatal(err)
	}
	orig, err := ParseRules(src)
	if err != nil {
		t.Fatalf("%s: %v", RulesPath, err)
	}
	short, n := ShortenIntervals(src, ruleEvery)
	if err := DiffOnlyIntervals(src, short); err != nil {
		t.Fatalf("the copy of %s differs in more than its intervals: %v", RulesPath, err)
	}
	rules, err := ParseRules(short)
	if err != nil {
		t.Fatalf("the copy of %s: %v", RulesPath, err)
	}
	withInterval := 0
	for i, g := range rules.Groups {
		if orig.Groups[i].Interval != "" {
			withInterval++
			if g.Interval != promDuration(ruleEvery) {
				t.Fatalf("the copy's group %s runs every %q, want %s", g.Name, g.Interval, promDuration(ruleEvery))
			}
		}
	}
	if withInterval != n || n == 0 {
		t.Fatalf("%s: %d groups have an interval, %d interval lines changed", RulesPath, withInterval, n)
	}
	for _, w := range []string{"1d", "7d"} {
		if len(rules.Records("loader:bpf_prog_load_chains:increase"+w)) != 1 {
			t.Fatalf("%s has no rule loader:bpf_prog_load_chains:increase%s", RulesPath, w)
		}
	}
	path := filepath.Join(dir, "verifierlog-rules.yaml")
	if err := os.WriteFile(path, short, 0o644); err != nil {
		t.Fatal(err)
	}
	return rules, path
}

// checkRecordingRules compares p's fleet recording rules, their last
// value recorded since from (the rules' load, after the run: every
// evaluation counts the whole run), once the groups have evaluated at or
// after end, with the truth of the whole run. Counts
// round()ed per series (loads, ENOSPC attempts, unknown needs, classic
// buckets) must be exact, and so must recommended sizes (bucket bounds).
// A native histogram cannot be rounded inside PromQL: its count, and the
// defaults' shares the native arm derives from it, carry increase()'s
// extrapolation, each series' counts stretched by at most maxStretch, so
// they are compared within that (relative for counts, absolute for
// shares). Prometheus 2.42 discards some evaluations of the native
// histogram records (the sum of fractional bucket counts can exceed the
// count by a rounding error, which its TSDB refuses); the rules derived
// from them then have no sample at that evaluation: hence the last value
// since from. A loader that has none of those is logged, not failed, where
// the log shows such discards.
func checkRecordingRules(t *testing.T, a v1.API, p *Prometheus, rules RuleFile, truth Truth, maxStretch float64, from, end time.Time) {
	t.Helper()
	discards := strings.Count(p.LogTail(1<<26), "Rule evaluation result discarded")
	var discarded []string
	// missing fails, or notes a loader without a native-derived series.
	missing := func(native bool, format string, args ...any) {
		discards = strings.Count(p.LogTail(1<<26), "Rule evaluation result discarded")
		if native && p.Native && discards > 0 {
			discarded = append(discarded, fmt.Sprintf(format, args...))
			return
		}
		t.Errorf("%s: "+format, append([]any{p.Name}, args...)...)
	}
	sel := fmt.Sprintf(`{job=%q}`, Job)
	for _, w := range []string{"1d", "7d"} {
		// The group's evaluation: its last rule's oldest latest sample,
		// so that every rule of that evaluation has been recorded.
		var lastRule string
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				if r.Record == "loader:bpf_prog_load_chains:increase"+w {
					lastRule = g.Rules[len(g.Rules)-1].Record
				}
			}
		}
		tsQuery := fmt.Sprintf(`min(timestamp(%s%s))`, lastRule, sel)
		waitFor(t, a, p.Name, fmt.Sprintf(`%s >= bool %d`, tsQuery, end.Unix()+1), 1, 3*ruleEvery+30*time.Second)
		at := time.Now()
		since := model.Duration(at.Sub(from).Truncate(time.Second))
		last := func(promql string) string { return fmt.Sprintf("last_over_time(%s[%s])", promql, since) }

		var lines []string
		fail := func(format string, args ...any) {
			t.Errorf("%s: "+format, append([]any{p.Name}, args...)...)
		}
		// Per loader: rounded counts.
		for _, c := range []struct {
			record string
			want   func(*LoaderTruth) uint64
		}{
			{"loader:bpf_prog_load_chains:increase" + w, func(lt *LoaderTruth) uint64 { return lt.Loads }},
			{"loader:bpf_prog_loads_enospc:increase" + w, func(lt *LoaderTruth) uint64 { return lt.Truncated }},
			{"loader:bpf_verifier_log_unknown_size:increase" + w, func(lt *LoaderTruth) uint64 { return lt.Unknown }},
		} {
			got := byLoader(t, a, p.Name, last(c.record+sel), at)
			var vals []string
			for _, l := range Loaders {
				want := c.want(truth.Loaders[l])
				g, ok := got[l]
				vals = append(vals, fmt.Sprintf("%s %s (want %d)", l, valueString(g, ok), want))
				// A counter that never rose may not exist: no series.
				if (ok && float64(g.Value) != float64(want)) || (!ok && want != 0) {
					fail("%s{loader=%q} = %s, want %d", c.record, l, valueString(g, ok), want)
				}
			}
			if len(got) > len(Loaders) {
				fail("%s: %d series, want at most one per loader", c.record, len(got))
			}
			lines = append(lines, c.record+": "+strings.Join(vals, ", "))
		}
		// The need histogram, classic (exact, cumulative by le) or native
		// (its count within the extrapolation).
		bucketRecord := "loader:bpf_verifier_log_required_bytes_bucket:increase" + w
		nativeRecord := "loader:bpf_verifier_log_required_bytes:increase" + w
		buckets := query(t, a, p.Name, last(bucketRecord+sel), at)
		// (last_over_time() does not take native histograms in 2.42.)
		hists := query(t, a, p.Name, nativeRecord+sel, at)
		if p.Native {
			if len(buckets) > 0 {
				fail("%s: %d series on a native server, want none", bucketRecord, len(buckets))
			}
			var vals []string
			for _, s := range hists {
				lt := truth.Loaders[string(s.Metric["loader"])]
				if s.Histogram == nil || lt == nil {
					fail("%s: unexpected %v", nativeRecord, s)
					continue
				}
				got, want := float64(s.Histogram.Count), float64(lt.NeedsKnown)
				vals = append(vals, fmt.Sprintf("%s count %.3f (want %d)", s.Metric["loader"], got, lt.NeedsKnown))
				if got < want-1e-9 || got > want*(1+maxStretch) {
					fail("%s{loader=%q}: count %v, want %v within +%.1f%%", nativeRecord, s.Metric["loader"], got, want, 100*maxStretch)
				}
			}
			if len(hists) != len(Loaders) {
				missing(true, "%s: %d series, want %d", nativeRecord, len(hists), len(Loaders))
			}
			lines = append(lines, nativeRecord+": "+strings.Join(vals, ", "))
		} else {
			if len(hists) > 0 {
				fail("%s: %d series on a classic server, want none", nativeRecord, len(hists))
			}
			var wrong []string
			perLoader := map[string]int{}
			for _, s := range buckets {
				l := string(s.Metric["loader"])
				lt := truth.Loaders[l]
				if lt == nil {
					fail("%s: unexpected %v", bucketRecord, s)
					continue
				}
				perLoader[l]++
				want := lt.NeedsKnown
				if le := string(s.Metric["le"]); le != "+Inf" {
					b, err := strconv.ParseFloat(le, 64)
					if err != nil {
						fail("%s: le %q: %v", bucketRecord, le, err)
						continue
					}
					want = lt.NeedsAtMost(uint64(b))
				}
				if float64(s.Value) != float64(want) {
					wrong = append(wrong, fmt.Sprintf("%s le=%s: %v, want %d", l, s.Metric["le"], s.Value, want))
				}
			}
			if len(wrong) > 0 {
				fail("%s:\n  %s", bucketRecord, strings.Join(wrong, "\n  "))
			}
			if len(perLoader) != len(Loaders) {
				fail("%s: buckets for %d loaders, want %d", bucketRecord, len(perLoader), len(Loaders))
			}
			lines = append(lines, fmt.Sprintf("%s: %d series, %d not the truth", bucketRecord, len(buckets), len(wrong)))
		}
		// Recommended sizes: bucket bounds, exact from native histograms
		// too unless a quantile's rank falls within the extrapolation of
		// a bucket's edge (the plan's needs keep it away).
		recRecord := "loader:bpf_verifier_log_required_bytes:recommended" + w
		for _, c := range sizing.Coverages {
			got := byLoader(t, a, p.Name, last(fmt.Sprintf(`%s{job=%q,coverage=%q}`, recRecord, Job, c.Label)), at)
			var vals []string
			for _, l := range Loaders {
				want := truth.Loaders[l].Quantile(c.Fraction)
				g, ok := got[l]
				vals = append(vals, fmt.Sprintf("%s %s (want %d)", l, valueString(g, ok), want))
				if !ok {
					missing(true, "%s{coverage=%q,loader=%q}: no series", recRecord, c.Label, l)
				} else if float64(g.Value) != float64(want) {
					fail("%s{coverage=%q,loader=%q} = %s, want %d", recRecord, c.Label, l, valueString(g, ok), want)
				}
			}
			lines = append(lines, fmt.Sprintf("%s{coverage=%q}: %s", recRecord, c.Label, strings.Join(vals, ", ")))
		}
		// The defaults' shares (1d only): exact where the default is a
		// bucket bound, else the share above the bound the rule names,
		// at least the share above the default.
		ratioRecord := "loader:bpf_verifier_log_required_bytes:above_default_ratio" + w
		ratioRules := rules.Records(ratioRecord)
		if w == "1d" && len(ratioRules) != len(sizing.WellKnownDefaults) {
			fail("%d rules %s, want one per well-known default (%d)", len(ratioRules), ratioRecord, len(sizing.WellKnownDefaults))
		}
		tol := 1e-9
		if p.Native {
			tol = maxStretch
		}
		for _, r := range ratioRules {
			name, share := r.Labels["default"], r.Labels["share"]
			size, err := strconv.ParseUint(r.Labels["default_bytes"], 10, 32)
			if err != nil || !slices.Contains(sizing.WellKnownDefaults, sizing.Default{Name: name, Bytes: uint32(size)}) {
				fail("%s{default=%q,default_bytes=%q}: not a well-known default (%v)", ratioRecord, name, r.Labels["default_bytes"], err)
				continue
			}
			bound, err := r.DefaultBound()
			if err != nil {
				fail("%s{default=%q}: %v", ratioRecord, name, err)
				continue
			}
			exact := share == "exact"
			if exact != (bound == size) || (share != "exact" && share != "at_most") || bound > size {
				fail("%s{default=%q}: share %q with the bound %d for the default %d", ratioRecord, name, share, bound, size)
			}
			got := byLoader(t, a, p.Name, last(fmt.Sprintf(`%s{job=%q,default=%q}`, ratioRecord, Job, name)), at)
			var vals []string
			for _, l := range Loaders {
				lt := truth.Loaders[l]
				want, above := lt.TruncatedFraction(uint32(bound)), lt.TruncatedFraction(uint32(size))
				g, ok := got[l]
				vals = append(vals, fmt.Sprintf("%s %s (want %.6g)", l, valueString(g, ok), want))
				switch {
				case !ok:
					missing(true, "%s{default=%q,loader=%q}: no series", ratioRecord, name, l)
				case math.Abs(float64(g.Value)-want) > tol:
					fail("%s{default=%q,loader=%q} = %s, want the share above %d, %v (within %g)", ratioRecord, name, l, valueString(g, ok), bound, want, tol)
				case float64(g.Value) < above-tol:
					fail("%s{default=%q,loader=%q} = %v, below the share above the default, %v", ratioRecord, name, l, g.Value, above)
				}
			}
			lines = append(lines, fmt.Sprintf("%s{default=%q,share=%q}: %s", ratioRecord, name, share, strings.Join(vals, ", ")))
		}
		t.Logf("%s: the %s rules, their last values in the %v since they were loaded:\n  %s", p.Name, w, since, strings.Join(lines, "\n  "))
	}
	if len(discarded) > 0 || discards > 0 {
		t.Logf("%s: Prometheus discarded %d rule results (the native records' rounding, above); so not checked:\n  %s", p.Name, discards, strings.Join(discarded, "\n  "))
	}
}

// query runs promql at ts and returns its vector.
func query(t *testing.T, a v1.API, name, promql string, ts time.Time) model.Vector {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, _, _, err := a.Query(ctx, promql, ts)
	if err != nil {
		t.Fatalf("%s: %s: %v", name, promql, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		t.Fatalf("%s: %s: %s, want a vector", name, promql, v.Type())
	}
	return vec
}

// byLoader runs promql at ts and returns its samples by loader, failing
// on two samples for one loader.
func byLoader(t *testing.T, a v1.API, name, promql string, ts time.Time) map[string]*model.Sample {
	t.Helper()
	out := map[string]*model.Sample{}
	for _, s := range query(t, a, name, promql, ts) {
		l := string(s.Metric["loader"])
		if out[l] != nil || s.Metric["command"] != "BPF_PROG_LOAD" {
			t.Errorf("%s: %s: unexpected %v", name, promql, s)
		}
		out[l] = s
	}
	return out
}

func valueString(s *model.Sample, ok bool) string {
	if !ok {
		return "(no series)"
	}
	if s.Histogram != nil {
		return s.Histogram.String()
	}
	return strconv.FormatFloat(float64(s.Value), 'g', 6, 64)
}

// checkPlanCoversEveryCase: the plan has restarts, joins, leaves,
// truncations, measured and unknown needs, so the comparison covers them.
func checkPlanCoversEveryCase(t *testing.T, p Plan, truth Truth) {
	t.Helper()
	var restarts, joins, leaves int
	for _, n := range p.Nodes {
		if n.Join > 0 {
			joins++
		}
		if n.Leave > 0 {
			leaves++
		}
		for _, s := range n.Steps {
			if s.Restart {
				restarts++
			}
		}
	}
	var truncated, unknown uint64
	for _, lt := range truth.Loaders {
		truncated += lt.Truncated
		unknown += lt.Unknown
	}
	if restarts == 0 || joins == 0 || leaves == 0 || truncated == 0 || unknown == 0 || len(truth.Loaders) != len(Loaders) {
		t.Fatalf("the plan misses a case: %d restarts, %d joins, %d leaves, %d truncations, %d unknown needs, %d loaders", restarts, joins, leaves, truncated, unknown, len(truth.Loaders))
	}
}

// waitFor polls promql until it returns want.
func waitFor(t *testing.T, a v1.API, name, promql string, want float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v, _, _, err := a.Query(ctx, promql, time.Now())
		cancel()
		if err != nil {
			last = err.Error()
		} else if vec, ok := v.(model.Vector); ok && len(vec) == 1 {
			if float64(vec[0].Value) == want {
				return
			}
			last = vec[0].Value.String()
		} else {
			last = v.String()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s: not %v within %v; last: %s", name, promql, want, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// compare checks the report against the truth. Counts and bucket bounds
// must be equal; a default's truncated fraction equal where no need lies
// in the bucket it is strictly inside, within its bounds elsewhere; the
// mean waste within its bucket bounds, and, from the histogram sum (which
// increase() extrapolates and round() cannot mend), within maxStretch of
// the exact mean need.
func compare(t *testing.T, name string, rep fleet.Report, truth Truth, maxStretch float64) bool {
	t.Helper()
	ok := true
	if rep.Nodes != truth.Nodes {
		t.Errorf("%s: %d nodes, want %d", name, rep.Nodes, truth.Nodes)
	}
	if len(rep.Loaders) != len(truth.Loaders) {
		t.Errorf("%s: %d loaders, want %d", name, len(rep.Loaders), len(truth.Loaders))
	}
	for _, r := range rep.Loaders {
		lt := truth.Loaders[r.Loader]
		if r.Command != "BPF_PROG_LOAD" || lt == nil {
			t.Errorf("%s: unexpected loader %s/%s", name, r.Command, r.Loader)
			continue
		}
		var diffs []string
		check := func(what string, got, want any) {
			if fmt.Sprint(got) != fmt.Sprint(want) {
				diffs = append(diffs, fmt.Sprintf("%s %v, want %v", what, got, want))
			}
		}
		check("loads", r.Loads, lt.Loads)
		check("needs_known", r.NeedsKnown, lt.NeedsKnown)
		check("truncated", r.Truncated, lt.Truncated)
		check("unknown_needs", r.UnknownNeeds, lt.Unknown)
		check("need_p50", r.NeedP50Bytes, lt.Quantile(0.5))
		check("need_p99", r.NeedP99Bytes, lt.Quantile(0.99))
		wantRec := map[string]uint64{}
		for _, c := range sizing.Coverages {
			wantRec[c.Label] = lt.Quantile(c.Fraction)
		}
		check("recommended", r.Recommended, wantRec)
		above, atMost := lt.MaxNeedBucket()
		check("need_max", [2]uint64{r.NeedMaxAboveBytes, r.NeedMaxAtMostBytes}, [2]uint64{above, atMost})
		above, atMost = lt.TypicalBufferBucket()
		check("typical_buffer", [2]uint64{r.TypicalBufferAboveBytes, r.TypicalBufferAtMostBytes}, [2]uint64{above, atMost})
		check("verdict", r.Verdict, verdict(wantRec["1"], atMost, lt.Truncated))
		if len(r.Defaults) != len(sizing.WellKnownDefaults) {
			diffs = append(diffs, fmt.Sprintf("%d defaults, want %d", len(r.Defaults), len(sizing.WellKnownDefaults)))
		}
		for _, d := range r.Defaults {
			frac := lt.TruncatedFraction(d.Bytes)
			switch {
			case !lt.Straddles(d.Bytes) && (d.TruncatedFraction == nil || *d.TruncatedFraction != frac):
				diffs = append(diffs, fmt.Sprintf("default %s: truncated fraction %v, want exactly %v", d.Name, ptr(d.TruncatedFraction), frac))
			case frac < d.TruncatedAtLeast || frac > d.TruncatedAtMost:
				diffs = append(diffs, fmt.Sprintf("default %s: truncated fraction %v outside [%v, %v]", d.Name, frac, d.TruncatedAtLeast, d.TruncatedAtMost))
			}
			w, held := lt.AvgWaste(d.Bytes)
			if !held {
				continue
			}
			if w < d.AvgWasteAtLeast*(1-1e-9) || w > d.AvgWasteAtMost*(1+1e-9) {
				diffs = append(diffs, fmt.Sprintf("default %s: mean waste %.0f outside [%.0f, %.0f]", d.Name, w, d.AvgWasteAtLeast, d.AvgWasteAtMost))
			}
			if d.AvgWasteBytes != nil {
				// waste = size - mean need: compare the mean needs.
				mean := float64(d.Bytes) - w
				got := float64(d.Bytes) - *d.AvgWasteBytes
				if math.Abs(got-mean) > maxStretch*mean {
					diffs = append(diffs, fmt.Sprintf("default %s: mean need from the sum %.0f, want %.0f within %.1f%%", d.Name, got, mean, 100*maxStretch))
				}
			}
		}
		if len(diffs) > 0 {
			ok = false
			t.Errorf("%s: loader %s:\n  %s", name, r.Loader, strings.Join(diffs, "\n  "))
		}
	}
	return ok
}

// explain logs, after a mismatch, which nodes' loads Prometheus counts
// differently from the plan, by role, with the samples of a few of them.
func explain(t *testing.T, a v1.API, name string, plan Plan, window time.Duration, eval time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sel := fmt.Sprintf(`{job=%q,loader=%q}`, Job, LoaderLibbpf)
	q := fmt.Sprintf(`sum by (instance) (round(increase(bpf_prog_loads_total%s[%s])))`, sel, model.Duration(window))
	v, _, _, err := a.Query(ctx, q, eval)
	if err != nil {
		t.Logf("%s: %s: %v", name, q, err)
		return
	}
	got := map[string]float64{}
	for _, s := range v.(model.Vector) {
		got[string(s.Metric["instance"])] = float64(s.Value)
	}
	roles := map[string]int{}
	var examples []string
	for _, n := range plan.Nodes {
		want := 0
		for _, s := range n.Steps {
			for _, l := range s.Loads {
				if l.Loader == LoaderLibbpf {
					want += len(l.Buffers)
				}
			}
		}
		inst := fmt.Sprintf("node-%d", n.ID)
		if got[inst] == float64(want) {
			continue
		}
		role := fmt.Sprintf("join=%v leave=%v steps=%d restart=%v", n.Join > 0, n.Leave > 0, len(n.Steps), len(n.Steps) > 1 && n.Steps[1].Restart)
		roles[role]++
		if len(examples) < 3 {
			examples = append(examples, fmt.Sprintf("%s (%s): %v, want %d", inst, role, got[inst], want))
			r, _, _, err := a.Query(ctx, fmt.Sprintf(`bpf_prog_loads_total{job=%q,instance=%q,loader=%q}[%s]`, Job, inst, LoaderLibbpf, model.Duration(window)), eval)
			if err == nil {
				examples = append(examples, r.String())
			}
		}
	}
	t.Logf("%s: libbpf-agent attempts per node differ from the plan on: %v\n%s", name, roles, strings.Join(examples, "\n"))
}

func ptr(f *float64) string {
	if f == nil {
		return "nil"
	}
	return strconv.FormatFloat(*f, 'g', -1, 64)
}

// verdict is sizing's rule on the typical buffer's bucket bound: undersized
// with any ENOSPC or a typical buffer below the size that held every need,
// oversized by Nx from 4x, right in between.
func verdict(recommended, typical, truncated uint64) sizing.Verdict {
	switch {
	case truncated > 0 || (recommended > 0 && typical > 0 && typical < recommended):
		return sizing.VerdictUndersized
	case recommended == 0 || typical == 0:
		return sizing.VerdictUnknown
	}
	ratio := float64(typical) / float64(recommended)
	if ratio >= 4 {
		return sizing.Oversized(int64(math.Round(ratio)))
	}
	return sizing.VerdictRight
}
