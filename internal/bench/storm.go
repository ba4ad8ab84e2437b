package bench

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
}

// LoadsPerSecond is the storm's load rate.
func (r StormResult) LoadsPerSecond() float64 { return float64(r.Issued) / r.Duration.Seconds() }

// Storm starts exporterBin (serving on a free loopback port, attach mode
// mode), loads small programs from threads threads for d, and reads what the
// exporter saw, what it lost, and what it cost.
func Storm(exporterBin, mode string, threads int, d time.Duration) (StormResult, error) {
	res := StormResult{Threads: threads, Duration: d}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(exporterBin, "--web.listen-address="+addr, "--attach="+mode, "--log.level=warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	base := "http://" + addr
	if err := backends.WaitReady(60*time.Second, nil, func() error {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/healthz: %s", resp.Status)
		}
		return nil
	}); err != nil {
		return res, fmt.Errorf("exporter: %w", err)
	}

	cpu0, err := cpuTime(cmd.Process.Pid)
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
				// Every attempt counts, whatever the kernel answered (it
				// says EAGAIN now and then): the exporter records each.
				if _, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlbench_storm", Comm: StormComm}); err != nil {
					errs <- fmt.Errorf("storm load: %v", err)
					return
				}
				issued.Add(1)
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
		seen, lost, err := scrapeStorm(base)
		if err != nil {
			return res, err
		}
		res.Seen, res.Lost = seen, lost
		if seen+lost >= res.Issued || time.Now().After(wait) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	cpu1, err := cpuTime(cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	res.ExporterCPU = (cpu1 - cpu0).Seconds() / res.Duration.Seconds()
	res.RSS, res.PeakRSS, err = memory(cmd.Process.Pid)
	return res, err
}

// scrapeStorm reads the storm loader's loads and the lost events.
func scrapeStorm(base string) (seen, lost uint64, err error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
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

// cpuTime is a process's user + system time, from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
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

// memory is a process's VmRSS and VmHWM in bytes.
func memory(pid int) (rss, peak uint64, err error) {
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
