package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/verifierlog/exporter/otel"
	"github.com/verifierlog/exporter/sizing"
	"github.com/verifierlog/exporter/tracer"
)

// DefaultListenAddress is where `exporter` serves /metrics unless told.
const DefaultListenAddress = ":19435"

// DefaultMemoryLimit is serve's soft Go memory limit (debug.SetMemoryLimit)
// where GOMEMLIMIT is unset. Under BENCHMARKS.md's load storm with OTLP
// push on, the live heap is 5-8 MiB (the span queue, the batch in export);
// without a limit the GC lets the heap grow to twice that and the peak RSS
// reached 44-46 MiB; at 16 MiB it is 39-40 MiB, and the GC runs about as
// often as without, at no CPU cost that the storms could tell apart (at
// 14 MiB it ran 25 % more often and spans were dropped; at 12 MiB the
// exporter took 70 % of a core and lost records). An idle exporter, or one
// with push off, stays below it: the limit costs nothing there. GOMEMLIMIT
// (off, or a size) overrides it.
const DefaultMemoryLimit = 16 << 20

// setDefaultMemoryLimit applies DefaultMemoryLimit unless GOMEMLIMIT is
// set, and returns the limit in force.
func setDefaultMemoryLimit(getenv func(string) string) int64 {
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(DefaultMemoryLimit)
	}
	return debug.SetMemoryLimit(-1)
}

type serveCommand struct {
	cmd         *kingpin.CmdClause
	web         *web.FlagConfig
	tracer      *tracerFlags
	chainWindow *time.Duration
	recWindow   *time.Duration
	loaderLimit *int
	metricsPath *string
	hold        *time.Duration
	pprof       *bool
	defaults    *defaultsFlag
	dropCaps    *bool

	// runTracer runs the tracer until ctx ends; nil is tr.Run. Tests
	// replace it to make the tracer fail.
	runTracer func(ctx context.Context, tr *tracer.Tracer, handle func(*tracer.LoadEvent)) error
}

func newServeCommand(app *kingpin.Application) *serveCommand {
	c := &serveCommand{cmd: app.Command("serve", "Serve Prometheus metrics on /metrics and push OpenTelemetry metrics and spans when OTEL_* asks (the default command).").Default()}
	c.web = kingpinflag.AddFlags(c.cmd, DefaultListenAddress)
	c.metricsPath = c.cmd.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").String()
	c.hold = c.cmd.Flag("metrics.new-series-hold", "Show each new per-loader series as zero on /metrics for this long before its real value, so that Prometheus stores its rise from zero and increase() counts a loader's first loads (and those after a restart). At least the scrape interval; 0: off.").Default("1m").Duration()
	c.pprof = c.cmd.Flag("web.enable-pprof", "Serve the Go runtime's profiles (net/http/pprof) under /debug/pprof/ and link them from the landing page.").Default("false").Bool()
	c.tracer = addTracerFlags(c.cmd)
	c.chainWindow = addChainWindowFlag(c.cmd)
	c.recWindow = c.cmd.Flag("recommend-window", "How far back bpf_verifier_log_recommended_buffer_bytes looks.").Default(sizing.DefaultRecommendWindow.String()).Duration()
	c.loaderLimit = c.cmd.Flag("loader-limit", "Distinct loader label values; later loaders are counted as \"other\".").Default(fmt.Sprint(sizing.DefaultLoaderLimit)).Int()
	c.defaults = addDefaultsFlag(c.cmd)
	c.dropCaps = addDropCapabilitiesFlag(c.cmd)
	return c
}

// run serves until ctx ends (SIGINT, SIGTERM) or something fails: the
// listeners or the web config at start, before anything is attached; the
// tracer or an HTTP server later. Either way it ends the same way:
// detach, end the open chains, flush, stop serving; and it returns the
// failure, if any.
func (c *serveCommand) run(ctx context.Context, logger *slog.Logger, build otel.BuildInfo) error {
	// Before attaching: loading the BPF programs parses the kernel's BTF,
	// the largest heap of the exporter's life.
	memLimit := setDefaultMemoryLimit(os.Getenv)
	listeners, err := listen(c.web)
	if err != nil {
		return err
	}
	defer closeListeners(listeners) // the servers close them too; again is harmless

	tr, err := tracer.New(c.tracer.options())
	if err != nil {
		return err
	}
	defer tr.Close()
	attachedAt := time.Now()
	logAttach(logger, tr)

	otel.LogSDKErrors(logger)
	tel, err := otel.Setup(ctx, build)
	if err != nil {
		return err
	}
	tel.Recorder.SetNewSeriesHold(*c.hold)
	cfg := otel.Config{MeterProvider: tel.MeterProvider, Recorder: tel.Recorder, Clock: tr.Clock(), ChainWindow: *c.chainWindow,
		LoaderLimit: *c.loaderLimit, RecommendWindow: *c.recWindow, Defaults: c.defaults.all(), Source: tr, Build: build}
	if tel.TracerProvider != nil {
		cfg.TracerProvider = tel.TracerProvider
	}
	pipe, err := otel.New(cfg)
	if err != nil {
		_ = tel.Shutdown(ctx)
		return err
	}
	logger.Info("telemetry", "prometheus_path", *c.metricsPath, "otlp_push", fmt.Sprint(tel.Pushing), "go_memory_limit_bytes", memLimit)
	dropCapabilitiesAndLog(logger, *c.dropCaps)

	// The first failure, or the signal, cancels ctx: the tracer detaches
	// and drains, the sweeper stops.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	scrape := &consistentScrape{pipe: pipe}

	var tracing atomic.Bool
	tracing.Store(true)
	runTracer := c.runTracer
	if runTracer == nil {
		runTracer = func(ctx context.Context, tr *tracer.Tracer, handle func(*tracer.LoadEvent)) error {
			return tr.Run(ctx, handle)
		}
	}

	mux := http.NewServeMux()
	mux.Handle(*c.metricsPath, promhttp.HandlerFor(scrape.gatherer(tel.Registry), promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError), EnableOpenMetrics: true}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !tracing.Load() {
			http.Error(w, "tracer stopped", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok: attached in %s mode\n", tr.Mode())
	})
	mux.HandleFunc("/recommendations", func(w http.ResponseWriter, _ *http.Request) {
		r := newReport(pipe.Recommendations())
		r.ObservedSeconds = min(r.WindowSeconds, time.Since(attachedAt).Seconds())
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
	})
	profiling := "false"
	if *c.pprof {
		profiling = "true"
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if *c.metricsPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "verifierlog exporter",
			Description: "Verifier-log buffer sizes of every BPF program and BTF load on this node",
			Version:     build.Version,
			Links: []web.LandingLinks{
				{Address: *c.metricsPath, Text: "Metrics"},
				{Address: "/recommendations", Text: "Recommended buffer sizes (JSON)"},
				{Address: "/healthz", Text: "Health"},
			},
			Profiling: profiling,
		})
		if err != nil {
			_ = tel.Shutdown(ctx)
			return err
		}
		mux.Handle("/", landing)
	}

	traceDone := make(chan error, 1)
	go func() {
		err := runTracer(ctx, tr, scrape.handle)
		tracing.Store(false)
		traceDone <- err
	}()
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				scrape.sweep(tracer.MonotonicNow())
			}
		}
	}()

	// One server per listener: web.Serve wraps its server's handler for
	// the web config, which listeners sharing one server would race on.
	serveFailed := make(chan error, len(listeners))
	servers := make([]*http.Server, len(listeners))
	for i, l := range listeners {
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
		servers[i] = srv
		go func() {
			if err := web.Serve(l, srv, c.web, logger); !errors.Is(err, http.ErrServerClosed) {
				serveFailed <- fmt.Errorf("http server on %s: %w", l.Addr(), err)
			}
		}()
	}

	var runErr error
	traceEnded := false
	select {
	case <-ctx.Done():
	case runErr = <-serveFailed:
	case err := <-traceDone:
		traceEnded = true
		if err == nil && ctx.Err() != nil {
			break // the signal, seen by Run first: it detached and drained
		}
		if err == nil {
			err = errors.New("stopped")
		}
		runErr = fmt.Errorf("tracer: %w", err)
		// Run failed with the hooks still attached: detach them now, and
		// keep the maps, whose lost counts the final metrics read.
		if err := tr.Suspend(); err != nil {
			logger.Warn("detaching after the tracer failed", "err", err)
		}
	}
	// Shut down in the order that loses nothing: the tracer detaches and
	// hands over what the ring buffer holds (Run returns); end the open
	// chains; flush the SDK; then stop serving.
	cancel()
	if !traceEnded {
		if err := <-traceDone; err != nil && runErr == nil {
			runErr = fmt.Errorf("tracer: %w", err)
		}
	}
	scrape.flush()
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShutdown()
	if err := tel.Shutdown(shutdownCtx); err != nil {
		logger.Warn("flushing telemetry", "err", err)
	}
	for _, srv := range servers {
		_ = srv.Shutdown(shutdownCtx)
	}
	lost, lostErr := tr.Lost()
	closeErr := tr.Close()
	logLost(logger, tr.Events(), lost, lostErr)
	if closeErr != nil {
		logger.Warn("detaching", "err", closeErr)
	}
	return runErr
}

// consistentScrape makes each scrape show one moment of the pipeline. A
// scrape reads the SDK's observable instruments first
// (verifierlog_exporter_events_total, the recommended sizes) and the
// Recorder's per-event series after them; a record handled in between
// would show in bpf_prog_loads_total but not yet in events_total. So the
// pipeline's changes and the Prometheus gather exclude each other: a
// scrape sees every handled record in events_total too (the tracer counts
// a record as read before handing it over).
type consistentScrape struct {
	mu   sync.Mutex
	pipe *otel.Pipeline
}

func (s *consistentScrape) handle(ev *tracer.LoadEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pipe.Handle(ev)
}

func (s *consistentScrape) sweep(nowNs uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pipe.Sweep(nowNs)
}

func (s *consistentScrape) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pipe.Flush()
}

func (s *consistentScrape) gatherer(g prometheus.Gatherer) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return g.Gather()
	})
}
