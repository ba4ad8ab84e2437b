package bench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/loadgen"
)

// StormComm is the loader label of the storm's loads.
const StormComm = "vlbench-storm"

// StormResult is a load storm against a running exporter process.
type StormResult struct {
	Threads  int
	Duration time.Duration
	Issued   uint64 // loads the storm made
	Seen     uint64 // loads the exporter counted for StormComm
	Lost     uint64 // verifierlog_exporter_events_lost_total, all reasons
	// ExporterCPU is the exporter's CPU time over the storm's wall time
	// (1.0 = one core busy).
	ExporterCPU float64
	// RSS after the storm, and the peak (VmHWM), in bytes.
	RSS, PeakRSS uint64
	// Where RSS is after the storm (ResidentParts).
	Parts RSSParts
}

// LoadsPerSecond is the storm's load rate.
func (r StormResult) LoadsPerSecond() float64 { return float64(r.Issued) / r.Duration.Seconds() }

// Storm starts exporterBin (serving on a free loopback port, attach mode
// mode), loads small programs from threads threads for d, and reads what the
// exporter saw, what it lost, and what it cost.
func Storm(exporterBin, mode string, threads int, d time.Duration) (StormResult, error) {
	return StormWith(exporterBin, mode, StormConfig{Threads: threads, Duration: d})
}

// StormConfig is a storm's shape and the exporter's settings for it.
type StormConfig struct {
	Threads  int
	Duration time.Duration
	// Env is added to the exporter's environment (OTEL_* for OTLP push).
	Env []string
	// HeapProfile, if set, runs the exporter with --web.enable-pprof and
	// writes its heap profile (/debug/pprof/heap, after a GC) here once
	// the storm's records are counted.
	HeapProfile string
}

// StormWith is Storm with the exporter's environment and profiling of cfg.
func StormWith(exporterBin, mode string, cfg StormConfig) (StormResult, error) {
	threads, d := cfg.Threads, cfg.Duration
	res := StormResult{Threads: threads, Duration: d}
	var args []string
	if cfg.HeapProfile != "" {
		args = append(args, "--web.enable-pprof")
	}
	exp, err := startExporterProcess(exporterBin, mode, args, cfg.Env)
	if err != nil {
		return res, err
	}
	defer exp.Kill()
	cpu0, err := CPUTime(exp.Pid())
	if err != nil {
		return res, err
	}
	var issued atomic.Uint64
	var wg sync.WaitGroup
	errs := make(chan error, threads)
	start := time.Now()
	deadline := start.Add(d)
	for range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				// Every attempt counts, whatever the kernel answered, and
				// so do the EAGAINs loadgen retried: the exporter records each.
				r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlbench_storm", Comm: StormComm})
				if err != nil {
					errs <- fmt.Errorf("storm load: %v", err)
					return
				}
				issued.Add(1 + uint64(r.EAGAINRetries))
			}
		}()
	}
	wg.Wait()
	res.Duration = time.Since(start)
	select {
	case err := <-errs:
		return res, err
	default:
	}
	res.Issued = issued.Load()

	// The exporter catches up; then its counters and its cost are read.
	wait := time.Now().Add(30 * time.Second)
	for {
		seen, lost, err := scrapeStorm(exp.Base)
		if err != nil {
			return res, err
		}
		res.Seen, res.Lost = seen, lost
		if seen+lost >= res.Issued || time.Now().After(wait) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	cpu1, err := CPUTime(exp.Pid())
	if err != nil {
		return res, err
	}
	res.ExporterCPU = (cpu1 - cpu0).Seconds() / res.Duration.Seconds()
	res.RSS, res.PeakRSS, err = Memory(exp.Pid())
	if err == nil {
		res.Parts, err = ResidentParts(exp.Pid())
	}
	if err == nil && cfg.HeapProfile != "" {
		err = saveURL(exp.Base+"/debug/pprof/heap?gc=1", cfg.HeapProfile)
	}
	return res, err
}

// saveURL writes what GET url answers to path.
func saveURL(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// scrapeStorm reads the storm loader's loads and the lost events.
func scrapeStorm(base string) (seen, lost uint64, err error) {
	families, err := Scrape(base)
	if err != nil {
		return 0, 0, err
	}
	if f := families["bpf_prog_loads_total"]; f != nil {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "loader" && l.GetValue() == StormComm {
					seen += uint64(m.GetCounter().GetValue())
				}
			}
		}
	}
	if f := families["verifierlog_exporter_events_lost_total"]; f != nil {
		for _, m := range f.Metric {
			lost += uint64(m.GetCounter().GetValue())
		}
	}
	return seen, lost, nil
}

// ExporterProcess is an exporter process serving on a free loopback port.
type ExporterProcess struct {
	Base string // http://127.0.0.1:PORT
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done
}

// StartExporter starts exporterBin serving on a free loopback port in
// attach mode mode, without the new-series hold, with env added to this process's environment, and
// waits until its /healthz answers ok.
func StartExporter(exporterBin, mode string, env ...string) (*ExporterProcess, error) {
	return startExporterProcess(exporterBin, mode, nil, env)
}

// startExporterProcess is StartExporter with args added to the command line.
func startExporterProcess(exporterBin, mode string, args, env []string) (*ExporterProcess, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	// No new-series hold: what /metrics shows is compared with what was
	// issued at once, not zeros for the hold's first minute.
	cmd := exec.Command(exporterBin, append([]string{"--web.listen-address=" + addr, "--attach=" + mode, "--log.level=warn", "--metrics.new-series-hold=0"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	e := &ExporterProcess{Base: "http://" + addr, cmd: cmd, done: make(chan struct{})}
	go func() { e.err = cmd.Wait(); close(e.done) }()
	if err := backends.WaitReady(60*time.Second, e.done, func() error {
		resp, err := http.Get(e.Base + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/healthz: %s", resp.Status)
		}
		return nil
	}); err != nil {
		e.Kill()
		return nil, fmt.Errorf("exporter: %w", err)
	}
	return e, nil
}

// Pid is the exporter's process ID.
func (e *ExporterProcess) Pid() int { return e.cmd.Process.Pid }

// Kill kills the exporter and waits for it to exit.
func (e *ExporterProcess) Kill() {
	_ = e.cmd.Process.Kill()
	<-e.done
}

// Stop sends SIGTERM, waits up to grace for the exporter to exit (then
// kills it), and returns an error unless it exited with status 0.
func (e *ExporterProcess) Stop(grace time.Duration) error {
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
		return e.err
	case <-time.After(grace):
		e.Kill()
		return fmt.Errorf("exporter did not exit within %v of SIGTERM", grace)
	}
}

// Scrape reads and parses base's /metrics.
func Scrape(base string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: %s", base, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

// CPUTime is a process's user + system time, from /proc/PID/stat.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseUint(fields[11], 10, 64)
	stime, _ := strconv.ParseUint(fields[12], 10, 64)
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// Memory is a process's VmRSS and VmHWM in bytes.
func Memory(pid int) (rss, peak uint64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = kb << 10
		case "VmHWM":
			peak = kb << 10
		}
	}
	return rss, peak, sc.Err()
}

// RSSParts splits a process's resident memory by mapping, in bytes.
type RSSParts struct {
	// Binary is the executable's own pages (text, rodata, data): file
	// pages, all resident where the page cache holds the binary in large
	// folios.
	Binary uint64
	// BPFMaps is the BPF maps mapped into the process: the ring buffer,
	// whose data pages are mapped twice (so that a record may wrap) and
	// count twice.
	BPFMaps uint64
	// Anon is the rest of the anonymous memory: the Go heap, stacks and
	// runtime; Other the other files and the vDSO (libc).
	Anon, Other uint64
}

// ResidentParts reads /proc/PID/smaps.
func ResidentParts(pid int) (RSSParts, error) {
	var p RSSParts
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return p, err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return p, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var cur *uint64
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") { // a mapping's first line
			path := ""
			if len(fields) >= 6 {
				path = strings.Join(fields[5:], " ")
			}
			switch {
			case path == exe:
				cur = &p.Binary
			case strings.HasPrefix(path, "anon_inode:bpf"):
				cur = &p.BPFMaps
			case path == "" || path == "[heap]" || strings.HasPrefix(path, "[stack") || strings.HasPrefix(path, "[anon"):
				cur = &p.Anon
			default:
				cur = &p.Other
			}
			continue
		}
		if fields[0] == "Rss:" && len(fields) >= 2 {
			kb, _ := strconv.ParseUint(fields[1], 10, 64)
			*cur += kb << 10
		}
	}
	return p, sc.Err()
}
