package main

// The exporter's life cycle under load: capabilities dropped
// after attach on every thread, SIGTERM in the middle of a load storm, and
// a restart while loads run. Every load carries a unique prog name, so each
// record and span is matched to the one call that caused it.

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

func monoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// Capability bits (linux/capability.h).
const (
	capPerfmon = 38
	capBPF     = 39
)

// threadCaps reads the capability sets and no_new_privs of every thread of
// process pid, by TID.
func threadCaps(t *testing.T, pid int) map[string]map[string]uint64 {
	t.Helper()
	dirs, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	out := map[string]map[string]uint64{}
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread exited
		}
		sets := map[string]uint64{}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok || (!strings.HasPrefix(k, "Cap") && k != "NoNewPrivs") {
				continue
			}
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("%s: %s: %v", f, line, err)
			}
			sets[k] = n
		}
		out[filepath.Base(filepath.Dir(f))] = sets
	}
	return out
}

func wantThreadCaps(t *testing.T, pid int, want uint64, bounding bool) {
	t.Helper()
	for tid, sets := range threadCaps(t, pid) {
		if sets["CapEff"] != want || sets["CapPrm"] != want || sets["CapInh"] != 0 || sets["CapAmb"] != 0 || sets["NoNewPrivs"] != 1 {
			t.Errorf("thread %s: %x, want effective = permitted = %x, no inheritable or ambient, no_new_privs", tid, sets, want)
		}
		if bounding && sets["CapBnd"] != want {
			t.Errorf("thread %s: bounding set %x, want %x", tid, sets["CapBnd"], want)
		}
	}
}

// countLoads waits until /metrics counts n loads from this process's comm.
func (s *runningServer) countLoads(t *testing.T, n float64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, families := s.scrape()
		var got float64
		for _, m := range series(families, "bpf_prog_loads_total", map[string]string{"loader": thisComm(t)}) {
			got += m.GetCounter().GetValue()
		}
		if got == n {
			return
		}
		if got > n || time.Now().After(deadline) {
			t.Fatalf("bpf_prog_loads_total for this loader = %v, want %v\n%s", got, n, s.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestServeDropsCapabilitiesOnEveryThreadAndKeepsWorking(t *testing.T) {
	kerneltest.Require(t)
	if os.Geteuid() != 0 {
		kerneltest.Unavailable(t, "needs root to start with every capability")
	}
	bin := buildExporter(t)
	s := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	progs, err := kerneltest.ProgramIDs(s.cmd.Process.Pid)
	if err != nil || len(progs) == 0 {
		t.Fatalf("no programs held: %v", err)
	}
	wantThreadCaps(t, s.cmd.Process.Pid, 1<<capBPF|1<<capPerfmon, true)
	// At info, the log names what was kept; what was dropped only at debug.
	if line := s.waitLog(`msg="capabilities dropped"`); !strings.Contains(line, "kept=CAP_BPF,CAP_PERFMON") || strings.Contains(line, "CAP_SYS_ADMIN") {
		t.Errorf("the drop's log line at info: %q, want kept=CAP_BPF,CAP_PERFMON and not the dropped list\n%s", line, s.log())
	}
	if strings.Contains(s.log(), "dropped=") {
		t.Errorf("the full list at info level:\n%s", s.log())
	}
	for i := range 3 {
		r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: fmt.Sprintf("vlog_caps%d", i)})
		if err != nil || !r.OK() {
			t.Fatalf("load: %v %v", r.Errno, err)
		}
	}
	s.countLoads(t, 3)
	s.stop()
	if left := kerneltest.ProgramsGone(progs, 10*time.Second); len(left) != 0 {
		t.Errorf("programs %v still loaded: detaching without capabilities failed", left)
	}
}

// waitLog waits until the exporter's stderr, read as it comes, has a line
// with s, and returns it ("" if it exits first, or after hangGuard).
func (s *runningServer) waitLog(sub string) string {
	s.t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		line := logLine(s.log(), sub)
		select {
		case <-s.done:
			return logLine(s.log(), sub)
		default:
		}
		if line != "" || time.Now().After(deadline) {
			return line
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logLine is the first line of log that contains s, or "".
func logLine(log, s string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// TestCapabilityDropListsWhatWasDroppedAtDebug: --log.level=debug adds the
// full list of what was dropped.
func TestCapabilityDropListsWhatWasDroppedAtDebug(t *testing.T) {
	kerneltest.Require(t)
	if os.Geteuid() != 0 {
		kerneltest.Unavailable(t, "needs root to start with every capability")
	}
	bin := buildExporter(t)
	rt := startTrace(t, bin, "--log.level=debug", "trace", "--output", "json", "--attach", envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	rt.stop()
	if line := logLine(rt.log(), "msg=\"capabilities dropped: the full list\""); !strings.Contains(line, "level=DEBUG") || !strings.Contains(line, "CAP_SYS_ADMIN") {
		t.Errorf("no debug line with the dropped capabilities:\n%s", rt.log())
	}
	if line := logLine(rt.log(), `msg="capabilities dropped"`); !strings.Contains(line, "kept=CAP_BPF,CAP_PERFMON") {
		t.Errorf("the drop's info line: %q\n%s", line, rt.log())
	}
}

// TestServeBindsAPrivilegedPortWithoutKeepingNetBindService: serve binds
// its listeners before it attaches, so a port below the unprivileged start
// needs CAP_NET_BIND_SERVICE only then; after the drop it keeps CAP_BPF
// and CAP_PERFMON alone, and serves. --no-drop-capabilities keeps all.
func TestServeBindsAPrivilegedPortWithoutKeepingNetBindService(t *testing.T) {
	kerneltest.Require(t)
	if os.Geteuid() != 0 {
		kerneltest.Unavailable(t, "needs root to start with every capability")
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		t.Fatal(err)
	}
	start, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	addr := ""
	for port := start - 1; port > 0 && port > start-200; port-- {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			addr = l.Addr().String()
			l.Close()
			break
		}
	}
	if addr == "" {
		t.Fatalf("no free port below %d", start)
	}
	bin := buildExporter(t)
	s := &runningServer{t: t, addr: addr, base: "http://" + addr, done: make(chan struct{}), client: http.DefaultClient}
	s.start(bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	wantThreadCaps(t, s.cmd.Process.Pid, 1<<capBPF|1<<capPerfmon, true)
	if _, err := s.get("/metrics"); err != nil {
		t.Errorf("serving on %s after the drop: %v", addr, err)
	}
	s.stop()

	keep := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"), "--no-drop-capabilities")
	mine := threadCaps(t, os.Getpid())
	for tid, sets := range threadCaps(t, keep.cmd.Process.Pid) {
		for _, own := range mine {
			if sets["CapEff"] != own["CapEff"] {
				t.Errorf("--no-drop-capabilities: thread %s has %x, the test %x", tid, sets["CapEff"], own["CapEff"])
			}
			break
		}
	}
	keep.stop()
}

// storm issues loads from threads goroutines until stopped; every call's
// prog name is unique, and its result is kept under that name.
type storm struct {
	stop    atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	results map[string][]loadgen.Result // by prog name: one entry, or two for a chain
	err     error
}

// startStorm runs threads goroutines; each iteration calls issue with a
// fresh name and stores its results.
func startStorm(t *testing.T, threads int, pause time.Duration, issue func(name string) ([]loadgen.Result, error)) *storm {
	s := &storm{results: map[string][]loadgen.Result{}}
	for g := range threads {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for seq := 0; !s.stop.Load(); seq++ {
				name := fmt.Sprintf("vst%d_%d", g, seq)
				rs, err := issue(name)
				s.mu.Lock()
				if err != nil && s.err == nil {
					s.err = err
				}
				s.results[name] = rs
				s.mu.Unlock()
				time.Sleep(pause)
			}
		}()
	}
	t.Cleanup(s.end)
	return s
}

func (s *storm) end() {
	s.stop.Store(true)
	s.wg.Wait()
}

func TestSIGTERMDuringAStormDetachesAndFlushesEveryChain(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	col := backends.StartCollector(t)
	s := startServer(t, bin, spansTo(col, "OTEL_BSP_MAX_QUEUE_SIZE=65536"), "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	progs, err := kerneltest.ProgramIDs(s.cmd.Process.Pid)
	if err != nil || len(progs) == 0 {
		t.Fatalf("no programs held: %v", err)
	}
	// cilium/ebpf-style chains: ENOSPC with a 256-byte log, then a retry
	// that fits.
	st := startStorm(t, 2, time.Millisecond, func(name string) ([]loadgen.Result, error) {
		p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: name, LogLevel: loadgen.LogLevel2, LogSize: 256}
		first, err := loadgen.LoadProgram(p)
		if err != nil || first.Errno != syscall.ENOSPC {
			return []loadgen.Result{first}, fmt.Errorf("first attempt: %v %v", first.Errno, err)
		}
		p.LogSize = 1 << 20
		second, err := loadgen.LoadProgram(p)
		return []loadgen.Result{first, second}, err
	})
	time.Sleep(500 * time.Millisecond) // let chains run; not a timing assertion
	signalled := monoNow()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-s.done
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("exporter exited with %v after SIGTERM mid-storm:\n%s", err, s.log())
	}
	st.end()
	if st.err != nil {
		t.Fatal(st.err)
	}
	if left := kerneltest.ProgramsGone(progs, 10*time.Second); len(left) != 0 {
		t.Errorf("programs %v still loaded after the exporter exited", left)
	}
	// Loads that begin while the hooks detach are unwatched, not lost.
	if !strings.Contains(s.log(), "msg=detached") {
		t.Errorf("the exporter reports lost load attempts:\n%s", s.log())
	}

	// Chains whose first attempt ended before the signal must arrive, each
	// as one bpf.load span with all its attempts as children.
	var must []string
	for name, rs := range st.results {
		if len(rs) > 0 && rs[0].EndNs < signalled && rs[0].EAGAINRetries == 0 {
			must = append(must, name)
		}
	}
	if len(must) == 0 {
		t.Fatal("no chain began before the signal")
	}
	// The Collector writes batches as they come: wait for every chain that
	// must be there and for the parent of every attempt span seen.
	spans := col.WaitForSpans(t, func(sp []backends.Span) bool {
		have := map[string]bool{}
		ids := map[string]bool{}
		for _, s := range sp {
			if s.Name == "bpf.load" {
				have[fmt.Sprint(s.Attributes["bpf.prog.name"])] = true
				ids[s.SpanID] = true
			}
		}
		for _, n := range must {
			if !have[n] {
				return false
			}
		}
		for _, s := range sp {
			if name, _ := s.Attributes["bpf.prog.name"].(string); s.Name != "bpf.load" && strings.HasPrefix(name, "vst") && !ids[s.ParentSpanID] {
				return false
			}
		}
		return true
	}, 60*time.Second)
	chains := map[string]backends.Span{}
	children := map[string][]backends.Span{} // by parent span ID
	for _, sp := range spans {
		name, _ := sp.Attributes["bpf.prog.name"].(string)
		if !strings.HasPrefix(name, "vst") {
			continue
		}
		if _, issued := st.results[name]; !issued {
			t.Errorf("span %q for prog name %q, which no load had", sp.Name, name)
			continue
		}
		if sp.Name == "bpf.load" {
			if _, dup := chains[name]; dup {
				t.Errorf("two bpf.load spans for %q", name)
			}
			chains[name] = sp
		} else {
			children[sp.ParentSpanID] = append(children[sp.ParentSpanID], sp)
		}
	}
	byID := map[string]bool{}
	for name, c := range chains {
		byID[c.SpanID] = true
		kids := children[c.SpanID]
		attempts, _ := c.Attributes["bpf.load.attempts"].(int64)
		rs := st.results[name]
		calls := int64(len(rs)) // the kernel's EAGAIN, which loadgen retries, is an attempt too
		for _, r := range rs {
			calls += int64(r.EAGAINRetries)
		}
		if int(attempts) != len(kids) || attempts < 1 || attempts > calls {
			t.Errorf("chain %q: bpf.load.attempts %d, %d attempt spans, %d calls", name, attempts, len(kids), calls)
		}
		if len(rs) == 2 && rs[1].EndNs < signalled && attempts != calls {
			t.Errorf("chain %q: every attempt ended before the signal, span has %d of %d", name, attempts, calls)
		}
	}
	for parent, kids := range children {
		if !byID[parent] {
			t.Errorf("%d attempt spans (%q) whose bpf.load span never arrived: a chain was not flushed\n%s", len(kids), kids[0].Attributes["bpf.prog.name"], s.log())
		}
	}
	t.Logf("%d chains issued, %d began before SIGTERM, %d bpf.load spans", len(st.results), len(must), len(chains))
}

// traceRun is one `exporter trace --output json` instance of a restart.
type traceRun struct {
	attached, stopping uint64 // monotonic: after it attached, before it was told to stop
	records            []tracer.Record
}

func runTraceWhile(t *testing.T, bin string, d time.Duration) traceRun {
	t.Helper()
	rt := startTrace(t, bin, "trace", "--output", "json", "--attach", envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	run := traceRun{attached: monoNow()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for r := range rt.records {
			run.records = append(run.records, r)
		}
	}()
	time.Sleep(d)
	run.stopping = monoNow()
	if err := rt.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	<-done
	<-rt.stderrDone
	if err := rt.cmd.Wait(); err != nil {
		t.Fatalf("exporter exited with %v:\n%s", err, rt.log())
	}
	return run
}

func TestRestartWhileLoadsRunHasNoDuplicateOrPhantomRecord(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	st := startStorm(t, 2, 0, func(name string) ([]loadgen.Result, error) {
		r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: name})
		return []loadgen.Result{r}, err
	})
	var runs []traceRun
	for range 3 { // stop and start again, back to back, while the storm runs
		runs = append(runs, runTraceWhile(t, bin, 300*time.Millisecond))
	}
	st.end()
	if st.err != nil {
		t.Fatal(st.err)
	}

	seenIn := map[string]int{} // prog name -> index of the run that recorded it
	for i, run := range runs {
		for _, rec := range run.records {
			if rec.PID != uint32(os.Getpid()) || !strings.HasPrefix(rec.ProgName, "vst") {
				continue
			}
			rs, issued := st.results[rec.ProgName]
			if !issued {
				t.Errorf("run %d: phantom record %q", i, rec.ProgName)
				continue
			}
			r := rs[0]
			if rec.TID != uint32(r.TID) || (rec.Ret != int64(r.Ret) && !(r.EAGAINRetries > 0 && rec.Errno == "EAGAIN")) {
				t.Errorf("run %d: record %q tid %d ret %d; the call: tid %d ret %d", i, rec.ProgName, rec.TID, rec.Ret, r.TID, r.Ret)
			}
			if prev, dup := seenIn[rec.ProgName]; dup && (prev != i || r.EAGAINRetries == 0) {
				t.Errorf("%q recorded twice (runs %d and %d)", rec.ProgName, prev, i)
			}
			seenIn[rec.ProgName] = i
		}
	}
	missed := 0
	for name, rs := range st.results {
		r := rs[0]
		for i, run := range runs {
			if r.StartNs > run.attached && r.EndNs < run.stopping {
				if at, ok := seenIn[name]; !ok || at != i {
					missed++
					if missed <= 5 {
						t.Errorf("%q ran while run %d was attached, not recorded by it", name, i)
					}
				}
			}
		}
	}
	if missed > 0 {
		t.Errorf("%d loads missed in all", missed)
	}
	t.Logf("%d loads issued across %d runs, %d recorded", len(st.results), len(runs), len(seenIn))
}

// TestFullRingBufferDropsAreExported overruns a one-page ring buffer with
// bursts of loads: /metrics must account for every load, as recorded or as
// lost{reason="ringbuf_full"}.
func TestFullRingBufferDropsAreExported(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	s := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"), "--ring-buffer-bytes=4096")
	const comm = "vlog-ringfull"
	var issued atomic.Int64
	lostFull := func() (seen, full float64) {
		_, families := s.scrape()
		for _, m := range series(families, "bpf_prog_loads_total", map[string]string{"loader": comm}) {
			seen += m.GetCounter().GetValue()
		}
		if ms := series(families, "verifierlog_exporter_events_lost_total", map[string]string{"reason": "ringbuf_full"}); len(ms) == 1 {
			full = ms[0].GetCounter().GetValue()
		}
		return seen, full
	}
	var seen, full float64
	for burst := 0; burst < 20 && full == 0; burst++ {
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 200 {
					r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_ringfull", Comm: comm})
					if err != nil {
						t.Error(err)
						return
					}
					issued.Add(1 + int64(r.EAGAINRetries))
				}
			})
		}
		wg.Wait()
		// Everything not dropped reaches user space within the flush
		// interval; wait until the counts stop moving.
		prev := -1.0
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			seen, full = lostFull()
			if seen+full == prev {
				break
			}
			prev = seen + full
		}
	}
	if full == 0 {
		t.Fatalf("%d loads never overran a one-page ring buffer", issued.Load())
	}
	// Only this test loads here (CI), so every drop is one of its loads.
	if seen+full != float64(issued.Load()) {
		t.Errorf("%v recorded + %v dropped as ringbuf_full, want the %d loads issued", seen, full, issued.Load())
	}
	t.Logf("%d loads: %v recorded, %v dropped and counted", issued.Load(), seen, full)
	s.stop()
}
