package fleetsim

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
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
			servers[i], errs[i] = StartPrometheus(bin, name, filepath.Join(dir, name), f.SDPath(), scrape, native)
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
		t.Logf("%s: fleet report in %v over a %v window; prometheus_tsdb_head_series %.0f, process_resident_memory_bytes %.1f MiB, VmHWM %.1f MiB, CPU %.1f s since its start (%.0f s ago)",
			p.Name, took.Round(time.Millisecond), window, st.HeadSeries, st.RSSBytes/(1<<20), float64(st.VmHWMBytes)/(1<<20), st.CPUSeconds, time.Since(windowStart).Seconds())
	}
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
