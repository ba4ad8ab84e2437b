// Command exporter is the verifierlog exporter: it watches every
// BPF_PROG_LOAD and BPF_BTF_LOAD on the node and reports how the loaders'
// verifier-log buffers fit the logs.
//
//	exporter [serve]   Prometheus /metrics, OTLP push when OTEL_* asks
//	exporter trace     one line per load attempt, until SIGINT/SIGTERM
//	exporter recommend buffer sizes per loader, from a running exporter or a trace
//	exporter loadgen   issue loads with chosen log settings (demo, tests)
//
// This package owns flags, subcommands, signals and output formats; the
// tracing is tracer's.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kingpin/v2"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	app := kingpin.New("exporter", "Watches every BPF program and BTF load on this node and reports whether the verifier-log buffers fit.")
	app.HelpFlag.Short('h')
	logLevel := app.Flag("log.level", "Log level: debug, info, warn, error.").Default("info").Enum("debug", "info", "warn", "error")

	serve := newServeCommand(app)
	trace := newTraceCommand(app)
	gen := newLoadgenCommand(app)
	rec := newRecommendCommand(app)

	cmd, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "exporter: %v (see exporter --help)\n", err)
		return 2
	}
	logger := newLogger(*logLevel)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	switch cmd {
	case serve.cmd.FullCommand():
		err = serve.run(ctx, logger)
	case trace.cmd.FullCommand():
		err = trace.run(ctx, logger, os.Stdout)
	case rec.cmd.FullCommand():
		err = rec.run(ctx, logger, os.Stdout)
	case gen.cmd.FullCommand():
		err = gen.run(ctx, os.Stdout)
	}
	if err != nil {
		logger.Error(err.Error())
		return 1
	}
	return 0
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
