package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
)

// runningServer is `exporter` (serve) started by a test.
type runningServer struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string
	base   string // scheme://addr
	client *http.Client
	// user and password, if set, are sent as basic auth.
	user, password string
	mu             sync.Mutex
	stderr         strings.Builder
	done           chan struct{}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startServer runs the exporter with args plus a free listen address, in
// env (added to this process's), and waits for /healthz.
func startServer(t *testing.T, bin string, env []string, args ...string) *runningServer {
	t.Helper()
	s := &runningServer{t: t, addr: freeAddr(t), done: make(chan struct{}), client: http.DefaultClient}
	s.base = "http://" + s.addr
	return s.start(bin, env, args...)
}

func (s *runningServer) start(bin string, env []string, args ...string) *runningServer {
	s.t.Helper()
	argv := []string{"--web.listen-address=" + s.addr}
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--metrics.new-series-hold") }) {
		// Without the new-series hold, so that a load shows at once.
		argv = append(argv, "--metrics.new-series-hold=0")
	}
	cmd := exec.Command(bin, append(argv, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return s.startCmd(cmd)
}

// startCmd starts cmd, an exporter serving on s.addr (or a wrapper that
// execs one), and waits for /healthz.
func (s *runningServer) startCmd(cmd *exec.Cmd) *runningServer {
	t := s.t
	t.Helper()
	s.cmd = cmd
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill() })
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.mu.Lock()
			s.stderr.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
		}
	}()
	if err := backends.WaitReady(60*time.Second, s.done, func() error {
		_, err := s.get("/healthz")
		return err
	}); err != nil {
		t.Fatalf("exporter not serving /healthz: %v\n%s", err, s.log())
	}
	return s
}

func (s *runningServer) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

func (s *runningServer) request(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, s.base+path, nil)
	if err != nil {
		return nil, err
	}
	if s.user != "" {
		req.SetBasicAuth(s.user, s.password)
	}
	return s.client.Do(req)
}

func (s *runningServer) get(path string) (string, error) {
	resp, err := s.request(path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

// scrape parses /metrics.
func (s *runningServer) scrape() (string, map[string]*dto.MetricFamily) {
	s.t.Helper()
	body, err := s.get("/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		s.t.Fatalf("parse /metrics: %v", err)
	}
	return body, families
}

// stop sends SIGTERM and checks the exit is clean.
func (s *runningServer) stop() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatal(err)
	}
	<-s.done
	if err := s.cmd.Wait(); err != nil {
		s.t.Fatalf("exporter exited with %v after SIGTERM:\n%s", err, s.log())
	}
}

// series finds the metric of family name whose labels include want.
func series(families map[string]*dto.MetricFamily, name string, want map[string]string) []*dto.Metric {
	f := families[name]
	if f == nil {
		return nil
	}
	var out []*dto.Metric
next:
	for _, m := range f.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// bucket is the cumulative count of h at upper bound le.
func bucket(h *dto.Histogram, le float64) uint64 {
	for _, b := range h.Bucket {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	return ^uint64(0)
}

// thisComm is the loader label of this test binary's loads.
func thisComm(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// ciliumStyleChain loads a program the way cilium/ebpf does: a 64 KiB
// buffer first, then exactly the log_true_size the kernel reported. It
// returns both results.
func ciliumStyleChain(t *testing.T, name string) (first, second loadgen.Result) {
	t.Helper()
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 1500, Name: name, LogLevel: loadgen.LogLevel2, LogSize: 64 << 10}
	first, err := loadgen.LoadProgram(p)
	if err != nil {
		t.Fatal(err)
	}
	if first.Errno != syscall.ENOSPC || first.LogTrueSize <= 64<<10 {
		t.Fatalf("first attempt: %v, true size %d; want ENOSPC above 64 KiB", first.Errno, first.LogTrueSize)
	}
	p.LogSize = first.LogTrueSize
	second, err = loadgen.LoadProgram(p)
	if err != nil {
		t.Fatal(err)
	}
	if !second.OK() || second.LogTrueSize != first.LogTrueSize {
		t.Fatalf("retry with the true size: %v, true size %d", second.Errno, second.LogTrueSize)
	}
	return first, second
}

// TestServeExportsExactCountsForKnownLoads starts the built exporter,
// issues loads whose sizes and outcomes it knows, and checks the scrape:
// counter values and histogram buckets.
func TestServeExportsExactCountsForKnownLoads(t *testing.T) {
	kerneltest.Require(t)
	if !kernelWritesTrueSize() {
		kerneltest.Unavailable(t, "this kernel does not write log_true_size (6.4+), which the expected values assume")
	}
	bin := buildExporter(t)
	s := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))

	first, second := ciliumStyleChain(t, "vlog_srv_chain")
	off, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_srv_off"})
	if err != nil || !off.OK() {
		t.Fatalf("log-off load: %v %v", off.Errno, err)
	}
	// libbpf 1.1 (Debian 12's bpftool): 16 MiB - 1, attr size 128: no
	// log_true_size, so the need is the measured one.
	libbpf, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_srv_libbpf", LogLevel: 1, LogSize: 16<<20 - 1, AttrSize: 128})
	if err != nil || !libbpf.OK() {
		t.Fatalf("libbpf-style load: %v %v", libbpf.Errno, err)
	}
	// A size query with a 128-byte attr: no buffer to measure, no
	// log_true_size written back: the need stays unknown.
	query, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_srv_query", LogLevel: 1, NoLogBuf: true, AttrSize: 128})
	if err != nil || !query.OK() {
		t.Fatalf("size query with attr 128: %v %v", query.Errno, err)
	}

	loader := thisComm(t)
	cmd := map[string]string{"command": "BPF_PROG_LOAD", "loader": loader}
	var families map[string]*dto.MetricFamily
	var body string
	deadline := time.Now().Add(60 * time.Second)
	for {
		body, families = s.scrape()
		if ms := series(families, "bpf_prog_load_attempts", cmd); len(ms) == 1 && ms[0].Histogram.GetSampleCount() >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the four chains did not show in 60 s:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}

	counter := func(name string, labels map[string]string) float64 {
		ms := series(families, name, labels)
		if len(ms) != 1 {
			t.Errorf("%s%v: %d series", name, labels, len(ms))
			return -1
		}
		return ms[0].GetCounter().GetValue()
	}
	hist := func(name string, labels map[string]string) *dto.Histogram {
		ms := series(families, name, labels)
		if len(ms) != 1 {
			t.Fatalf("%s%v: %d series\n%s", name, labels, len(ms), body)
		}
		return ms[0].GetHistogram()
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{"command": "BPF_PROG_LOAD", "loader": loader}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}

	if v := counter("bpf_prog_loads_total", with(map[string]string{"result": "ENOSPC", "log_mode": "rotating", "prog_type": "socket_filter"})); v != 1 {
		t.Errorf("ENOSPC loads %v, want 1", v)
	}
	if v := counter("bpf_prog_loads_total", with(map[string]string{"result": "ok", "log_mode": "rotating", "prog_type": "socket_filter"})); v != 2 {
		t.Errorf("ok rotating loads %v, want 2 (the retry and the libbpf-style load)", v)
	}
	if v := counter("bpf_prog_loads_total", with(map[string]string{"result": "ok", "log_mode": "off"})); v != 1 {
		t.Errorf("log-off loads %v, want 1", v)
	}
	if v := counter("bpf_verifier_log_undersized_total", cmd); v != 1 {
		t.Errorf("undersized %v, want 1", v)
	}
	if v := counter("bpf_verifier_log_unknown_size_total", cmd); v != 1 {
		t.Errorf("unknown size %v, want 1 (the attr-128 size query)", v)
	}
	if v := counter("bpf_prog_loads_total", with(map[string]string{"result": "ok", "log_mode": "query"})); v != 1 {
		t.Errorf("query loads %v, want 1", v)
	}

	need := float64(first.LogTrueSize)
	buf := hist("bpf_verifier_log_buffer_bytes", cmd)
	if buf.GetSampleCount() != 3 || buf.GetSampleSum() != 64<<10+need+16<<20-1 {
		t.Errorf("buffer bytes count %d sum %v", buf.GetSampleCount(), buf.GetSampleSum())
	}
	// 64 KiB sits on a bound; the true size is in the next bucket up.
	if bucket(buf, 65536) != 1 || bucket(buf, 131072) != 2 || bucket(buf, 16<<20) != 3 || bucket(buf, 8<<20) != 2 {
		t.Errorf("buffer buckets: le=64K %d le=128K %d le=8M %d le=16M %d", bucket(buf, 65536), bucket(buf, 131072), bucket(buf, 8<<20), bucket(buf, 16<<20))
	}
	req := hist("bpf_verifier_log_required_bytes", with(map[string]string{"source": "kernel"}))
	if req.GetSampleCount() != 1 || req.GetSampleSum() != need {
		t.Errorf("required bytes count %d sum %v, want one observation of %v", req.GetSampleCount(), req.GetSampleSum(), need)
	}
	measured := hist("bpf_verifier_log_required_bytes", with(map[string]string{"source": "measured"}))
	if want := float64(len(libbpf.Log) + 1); measured.GetSampleCount() != 1 || measured.GetSampleSum() != want {
		t.Errorf("measured required bytes count %d sum %v, want one observation of %v", measured.GetSampleCount(), measured.GetSampleSum(), want)
	}
	short := hist("bpf_verifier_log_shortfall_bytes", cmd)
	if short.GetSampleCount() != 1 || short.GetSampleSum() != need-65536 {
		t.Errorf("shortfall count %d sum %v, want %v", short.GetSampleCount(), short.GetSampleSum(), need-65536)
	}
	// A load the kernel answered EAGAIN was retried (loadgen, like every
	// loader): that attempt joined its chain.
	retries := float64(first.EAGAINRetries + second.EAGAINRetries + off.EAGAINRetries + libbpf.EAGAINRetries + query.EAGAINRetries)
	att := hist("bpf_prog_load_attempts", cmd)
	if att.GetSampleCount() != 4 || att.GetSampleSum() != 5+retries || (retries == 0 && (bucket(att, 1) != 3 || bucket(att, 2) != 4)) {
		t.Errorf("attempts count %d sum %v le1 %d le2 %d: want chains of 2, 1, 1, 1", att.GetSampleCount(), att.GetSampleSum(), bucket(att, 1), bucket(att, 2))
	}
	dur := hist("bpf_prog_load_duration_seconds", cmd)
	if dur.GetSampleCount() != uint64(5+retries) || dur.GetSampleSum() <= 0 {
		t.Errorf("duration count %d sum %v, want every attempt: %v", dur.GetSampleCount(), dur.GetSampleSum(), 5+retries)
	}
	wantRec := uint64(128)
	for wantRec < uint64(need) {
		wantRec <<= 1
	}
	for _, cov := range []string{"0.99", "1"} {
		ms := series(families, "bpf_verifier_log_recommended_buffer_bytes", with(map[string]string{"coverage": cov}))
		if len(ms) != 1 || ms[0].GetGauge().GetValue() != float64(wantRec) {
			t.Errorf("recommended{coverage=%s}: %v, want %d (the power of two above %v)", cov, ms, wantRec, need)
		}
	}
	for _, name := range []string{"verifierlog_exporter_build_info", "verifierlog_exporter_tracer_info"} {
		if ms := series(families, name, nil); len(ms) != 1 || ms[0].GetGauge().GetValue() != 1 {
			t.Errorf("%s: %v", name, ms)
		}
	}
	if ms := series(families, "verifierlog_exporter_events_total", nil); len(ms) != 1 || ms[0].GetCounter().GetValue() < 5 {
		t.Errorf("events_total: %v", ms)
	}
	for _, reason := range []string{"ringbuf_full", "inflight_missing", "inflight_update_failed", "inflight_stale", "kretprobe_missed", "decode_error"} {
		if ms := series(families, "verifierlog_exporter_events_lost_total", map[string]string{"reason": reason}); len(ms) != 1 || ms[0].GetCounter().GetValue() != 0 {
			t.Errorf("events_lost_total{reason=%s}: %v", reason, ms)
		}
	}

	if page, err := s.get("/"); err != nil || !strings.Contains(page, "/metrics") {
		t.Errorf("landing page: %v\n%s", err, page)
	}
	s.stop()
	if !strings.Contains(s.log(), "msg=detached") {
		t.Errorf("no clean detach in the log:\n%s", s.log())
	}

}

// TestEveryScrapeShowsItsLoadsInEventsTotal scrapes while loads run. A
// scrape reads the SDK's observables (events_total) before the per-event
// series (bpf_prog_loads_total); a record handled in between once showed
// four finished chains with events_total 0. Each record counted in
// bpf_prog_loads_total was read first, so in every scrape events_total
// must be at least their sum.
func TestEveryScrapeShowsItsLoadsInEventsTotal(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	s := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	st := startStorm(t, 2, 0, func(name string) ([]loadgen.Result, error) {
		r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: name, Comm: "vlog-consist"})
		return []loadgen.Result{r}, err
	})
	var scrapes, behind int
	for scrapes < 300 {
		_, families := s.scrape()
		scrapes++
		events := sum(families, "verifierlog_exporter_events_total", nil)
		loads := sum(families, "bpf_prog_loads_total", nil)
		if loads > events {
			behind++
			if behind <= 3 {
				t.Errorf("scrape %d: bpf_prog_loads_total adds up to %v, events_total is %v", scrapes, loads, events)
			}
		}
	}
	st.end()
	if st.err != nil {
		t.Fatal(st.err)
	}
	if behind > 0 {
		t.Errorf("%d of %d scrapes showed loads not yet in events_total", behind, scrapes)
	}
	_, families := s.scrape()
	if seen := sum(families, "bpf_prog_loads_total", map[string]string{"loader": "vlog-consist"}); seen == 0 {
		t.Errorf("no load of the storm was counted")
	}
	t.Logf("%d scrapes, %d loads issued", scrapes, len(st.results))
	s.stop()
}

// TestPprofOnlyWithTheFlag: the landing page links /debug/pprof/ only when
// --web.enable-pprof serves it.
func TestPprofOnlyWithTheFlag(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	for _, on := range []bool{false, true} {
		args := []string{"--attach=" + envOr("VERIFIERLOG_TEST_ATTACH", "auto")}
		if on {
			args = append(args, "--web.enable-pprof")
		}
		s := startServer(t, bin, nil, args...)
		page, err := s.get("/")
		if err != nil {
			t.Fatal(err)
		}
		if links := strings.Contains(page, "debug/pprof"); links != on {
			t.Errorf("--web.enable-pprof=%v: the landing page links pprof: %v", on, links)
		}
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/cmdline"} {
			resp, err := s.request(path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want := http.StatusNotFound
			if on {
				want = http.StatusOK
			}
			if resp.StatusCode != want {
				t.Errorf("--web.enable-pprof=%v: GET %s: %s, want %d", on, path, resp.Status, want)
			}
		}
		s.stop()
	}
}

// TestServeCountsLogScanFaults: a load whose log fit but could not be read
// back when it returned is counted in
// verifierlog_exporter_log_scan_faults_total, exactly once.
func TestServeCountsLogScanFaults(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	s := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	r, dropped, err := loadgen.LoadDroppingLogHead(loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 400, Name: "vlog_srv_fault",
		LogLevel: loadgen.LogLevel2, LogSize: 1 << 20})
	if err != nil {
		kerneltest.Unavailable(t, "userfaultfd-held log buffer: "+err.Error())
	}
	if !r.OK() || !dropped {
		t.Fatalf("load %v, first page dropped %v", r.Errno, dropped)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		body, families := s.scrape()
		ms := series(families, "verifierlog_exporter_log_scan_faults_total", nil)
		if len(ms) != 1 {
			t.Fatalf("log_scan_faults_total: %d series\n%s", len(ms), body)
		}
		if v := ms[0].GetCounter().GetValue(); v == 1 {
			break
		} else if v > 1 || time.Now().After(deadline) {
			t.Fatalf("log_scan_faults_total %v, want 1", v)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
}

// TestServeHoldsNewSeriesAtZero: with --metrics.new-series-hold, a loader's
// first load shows on /metrics as a series of value 0 until the hold has
// passed since the exporter recorded it, then as 1; a scraper therefore
// stores the rise from 0 that increase() counts.
func TestServeHoldsNewSeriesAtZero(t *testing.T) {
	kerneltest.Require(t)
	const hold = 10 * time.Second
	bin := buildExporter(t)
	s := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"), "--metrics.new-series-hold="+hold.String())
	loaded := time.Now()
	r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_hold", LogLevel: 1, LogSize: 1 << 16})
	if err != nil || !r.OK() {
		t.Fatalf("load: %v %v", r.Errno, err)
	}
	want := map[string]string{"loader": thisComm(t), "result": "ok"}
	var sawZero bool
	deadline := loaded.Add(hold + 30*time.Second)
	for {
		body, families := s.scrape()
		scraped := time.Now()
		ms := series(families, "bpf_prog_loads_total", want)
		switch {
		case len(ms) > 1:
			t.Fatalf("%d series for %v:\n%s", len(ms), want, body)
		case len(ms) == 0:
			// not read from the ring buffer yet
		case ms[0].GetCounter().GetValue() == 0:
			if scraped.Sub(loaded) > hold+5*time.Second {
				t.Fatalf("still 0 %v after the load, with a hold of %v", scraped.Sub(loaded).Round(time.Millisecond), hold)
			}
			sawZero = true
		case ms[0].GetCounter().GetValue() == 1:
			if !sawZero {
				if scraped.Sub(loaded) < hold {
					t.Fatalf("the series showed 1 %v after the load, within its hold of %v", scraped.Sub(loaded).Round(time.Millisecond), hold)
				}
				t.Fatalf("no scrape saw the held 0: the first came more than %v after the load; the host is too slow for this test", hold)
			}
			if h := series(families, "bpf_verifier_log_buffer_bytes", map[string]string{"loader": thisComm(t)}); len(h) != 1 || h[0].GetHistogram().GetSampleCount() != 1 {
				t.Errorf("the buffer histogram after the hold: %v, want one observation", h)
			}
			return
		default:
			t.Fatalf("value %v, want 0 then 1:\n%s", ms[0].GetCounter().GetValue(), body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the load never showed as 1 (saw 0: %v)", sawZero)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
