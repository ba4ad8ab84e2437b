package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/verifierlog/exporter/otel"
	"github.com/verifierlog/exporter/tracer"
)

// DefaultListenAddress is where `exporter` serves /metrics unless told.
const DefaultListenAddress = ":9435"

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

type serveCommand struct {
	cmd         *kingpin.CmdClause
	web         *web.FlagConfig
	tracer      *tracerFlags
	chainWindow *time.Duration
	recWindow   *time.Duration
	loaderLimit *int
	metricsPath *string
	defaults    *defaultsFlag
	dropCaps    *bool
}

func newServeCommand(app *kingpin.Application) *serveCommand {
	c := &serveCommand{cmd: app.Command("serve", "Serve Prometheus metrics on /metrics and push OpenTelemetry metrics and spans when OTEL_* asks (the default command).").Default()}
	c.web = kingpinflag.AddFlags(c.cmd, DefaultListenAddress)
	c.metricsPath = c.cmd.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").String()
	c.tracer = addTracerFlags(c.cmd)
	c.chainWindow = c.cmd.Flag("chain-window", "A retry starting within this long after the previous attempt's end belongs to the same logical load.").Default(otel.DefaultChainWindow.String()).Duration()
	c.recWindow = c.cmd.Flag("recommend-window", "How far back bpf_verifier_log_recommended_buffer_bytes looks.").Default(otel.DefaultRecommendWindow.String()).Duration()
	c.loaderLimit = c.cmd.Flag("loader-limit", "Distinct loader label values; later loaders are counted as \"other\".").Default(fmt.Sprint(otel.DefaultLoaderLimit)).Int()
	c.defaults = addDefaultsFlag(c.cmd)
	c.dropCaps = addDropCapabilitiesFlag(c.cmd)
	return c
}

func (c *serveCommand) run(ctx context.Context, logger *slog.Logger) error {
	build := otel.ReadBuildInfo(version)
	tr, err := tracer.New(c.tracer.options())
	if err != nil {
		return err
	}
	defer tr.Close()
	logAttach(logger, tr)

	otel.LogSDKErrors(logger)
	tel, err := otel.Setup(ctx, build)
	if err != nil {
		return err
	}
	cfg := otel.Config{MeterProvider: tel.MeterProvider, Recorder: tel.Recorder, Clock: tr.Clock(), ChainWindow: *c.chainWindow,
		LoaderLimit: *c.loaderLimit, RecommendWindow: *c.recWindow, Defaults: c.defaults.all(), Source: tr, Build: build}
	if tel.TracerProvider != nil {
		cfg.TracerProvider = tel.TracerProvider
	}
	pipe, err := otel.New(cfg)
	if err != nil {
		return err
	}
	logger.Info("telemetry", "prometheus_path", *c.metricsPath, "otlp_push", fmt.Sprint(tel.Pushing))
	listenAddrs := *c.web.WebListenAddresses
	if *c.web.WebSystemdSocket {
		listenAddrs = nil // systemd has bound them
	}
	dropCapabilitiesAndLog(logger, *c.dropCaps, listenAddrs)

	var tracing atomic.Bool
	tracing.Store(true)
	traceErr := make(chan error, 1)
	go func() {
		traceErr <- tr.Run(ctx, pipe.Handle)
		tracing.Store(false)
	}()
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				pipe.Sweep(tracer.MonotonicNow())
			}
		}
	}()

	mux := http.NewServeMux()
	mux.Handle(*c.metricsPath, promhttp.HandlerFor(tel.Registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError), EnableOpenMetrics: true}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !tracing.Load() {
			http.Error(w, "tracer stopped", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok: attached in %s mode\n", tr.Mode())
	})
	mux.HandleFunc("/recommendations", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(pipe.Recommendations())
	})
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
		})
		if err != nil {
			return err
		}
		mux.Handle("/", landing)
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- web.ListenAndServe(server, c.web, logger) }()

	var runErr error
	select {
	case <-ctx.Done():
		runErr = <-traceErr
	case runErr = <-traceErr:
		if runErr == nil {
			runErr = errors.New("tracer stopped")
		}
	case err := <-serveErr:
		runErr = fmt.Errorf("http server: %w", err)
	}
	// Shut down in the order that loses nothing: the tracer has detached
	// and drained (Run returned); end the open chains; flush the SDK; then
	// stop serving.
	if ctx.Err() == nil {
		<-traceErr
	}
	pipe.Flush()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(shutdownCtx); err != nil {
		logger.Warn("flushing telemetry", "err", err)
	}
	_ = server.Shutdown(shutdownCtx)
	logLost(logger, tr)
	return runErr
}
