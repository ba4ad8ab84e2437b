package fleetsim

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/verifierlog/exporter/internal/backends"
)

// Prometheus is a Prometheus server scraping the fleet through file_sd.
type Prometheus struct {
	Name   string
	URL    string
	Native bool
	srv    *backends.Prometheus
	sdPath string
	scrape time.Duration
}

// PrometheusConfig is the prometheus.yml of a server scraping the targets
// in sdPath every scrape, and loading the rules file rules ("": none).
func PrometheusConfig(sdPath string, scrape time.Duration, rules string) []byte {
	s := promDuration(scrape)
	b := fmt.Appendf(nil, `global:
  scrape_interval: %s
  scrape_timeout: %s
scrape_configs:
  - job_name: %s
    file_sd_configs:
      - files: [%q]
        refresh_interval: 5s
`, s, s, Job, sdPath)
	if rules != "" {
		b = fmt.Appendf(b, "rule_files: [%q]\n", rules)
	}
	return b
}

// promDuration formats d as a Prometheus duration (whole milliseconds).
func promDuration(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

// StartPrometheus starts bin (Debian's prometheus) in dir on a free port,
// with --enable-feature=native-histograms where native and the rules file
// rules ("": none), and waits until it is ready.
func StartPrometheus(bin, name, dir, sdPath string, scrape time.Duration, native bool, rules string) (*Prometheus, error) {
	var flags []string
	if native {
		flags = append(flags, "--enable-feature=native-histograms")
	}
	srv, err := backends.LaunchPrometheus(bin, backends.PrometheusOptions{
		Dir: dir, Config: PrometheusConfig(sdPath, scrape, rules), Flags: flags, LogLevel: "warn"})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Prometheus{Name: name, URL: srv.URL(), Native: native, srv: srv, sdPath: sdPath, scrape: scrape}, nil
}

// LoadRules makes the server load the rules file rules from now on: its
// configuration rewritten with rule_files, then reloaded.
func (p *Prometheus) LoadRules(rules string) error {
	if err := os.WriteFile(p.srv.ConfigPath(), PrometheusConfig(p.sdPath, p.scrape, rules), 0o644); err != nil {
		return err
	}
	return p.srv.Reload()
}

// Stop ends the server (SIGTERM, SIGKILL after 15 s).
func (p *Prometheus) Stop() { _ = p.srv.Stop() }

// LogTail is the last n bytes of the server's log.
func (p *Prometheus) LogTail(n int) string { return p.srv.LogTail(n) }

// Stats are a server's own figures.
type Stats struct {
	HeadSeries  float64 // prometheus_tsdb_head_series
	RSSBytes    float64 // process_resident_memory_bytes
	VmHWMBytes  uint64  // /proc/PID/status VmHWM: peak RSS
	CPUSeconds  float64 // user + system CPU time (/proc/PID/stat)
	ScrapesDone float64 // prometheus_target_interval_length_seconds_count, all intervals
	RuleSeconds float64 // prometheus_rule_group_duration_seconds_sum: time in rule groups
	RuleEvals   float64 // prometheus_rule_group_duration_seconds_count
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
		case name == "prometheus_rule_group_duration_seconds_sum":
			s.RuleSeconds = v
		case name == "prometheus_rule_group_duration_seconds_count":
			s.RuleEvals = v
		}
	}
	pid := p.srv.PID()
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
