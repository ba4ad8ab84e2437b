package fleetsim

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/verifierlog/exporter/internal/backends"
)

// Prometheus is a Prometheus server scraping the fleet through file_sd.
type Prometheus struct {
	Name    string
	URL     string
	Native  bool
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// PrometheusConfig is the prometheus.yml of a server scraping the targets
// in sdPath every scrape.
func PrometheusConfig(sdPath string, scrape time.Duration) []byte {
	s := promDuration(scrape)
	return fmt.Appendf(nil, `global:
  scrape_interval: %s
  scrape_timeout: %s
scrape_configs:
  - job_name: %s
    file_sd_configs:
      - files: [%q]
        refresh_interval: 5s
`, s, s, Job, sdPath)
}

// promDuration formats d as a Prometheus duration (whole milliseconds).
func promDuration(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

// StartPrometheus starts bin (Debian's prometheus) in dir on a free port,
// with --enable-feature=native-histograms where native, and waits until it
// is ready.
func StartPrometheus(bin, name, dir, sdPath string, scrape time.Duration, native bool) (*Prometheus, error) {
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfg, PrometheusConfig(sdPath, scrape), 0o644); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	args := []string{"--config.file=" + cfg, "--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr, "--log.level=warn"}
	if native {
		args = append(args, "--enable-feature=native-histograms")
	}
	p := &Prometheus{Name: name, URL: "http://" + addr, Native: native, logPath: filepath.Join(dir, "prometheus.log"), done: make(chan struct{})}
	logf, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	err = backends.WaitReady(60*time.Second, p.done, func() error {
		resp, err := client.Get(p.URL + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("%s: %w; log:\n%s", name, err, p.LogTail(2000))
	}
	return p, nil
}

// Stop ends the server (SIGTERM, SIGKILL after 15 s).
func (p *Prometheus) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// LogTail is the last n bytes of the server's log.
func (p *Prometheus) LogTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Stats are a server's own figures.
type Stats struct {
	HeadSeries  float64 // prometheus_tsdb_head_series
	RSSBytes    float64 // process_resident_memory_bytes
	VmHWMBytes  uint64  // /proc/PID/status VmHWM: peak RSS
	CPUSeconds  float64 // user + system CPU time (/proc/PID/stat)
	ScrapesDone float64 // prometheus_target_interval_length_seconds_count, all intervals
}

// Stats reads the server's /metrics and /proc.
func (p *Prometheus) Stats() (Stats, error) {
	var s Stats
	resp, err := http.Get(p.URL + "/metrics")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return s, err
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch {
		case name == "prometheus_tsdb_head_series":
			s.HeadSeries = v
		case name == "process_resident_memory_bytes":
			s.RSSBytes = v
		case strings.HasPrefix(name, "prometheus_target_interval_length_seconds_count"):
			s.ScrapesDone += v
		}
	}
	pid := p.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			s.VmHWMBytes = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command's closing parenthesis; utime and stime
	// are the 14th and 15th fields of the line.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 {
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 12 {
			ut, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			s.CPUSeconds = (ut + st) / 100 // USER_HZ
		}
	}
	return s, nil
}
