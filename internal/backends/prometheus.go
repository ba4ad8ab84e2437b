package backends

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

// PrometheusJob is the job name of the scrape job StartPrometheus
// configures; every scraped series carries job="verifierlog".
const PrometheusJob = "verifierlog"

// Prometheus is a prometheus server started by StartPrometheus.
type Prometheus struct {
	url        string
	configPath string
	proc       *process
	client     *http.Client
}

// Sample is one element of an instant query's result: a series' labels
// (including __name__ where the query keeps it) and its value.
type Sample struct {
	Labels map[string]string
	Value  float64
	Time   time.Time
}

// Target is one scrape target as /api/v1/targets reports it.
type Target struct {
	ScrapeURL  string
	Health     string // "up", "down" or "unknown"
	LastError  string
	LastScrape time.Time
}

// StartPrometheus runs a Prometheus server for the test that scrapes the
// given host:port targets (path /metrics, every second, job "verifierlog"),
// with its TSDB in t.TempDir() and its web API on a free 127.0.0.1 port.
// It returns once /-/ready answers 200 and stops the server at t.Cleanup.
// Without a prometheus binary it skips t (fails it under CI=true).
//
// The first scrape comes about 5s after the start, not 1s: Prometheus's
// discovery manager hands target updates to the scrape manager at most
// every 5 seconds, the first one included. Give WaitForQuery timeouts of
// 15s or more.
func StartPrometheus(t testing.TB, targets ...string) *Prometheus {
	t.Helper()
	bin, err := PrometheusBinary()
	if err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	p, err := LaunchPrometheus(bin, PrometheusOptions{Dir: t.TempDir(), Config: PrometheusConfig(targets...)})
	if err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, p.proc)
	return p
}

// PrometheusOptions configure LaunchPrometheus.
type PrometheusOptions struct {
	// Dir receives prometheus.yml, the TSDB (data-N) and the server's
	// output (prometheus-N.log), N counting the attempts to start it.
	Dir string
	// Config is the prometheus.yml, e.g. PrometheusConfig's, or one with
	// file_sd_configs or rule_files of its own.
	Config []byte
	// Flags are added to the command line, e.g.
	// --enable-feature=native-histograms.
	Flags []string
	// LogLevel is --log.level; "" is info.
	LogLevel string
}

// LaunchPrometheus starts bin (PrometheusBinary) with o on a free
// 127.0.0.1 port, trying new ports twice more where the first is taken,
// and returns once /-/ready answers 200. The caller stops it (Stop); the
// server dies with the process that started it.
func LaunchPrometheus(bin string, o PrometheusOptions) (*Prometheus, error) {
	p := &Prometheus{
		configPath: filepath.Join(o.Dir, "prometheus.yml"),
		client:     &http.Client{Timeout: 10 * time.Second},
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.configPath, o.Config, 0o644); err != nil {
		return nil, err
	}
	level := o.LogLevel
	if level == "" {
		level = "info"
	}
	var err error
	p.proc, err = startRetrying(func(attempt int) (*process, error) {
		addr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		p.url = "http://" + addr
		data := filepath.Join(o.Dir, fmt.Sprintf("data-%d", attempt))
		args := append([]string{
			"--config.file=" + p.configPath,
			"--storage.tsdb.path=" + data,
			"--web.listen-address=" + addr,
			"--log.level=" + level,
		}, o.Flags...)
		proc, err := startProcess("prometheus", filepath.Join(o.Dir, fmt.Sprintf("prometheus-%d.log", attempt)), bin, args...)
		if err != nil {
			return nil, err
		}
		return proc, proc.waitReady(60*time.Second, p.ready)
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Stop ends a server that LaunchPrometheus started: SIGTERM, SIGKILL after
// 15 s. It returns an error if the server had exited before, or did not
// exit cleanly.
func (p *Prometheus) Stop() error { return p.proc.stop() }

// Reload makes the server reread its prometheus.yml (SIGHUP), e.g. after
// the caller rewrote ConfigPath with rule_files.
func (p *Prometheus) Reload() error { return p.proc.cmd.Process.Signal(syscall.SIGHUP) }

// PID is the server's process id.
func (p *Prometheus) PID() int { return p.proc.cmd.Process.Pid }

// LogTail is the last n bytes (or so: from a line's start) of the server's
// output.
func (p *Prometheus) LogTail(n int) string { return p.proc.logTail(n) }

// PrometheusConfig returns the prometheus.yml that StartPrometheus writes
// for targets.
func PrometheusConfig(targets ...string) []byte {
	var b strings.Builder
	b.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n")
	b.WriteString("scrape_configs:\n  - job_name: " + PrometheusJob + "\n    scrape_interval: 1s\n    scrape_timeout: 1s\n")
	b.WriteString("    static_configs:\n      - targets: [")
	for i, t := range targets {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(t))
	}
	b.WriteString("]\n")
	return []byte(b.String())
}

// URL is the server's base URL, http://127.0.0.1:port.
func (p *Prometheus) URL() string { return p.url }

// ConfigPath is the prometheus.yml the server runs with.
func (p *Prometheus) ConfigPath() string { return p.configPath }

func (p *Prometheus) ready() error {
	resp, err := p.client.Get(p.url + "/-/ready")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/-/ready: %s", resp.Status)
	}
	return nil
}

// apiGet calls the HTTP API and decodes its "data" into data.
func (p *Prometheus) apiGet(ctx context.Context, path string, params url.Values, data any) error {
	u := p.url + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("%s: %s: %.200q", path, resp.Status, body)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s: %s: %s", path, resp.Status, env.ErrorType, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// Query runs an instant query (/api/v1/query) at the current time. A vector
// result gives one Sample per series; a scalar gives one Sample without
// labels.
func (p *Prometheus) Query(ctx context.Context, promql string) ([]Sample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.apiGet(ctx, "/api/v1/query", url.Values{"query": {promql}}, &data); err != nil {
		return nil, fmt.Errorf("query %q: %w", promql, err)
	}
	switch data.ResultType {
	case "vector":
		var res []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(data.Result, &res); err != nil {
			return nil, fmt.Errorf("query %q: %w", promql, err)
		}
		out := make([]Sample, 0, len(res))
		for _, r := range res {
			s, err := parseSample(r.Metric, r.Value)
			if err != nil {
				return nil, fmt.Errorf("query %q: %w", promql, err)
			}
			out = append(out, s)
		}
		return out, nil
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(data.Result, &v); err != nil {
			return nil, fmt.Errorf("query %q: %w", promql, err)
		}
		s, err := parseSample(map[string]string{}, v)
		if err != nil {
			return nil, fmt.Errorf("query %q: %w", promql, err)
		}
		return []Sample{s}, nil
	default:
		return nil, fmt.Errorf("query %q: result type %q is not supported (use an instant vector or scalar)", promql, data.ResultType)
	}
}

func parseSample(labels map[string]string, v [2]any) (Sample, error) {
	ts, ok := v[0].(float64)
	if !ok {
		return Sample{}, fmt.Errorf("bad sample timestamp %v", v[0])
	}
	str, ok := v[1].(string)
	if !ok {
		return Sample{}, fmt.Errorf("bad sample value %v", v[1])
	}
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return Sample{}, err
	}
	if labels == nil {
		labels = map[string]string{}
	}
	return Sample{Labels: labels, Value: f, Time: time.UnixMilli(int64(ts * 1000))}, nil
}

// Targets returns the active scrape targets and their health.
func (p *Prometheus) Targets(ctx context.Context) ([]Target, error) {
	var data struct {
		Active []struct {
			ScrapeURL  string    `json:"scrapeUrl"`
			Health     string    `json:"health"`
			LastError  string    `json:"lastError"`
			LastScrape time.Time `json:"lastScrape"`
		} `json:"activeTargets"`
	}
	if err := p.apiGet(ctx, "/api/v1/targets", url.Values{"state": {"active"}}, &data); err != nil {
		return nil, err
	}
	out := make([]Target, 0, len(data.Active))
	for _, a := range data.Active {
		out = append(out, Target{ScrapeURL: a.ScrapeURL, Health: a.Health, LastError: a.LastError, LastScrape: a.LastScrape})
	}
	return out, nil
}

// WaitForQuery runs promql every 250ms until pred holds for its result and
// returns that result. After timeout it fails t with the last result (or
// error) and the targets' health.
func (p *Prometheus) WaitForQuery(t testing.TB, promql string, pred func([]Sample) bool, timeout time.Duration) []Sample {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var (
		last    []Sample
		lastErr error
	)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		last, lastErr = p.Query(ctx, promql)
		cancel()
		if lastErr == nil && pred(last) {
			return last
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	targets, terr := p.Targets(ctx)
	var tdesc strings.Builder
	for _, tg := range targets {
		fmt.Fprintf(&tdesc, "\n  %s: %s %s", tg.ScrapeURL, tg.Health, tg.LastError)
	}
	if terr != nil {
		fmt.Fprintf(&tdesc, "\n  (%v)", terr)
	}
	if lastErr != nil {
		t.Fatalf("WaitForQuery %q: not satisfied within %v; last error: %v; targets:%s", promql, timeout, lastErr, tdesc.String())
	}
	t.Fatalf("WaitForQuery %q: not satisfied within %v; last result: %v; targets:%s", promql, timeout, last, tdesc.String())
	return nil
}

// ValidatePrometheusConfig runs "promtool check config" on a prometheus.yml.
func ValidatePrometheusConfig(path string) error {
	bin, err := PromtoolBinary()
	if err != nil {
		return err
	}
	out, err := exec.Command(bin, "check", "config", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("promtool check config %s: %v:\n%s", path, err, out)
	}
	return nil
}

// PromtoolCheckMetrics runs "promtool check metrics" on a text exposition
// (what a /metrics endpoint serves) and returns an error with promtool's
// findings if it reports any problem (lint issues included).
func PromtoolCheckMetrics(exposition []byte) error {
	bin, err := PromtoolBinary()
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(string(exposition))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("promtool check metrics: %v:\n%s", err, out)
	}
	return nil
}
