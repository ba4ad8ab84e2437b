// Package soak owns the exporter's soak test: it runs the real exporter
// binary for a long time under a steady mix of loads (plain loads, retry
// chains in the manner of libbpf, cilium/ebpf and aya, rejected programs,
// BTF loads and their retries; load.go), samples the exporter's RSS,
// goroutines and event counters every interval, and judges the run:
// nothing lost, every attempt recorded, RSS and goroutines flat (the rule
// is in flat.go), a clean exit on SIGTERM. cmd/soak is its command line.
package soak

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/verifierlog/exporter/internal/bench"
)

// Config is a soak run.
type Config struct {
	Exporter string // the exporter binary
	Attach   string // its --attach mode
	Threads  int    // load threads
	Duration time.Duration
	Interval time.Duration // between samples
	// OTel is "console" to have the exporter also build its spans and OTLP
	// metrics (console exporters, written to /dev/null), or "none" for
	// Prometheus only.
	OTel string
	// Progress, if set, gets a line per sample as it is taken.
	Progress io.Writer
}

// catchUp bounds the wait, after the loads stop, for the exporter to count
// every attempt.
const catchUp = 30 * time.Second

// Sample is the exporter's state at one moment.
type Sample struct {
	At    time.Duration // since the loads began
	Phase string        // "start" (before the loads), "load", "end" (after the exporter caught up)
	// Issued is the attempts the soak made so far; Seen the attempts the
	// exporter counted (bpf_prog_loads_total) under the soak's loader
	// labels. Issued is read just before the scrape, so while loads run
	// Seen may be a little ahead.
	Issued, Seen uint64
	Events       uint64 // verifierlog_exporter_events_total: every load on the host
	Lost         uint64 // verifierlog_exporter_events_lost_total, all reasons
	RSS          uint64 // VmRSS, bytes
	Goroutines   int    // go_goroutines
	CPU          time.Duration
}

// LoaderCount is what one of the soak's loader labels issued and what the
// exporter saw of it.
type LoaderCount struct {
	Loader              string
	Loads, Issued, Seen uint64
}

// Result is a finished soak.
type Result struct {
	Config     Config
	AttachMode string // the mode the exporter attached in
	Samples    []Sample
	Loaders    []LoaderCount
	Lost       map[string]uint64 // lost events by reason at the end, whole run
	Verdicts   []Verdict
}

// OK reports whether every verdict passed.
func (r *Result) OK() bool {
	for _, v := range r.Verdicts {
		if !v.OK {
			return false
		}
	}
	return len(r.Verdicts) > 0
}

// BuildExporter builds ./cmd/exporter into dir and returns the binary's path.
func BuildExporter(dir string) (string, error) {
	bin := filepath.Join(dir, "exporter")
	if b, err := exec.Command("go", "build", "-o", bin, "github.com/verifierlog/exporter/cmd/exporter").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/exporter: %v\n%s", err, b)
	}
	return bin, nil
}

// Run starts the exporter, loads the mix from cfg.Threads threads for
// cfg.Duration while sampling every cfg.Interval, waits for the exporter to
// catch up, stops it, and judges the run. An error means the soak could
// not run; a failed check is a failed Verdict.
func Run(cfg Config) (*Result, error) {
	if cfg.Threads < 1 || cfg.Duration <= 0 || cfg.Interval <= 0 {
		return nil, fmt.Errorf("threads, duration and interval must be positive")
	}
	if cfg.Interval > cfg.Duration/5 {
		return nil, fmt.Errorf("a sample every %v is too rare for %v: the flatness rule needs two samples in each 40%% of the run (use -interval %v or less)", cfg.Interval, cfg.Duration, cfg.Duration/10)
	}
	var env []string
	switch cfg.OTel {
	case "console":
		env = []string{"OTEL_TRACES_EXPORTER=console", "OTEL_METRICS_EXPORTER=console", "OTEL_METRIC_EXPORT_INTERVAL=10000"}
	case "none":
		env = []string{"OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none"}
	default:
		return nil, fmt.Errorf("otel %q: want console or none", cfg.OTel)
	}
	exp, err := bench.StartExporter(cfg.Exporter, cfg.Attach, env...)
	if err != nil {
		return nil, err
	}
	defer exp.Kill()

	s := &soaker{cfg: cfg, exp: exp, counts: newCounts(), res: &Result{Config: cfg}}
	s.start = time.Now()
	fams, err := s.sample("start")
	if err != nil {
		return nil, err
	}
	s.res.AttachMode = labelValue(fams, "verifierlog_exporter_tracer_info", "attach_mode")
	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.catchUp(); err != nil {
		return nil, err
	}
	fams, err = s.sample("end")
	if err != nil {
		return nil, err
	}
	s.res.Lost = lostByReason(fams)
	s.res.Loaders = s.loaderCounts(fams)
	exit := Verdict{Name: "clean exit", OK: true, Detail: "the exporter exited 0 on SIGTERM"}
	if err := exp.Stop(15 * time.Second); err != nil {
		exit = Verdict{Name: "clean exit", Detail: fmt.Sprintf("on SIGTERM: %v", err)}
	}
	s.judge(exit)
	return s.res, nil
}

type soaker struct {
	cfg    Config
	exp    *bench.ExporterProcess
	counts counts
	start  time.Time
	res    *Result
}

// load runs the load threads until the duration has passed, sampling every
// interval.
func (s *soaker) load() error {
	ctx, cancel := context.WithDeadline(context.Background(), s.start.Add(s.cfg.Duration))
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, s.cfg.Threads)
	for i := range s.cfg.Threads {
		// The threads' big chains are spread over bigChainEvery.
		w := &worker{id: i, counts: s.counts, nextBig: s.start.Add(bigChainEvery * time.Duration(i) / time.Duration(s.cfg.Threads))}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.run(ctx); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-done:
			select {
			case err := <-errs:
				return fmt.Errorf("soak load: %w", err)
			default:
				return nil
			}
		case <-tick.C:
			if _, err := s.sample("load"); err != nil {
				cancel()
				<-done
				return err
			}
		}
	}
}

// catchUp waits until the exporter has counted every attempt, or catchUp
// has passed (the tracer reads the ring buffer at least every
// tracer.FlushInterval; a backlog takes longer).
func (s *soaker) catchUp() error {
	deadline := time.Now().Add(catchUp)
	for {
		fams, err := bench.Scrape(s.exp.Base)
		if err != nil {
			return err
		}
		if seen(fams) >= s.counts.attempts() || time.Now().After(deadline) {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sample reads the exporter's /metrics and /proc state, appends it to the
// result and returns the metrics it read.
func (s *soaker) sample(phase string) (map[string]*dto.MetricFamily, error) {
	issued := s.counts.attempts()
	at := time.Since(s.start)
	fams, err := bench.Scrape(s.exp.Base)
	if err != nil {
		return nil, err
	}
	rss, _, err := bench.Memory(s.exp.Pid())
	if err != nil {
		return nil, err
	}
	cpu, err := bench.CPUTime(s.exp.Pid())
	if err != nil {
		return nil, err
	}
	sm := Sample{At: at, Phase: phase, Issued: issued, Seen: seen(fams),
		Events:     uint64(sum(fams, "verifierlog_exporter_events_total", nil)),
		Lost:       uint64(sum(fams, "verifierlog_exporter_events_lost_total", nil)),
		RSS:        rss,
		Goroutines: int(sum(fams, "go_goroutines", nil)),
		CPU:        cpu}
	s.res.Samples = append(s.res.Samples, sm)
	if s.cfg.Progress != nil {
		fmt.Fprintf(s.cfg.Progress, "soak: %-5s %8v issued %d seen %d lost %d rss %.1f MiB goroutines %d\n",
			phase, at.Round(time.Second), sm.Issued, sm.Seen, sm.Lost, float64(sm.RSS)/(1<<20), sm.Goroutines)
	}
	return fams, nil
}

// judge appends the verdicts on the samples, then exit.
func (s *soaker) judge(exit Verdict) {
	first, last := s.res.Samples[0], s.res.Samples[len(s.res.Samples)-1]
	lost := Verdict{Name: "no events lost", OK: last.Lost == first.Lost,
		Detail: fmt.Sprintf("%d lost during the soak (%d before it began)", last.Lost-first.Lost, first.Lost)}
	complete := Verdict{Name: "every attempt recorded", OK: last.Seen == last.Issued,
		Detail: fmt.Sprintf("%d attempts seen of %d issued under the soak's loader labels", last.Seen, last.Issued)}
	var rss, gor []Point
	for _, sm := range s.res.Samples {
		rss = append(rss, Point{sm.At, float64(sm.RSS)})
		gor = append(gor, Point{sm.At, float64(sm.Goroutines)})
	}
	s.res.Verdicts = []Verdict{lost, complete, RSSFlat(rss), GoroutinesFlat(gor), exit}
}

func (s *soaker) loaderCounts(fams map[string]*dto.MetricFamily) []LoaderCount {
	var out []LoaderCount
	for _, comm := range Comms {
		c := s.counts[comm]
		out = append(out, LoaderCount{Loader: comm, Loads: c.loads.Load(), Issued: c.attempts.Load(),
			Seen: uint64(sum(fams, "bpf_prog_loads_total", map[string]string{"loader": comm}))})
	}
	return out
}

// seen is the attempts the exporter counted under the soak's labels.
func seen(fams map[string]*dto.MetricFamily) uint64 {
	n := 0.0
	for _, comm := range Comms {
		n += sum(fams, "bpf_prog_loads_total", map[string]string{"loader": comm})
	}
	return uint64(n)
}

// sum adds the values of the series of family name that have the labels
// want (all series if want is nil).
func sum(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	total := 0.0
	for _, m := range f.Metric {
		if hasLabels(m, want) {
			total += value(m)
		}
	}
	return total
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.Label {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// labelValue is label name of family's first series.
func labelValue(fams map[string]*dto.MetricFamily, family, name string) string {
	if f := fams[family]; f != nil && len(f.Metric) > 0 {
		for _, l := range f.Metric[0].Label {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
	}
	return ""
}

func lostByReason(fams map[string]*dto.MetricFamily) map[string]uint64 {
	out := map[string]uint64{}
	if f := fams["verifierlog_exporter_events_lost_total"]; f != nil {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "reason" && value(m) > 0 {
					out[l.GetValue()] += uint64(value(m))
				}
			}
		}
	}
	return out
}

// sortedReasons is m's keys in order.
func sortedReasons(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
