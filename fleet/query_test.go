package fleet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/sizing"
)

// load is one logical load on a node: what its series count.
type load struct {
	at      time.Duration // after the data's start
	loader  string
	need    uint64   // 0: unknown
	source  string   // kernel or measured
	buffers []uint64 // log_size of each attempt; all but the last got ENOSPC
}

// node is one exporter's life: its scrapes run from start to end (after the
// data's start), and restarts at each restart, its counters back at 0.
type node struct {
	instance, cluster string
	start, end        time.Duration
	restarts          []time.Duration
	loads             []load
}

const (
	scrape     = 2 * time.Minute
	dataLength = 7*time.Hour + 20*time.Minute
	// The window is the 6h before evalAt; data follows it, which must not
	// count.
	evalAt = 7 * time.Hour
	window = 6 * time.Hour
)

// fleetData is four prod nodes (a steady one, one whose exporter restarts,
// one that joins and one that leaves within the window), one prod node
// gone before the window and one dev node. Loads lie at least 10 minutes
// from the window's edges, so which ones count is plain.
func fleetData() []node {
	h := func(hours float64) time.Duration { return time.Duration(hours * float64(time.Hour)) }
	return []node{
		{instance: "a:19435", cluster: "prod", start: 0, end: dataLength, loads: []load{
			{at: h(0.5), loader: "agent", need: 5000, source: "kernel", buffers: []uint64{16 << 20}}, // before the window
			{at: h(2), loader: "agent", need: 3000, source: "kernel", buffers: []uint64{16 << 20}},
			{at: h(2), loader: "agent", need: 3500, source: "measured", buffers: []uint64{16 << 20}},
			{at: h(3), loader: "cilium", need: 100_000, source: "kernel", buffers: []uint64{64 << 10, 100_000}},
			{at: h(4), loader: "agent", need: 0, buffers: []uint64{16 << 20}},
			{at: h(7.1), loader: "agent", need: 1 << 25, source: "kernel", buffers: []uint64{16 << 20}}, // after evalAt
		}},
		{instance: "b:19435", cluster: "prod", start: 0, end: dataLength, restarts: []time.Duration{h(4)}, loads: []load{
			{at: h(2.5), loader: "agent", need: 4000, source: "kernel", buffers: []uint64{16 << 20}},
			{at: h(2.5), loader: "cilium", need: 200_000, source: "kernel", buffers: []uint64{64 << 10, 200_000}},
			{at: h(4.5), loader: "agent", need: 4000, source: "kernel", buffers: []uint64{16 << 20}},
			{at: h(4.5), loader: "agent", need: 60_000, source: "measured", buffers: []uint64{16 << 20}},
			{at: h(5), loader: "cilium", need: 120_000, source: "kernel", buffers: []uint64{64 << 10, 120_000}},
		}},
		{instance: "c:19435", cluster: "prod", start: h(3), end: dataLength, loads: []load{
			{at: h(3.05), loader: "agent", need: 2500, source: "kernel", buffers: []uint64{16 << 20}},
			{at: h(3.05), loader: "aya", need: 900_000, source: "kernel", buffers: []uint64{10 << 10, 20 << 10, 40 << 10, 80 << 10, 160 << 10, 320 << 10, 640 << 10, 1280 << 10}},
		}},
		{instance: "d:19435", cluster: "prod", start: 0, end: h(5), loads: []load{
			{at: h(1.5), loader: "cilium", need: 300_000, source: "kernel", buffers: []uint64{64 << 10, 300_000}},
			{at: h(3.5), loader: "aya", need: 0, buffers: []uint64{10 << 10}},
		}},
		{instance: "e:19435", cluster: "prod", start: 0, end: h(0.8), loads: []load{
			{at: h(0.3), loader: "agent", need: 7000, source: "kernel", buffers: []uint64{16 << 20}},
		}},
		{instance: "f:19435", cluster: "dev", start: 0, end: dataLength, loads: []load{
			{at: h(2), loader: "agent", need: 1 << 24, source: "kernel", buffers: []uint64{16 << 20}},
		}},
	}
}

// sizeBounds are the exporter's size buckets' le values: 128 B .. 1 GiB.
func sizeBounds() []float64 {
	var b []float64
	for i := range NumClasses - 1 {
		b = append(b, float64(sizing.SizeClassUpper(i)))
	}
	return b
}

var attemptBounds = []float64{1, 2, 3, 4, 5, 8, 16}

// histo is one classic histogram's cumulative state.
type histo struct {
	bounds []float64
	counts []uint64 // per bound, not cumulative
	count  uint64
	sum    float64
}

func (h *histo) observe(v float64) {
	h.count++
	h.sum += v
	for i, b := range h.bounds {
		if v <= b {
			h.counts[i]++
			return
		}
	}
}

// exposition writes the node's series as the exporter's text exposition
// at each scrape, timestamped, in OpenMetrics form for promtool: a
// (command, loader) series appears at the first scrape after its first
// load with value 0 (the new-series hold), and again at 0 after each
// restart.
func (n node) exposition(families map[string]*strings.Builder, base time.Time) {
	type seriesState struct {
		loads, enospc, ok, unknown map[string]uint64 // by loader
		required                   map[[2]string]*histo
		buffer, attempts           map[string]*histo
		shown                      map[string]bool // loader's series exposed (past the hold)
	}
	fresh := func() *seriesState {
		return &seriesState{loads: map[string]uint64{}, enospc: map[string]uint64{}, ok: map[string]uint64{}, unknown: map[string]uint64{},
			required: map[[2]string]*histo{}, buffer: map[string]*histo{}, attempts: map[string]*histo{}, shown: map[string]bool{}}
	}
	st := fresh()
	newHisto := func(bounds []float64) *histo { return &histo{bounds: bounds, counts: make([]uint64, len(bounds))} }
	restarts := append([]time.Duration(nil), n.restarts...)
	next := 0 // next load
	loads := append([]load(nil), n.loads...)
	sort.Slice(loads, func(i, j int) bool { return loads[i].at < loads[j].at })
	lbl := func(loader string, extra ...string) string {
		ls := []string{`cluster="` + n.cluster + `"`, `command="BPF_PROG_LOAD"`, `instance="` + n.instance + `"`, `job="verifierlog"`, `loader="` + loader + `"`}
		return "{" + strings.Join(append(ls, extra...), ",") + "}"
	}
	w := func(family, line string) {
		b := families[family]
		if b == nil {
			b = &strings.Builder{}
			families[family] = b
		}
		b.WriteString(line)
	}
	writeHisto := func(family, labels string, h *histo, held bool, ts string) {
		var cum uint64
		for i, b := range h.bounds {
			if !held {
				cum += h.counts[i]
			}
			w(family, fmt.Sprintf("%s_bucket%s,le=\"%s\"} %d %s\n", family, strings.TrimSuffix(labels, "}"), strconv.FormatFloat(b, 'g', -1, 64), cum, ts))
		}
		count, sum := h.count, h.sum
		if held {
			count, sum = 0, 0
		}
		w(family, fmt.Sprintf("%s_bucket%s,le=\"+Inf\"} %d %s\n", family, strings.TrimSuffix(labels, "}"), count, ts))
		w(family, fmt.Sprintf("%s_count%s %d %s\n", family, labels, count, ts))
		w(family, fmt.Sprintf("%s_sum%s %s %s\n", family, labels, strconv.FormatFloat(sum, 'g', -1, 64), ts))
	}
	for t := n.start; t < n.end; t += scrape {
		if len(restarts) > 0 && t >= restarts[0] {
			restarts = restarts[1:]
			st = fresh()
			continue // down for this scrape
		}
		held := map[string]bool{}
		for ; next < len(loads) && loads[next].at <= t; next++ {
			l := loads[next]
			if _, ok := st.attempts[l.loader]; !ok {
				st.attempts[l.loader] = newHisto(attemptBounds)
				st.buffer[l.loader] = newHisto(sizeBounds())
				held[l.loader] = true
			}
			st.loads[l.loader]++
			st.attempts[l.loader].observe(float64(len(l.buffers)))
			st.enospc[l.loader] += uint64(len(l.buffers) - 1)
			st.ok[l.loader]++
			for _, b := range l.buffers {
				st.buffer[l.loader].observe(float64(b))
			}
			if l.need == 0 {
				st.unknown[l.loader]++
				continue
			}
			k := [2]string{l.loader, l.source}
			if st.required[k] == nil {
				st.required[k] = newHisto(sizeBounds())
				held[l.loader+"\x00"+l.source] = true
			}
			st.required[k].observe(float64(l.need))
		}
		ts := strconv.FormatFloat(float64(base.Add(t).UnixMilli())/1000, 'f', 3, 64)
		w("verifierlog_exporter_build_info", fmt.Sprintf("verifierlog_exporter_build_info{cluster=%q,goversion=\"go\",instance=%q,job=\"verifierlog\",revision=\"r\",version=\"v\"} 1 %s\n", n.cluster, n.instance, ts))
		for loader, h := range st.attempts {
			hold := held[loader]
			v := func(n uint64) uint64 {
				if hold {
					return 0
				}
				return n
			}
			w("bpf_prog_loads", fmt.Sprintf("bpf_prog_loads_total%s %d %s\n", lbl(loader, `log_mode="rotating"`, `prog_type="kprobe"`, `result="ENOSPC"`), v(st.enospc[loader]), ts))
			w("bpf_prog_loads", fmt.Sprintf("bpf_prog_loads_total%s %d %s\n", lbl(loader, `log_mode="rotating"`, `prog_type="kprobe"`, `result="ok"`), v(st.ok[loader]), ts))
			w("bpf_verifier_log_unknown_size", fmt.Sprintf("bpf_verifier_log_unknown_size_total%s %d %s\n", lbl(loader), v(st.unknown[loader]), ts))
			writeHisto("bpf_prog_load_attempts", lbl(loader), h, hold, ts)
			writeHisto("bpf_verifier_log_buffer_bytes", lbl(loader), st.buffer[loader], hold, ts)
		}
		for k, h := range st.required {
			writeHisto("bpf_verifier_log_required_bytes", lbl(k[0], `source="`+k[1]+`"`), h, held[k[0]+"\x00"+k[1]], ts)
		}
	}
}

// want is what the prod nodes' loads within the window add up to,
// computed from the loads themselves.
func want(nodes []node, base, at time.Time) map[string]Counts {
	out := map[string]Counts{}
	for _, n := range nodes {
		if n.cluster != "prod" {
			continue
		}
		for _, l := range n.loads {
			t := base.Add(l.at)
			if !t.After(at.Add(-window)) || t.After(at) || l.at >= n.end {
				continue
			}
			c := out[l.loader]
			c.Command, c.Loader = "BPF_PROG_LOAD", l.loader
			c.Loads++
			c.Truncated += uint64(len(l.buffers) - 1)
			for _, b := range l.buffers {
				c.Buffers[ClassOf(float64(b))]++
			}
			if l.need == 0 {
				c.Unknown++
			} else {
				c.Needs[ClassOf(float64(l.need))]++
				c.NeedSum += float64(l.need)
				c.HasNeedSum = true
			}
			out[l.loader] = c
		}
	}
	return out
}

// backfill writes the nodes' exposition as OpenMetrics and turns it into
// TSDB blocks in a new directory, with promtool.
func backfill(t *testing.T, nodes []node, base time.Time) string {
	t.Helper()
	promtool, err := backends.PromtoolBinary()
	if err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	families := map[string]*strings.Builder{}
	for _, n := range nodes {
		n.exposition(families, base)
	}
	types := map[string]string{"verifierlog_exporter_build_info": "gauge", "bpf_prog_loads": "counter", "bpf_verifier_log_unknown_size": "counter",
		"bpf_prog_load_attempts": "histogram", "bpf_verifier_log_buffer_bytes": "histogram", "bpf_verifier_log_required_bytes": "histogram"}
	var names []string
	for name := range families {
		names = append(names, name)
	}
	sort.Strings(names)
	var om strings.Builder
	for _, name := range names {
		fmt.Fprintf(&om, "# TYPE %s %s\n%s", name, types[name], families[name].String())
	}
	om.WriteString("# EOF\n")
	dir := t.TempDir()
	input := filepath.Join(dir, "fleet.om")
	if err := os.WriteFile(input, []byte(om.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if out, err := exec.Command(promtool, "tsdb", "create-blocks-from", "openmetrics", input, data).CombinedOutput(); err != nil {
		t.Fatalf("promtool tsdb create-blocks-from openmetrics: %v\n%s", err, out)
	}
	return data
}

// startPrometheus serves the TSDB in data with prometheus.yml config and
// flags extra, and returns its URL.
func startPrometheus(t *testing.T, data, yml string, extra ...string) string {
	t.Helper()
	bin, err := backends.PrometheusBinary()
	if err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	config := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(config, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		addr, err := backends.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(t.TempDir(), "prometheus.log")
		logf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, append([]string{"--config.file=" + config, "--storage.tsdb.path=" + data, "--web.listen-address=" + addr,
			"--storage.tsdb.retention.time=100y"}, extra...)...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait(); logf.Close() }()
		url := "http://" + addr
		ready := waitReady(url, exited)
		if ready == nil {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			return url
		}
		_ = cmd.Process.Kill()
		log, _ := os.ReadFile(logPath)
		if attempt == 2 {
			t.Fatalf("prometheus did not start: %v\n%s", ready, log)
		}
	}
}

func waitReady(url string, exited <-chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		client, _ := api.NewClient(api.Config{Address: url})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := v1.NewAPI(client).Buildinfo(ctx)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("not ready within 60s")
}

// TestQueryBackfilledFleet: the report from Prometheus over a backfilled
// fleet is what the loads it was built from add up to, exactly: counts,
// bucket bounds, across an exporter restart, a node that joined, one that
// left, one gone before the window, loads after the evaluation time and
// another cluster's node.
func TestQueryBackfilledFleet(t *testing.T) {
	base := time.Now().Add(-24 * time.Hour).Truncate(time.Hour)
	nodes := fleetData()
	prom := startPrometheus(t, backfill(t, nodes, base), "global:\n  scrape_interval: 1m\n")
	client, err := api.NewClient(api.Config{Address: prom})
	if err != nil {
		t.Fatal(err)
	}
	papi := v1.NewAPI(client)
	at := base.Add(evalAt)
	ctx := context.Background()

	for _, sel := range []string{`{cluster="prod"}`, `cluster="prod"`, ` { cluster=~"pro.*" } `} {
		rep, err := Query(ctx, papi, Options{Selector: sel, Window: window, Time: at})
		if err != nil {
			t.Fatalf("selector %s: %v", sel, err)
		}
		if rep.Nodes != 4 || rep.Histograms != HistogramsClassic || rep.Source != "prometheus" || rep.WindowSeconds != window.Seconds() || !rep.Time.Equal(at) {
			t.Errorf("selector %s: nodes %d histograms %q source %q window %v time %v; want 4 nodes (a, b, c, d), classic, %v, %v",
				sel, rep.Nodes, rep.Histograms, rep.Source, rep.WindowSeconds, rep.Time, window.Seconds(), at)
		}
		wantCounts := want(nodes, base, at)
		var wantLoaders []LoaderReport
		for _, c := range wantCounts {
			wantLoaders = append(wantLoaders, NewLoaderReport(c, sizing.WellKnownDefaults))
		}
		sort.Slice(wantLoaders, func(i, j int) bool {
			if wantLoaders[i].Loads != wantLoaders[j].Loads {
				return wantLoaders[i].Loads > wantLoaders[j].Loads
			}
			return wantLoaders[i].Loader < wantLoaders[j].Loader
		})
		if len(rep.Loaders) != len(wantLoaders) {
			t.Fatalf("selector %s: loaders %+v, want %+v", sel, rep.Loaders, wantLoaders)
		}
		for i, got := range rep.Loaders {
			w := wantLoaders[i]
			// The mean waste from the sum is a float; the rest is exact.
			for d := range got.Defaults {
				g, wd := got.Defaults[d].AvgWasteBytes, w.Defaults[d].AvgWasteBytes
				if (g == nil) != (wd == nil) || (g != nil && math.Abs(*g-*wd) > 1e-6*max(1, math.Abs(*wd))) {
					t.Errorf("%s %s: avg waste %v, want %v", got.Loader, got.Defaults[d].Name, g, wd)
				}
				got.Defaults[d].AvgWasteBytes = wd
			}
			if !reflect.DeepEqual(got, w) {
				t.Errorf("selector %s: loader %s:\n got %+v\nwant %+v", sel, got.Loader, got, w)
			}
		}
	}

	// Spelled out, so that the comparison above is not only the code against itself.
	rep, err := Query(ctx, papi, Options{Selector: `cluster="prod"`, Window: window, Time: at, Histograms: HistogramsClassic})
	if err != nil {
		t.Fatal(err)
	}
	byLoader := map[string]LoaderReport{}
	for _, l := range rep.Loaders {
		byLoader[l.Loader] = l
	}
	// agent: a's 3000, 3500 and an unknown; b's 4000 before its restart,
	// 4000 and 60000 after; c's 2500 (a joined node's first load).
	if a := byLoader["agent"]; a.Loads != 7 || a.NeedsKnown != 6 || a.UnknownNeeds != 1 || a.Truncated != 0 ||
		a.NeedP50Bytes != 4096 || a.NeedP99Bytes != 64<<10 || a.NeedMaxAboveBytes != 32<<10 || a.NeedMaxAtMostBytes != 64<<10 ||
		a.TypicalBufferAtMostBytes != 16<<20 || a.Verdict != sizing.Oversized(256) {
		t.Errorf("agent: %+v", a)
	}
	// cilium: a's 100000, b's 200000 and 120000, and d's 300000 early in
	// the window (1h to 7h), before d left.
	if c := byLoader["cilium"]; c.Loads != 4 || c.Truncated != 4 || c.Recommended["1"] != 512<<10 || c.NeedP50Bytes != 128<<10 || c.Verdict != sizing.VerdictUndersized {
		t.Errorf("cilium: %+v", c)
	}
	// aya: c's 900000 after 7 ENOSPC; d's unknown need before it left.
	if a := byLoader["aya"]; a.Loads != 2 || a.Truncated != 7 || a.UnknownNeeds != 1 || a.Recommended["1"] != 1<<20 || a.TypicalBufferAtMostBytes != 16<<10 {
		t.Errorf("aya: %+v", a)
	}

	// Every node, every cluster: f's 16 MiB need is in; e is still before the window.
	all, err := Query(ctx, papi, Options{Window: window, Time: at})
	if err != nil {
		t.Fatal(err)
	}
	if all.Nodes != 5 || all.Selector != "{}" {
		t.Errorf("without a selector: %d nodes, selector %q; want 5, {}", all.Nodes, all.Selector)
	}
	for _, l := range all.Loaders {
		if l.Loader == "agent" && (l.Loads != 8 || l.NeedMaxAtMostBytes != 16<<20) {
			t.Errorf("agent over every cluster: %+v", l)
		}
	}

	// Errors: a selector Prometheus rejects, one that matches nothing, a
	// window before any data.
	if _, err := Query(ctx, papi, Options{Selector: `{cluster=prod}`, Window: window, Time: at}); err == nil || !strings.Contains(err.Error(), "selector {cluster=prod}") {
		t.Errorf("a bad selector: %v", err)
	}
	if _, err := Query(ctx, papi, Options{Selector: `cluster="staging"`, Window: window, Time: at}); !errors.Is(err, ErrNoSeries) {
		t.Errorf("a selector matching nothing: %v", err)
	}
	if _, err := Query(ctx, papi, Options{Window: time.Hour, Time: base.Add(-2 * time.Hour)}); !errors.Is(err, ErrNoSeries) {
		t.Errorf("a window before the data: %v", err)
	}
}
