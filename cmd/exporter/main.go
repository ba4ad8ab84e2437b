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
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	promversion "github.com/prometheus/common/version"

	"github.com/verifierlog/exporter/otel"
)

// version is set at build time with -ldflags "-X main.version=...". A
// plain `go build` leaves it empty and the module version Go stamped from
// the checkout is used (buildInfo).
var version = ""

// buildInfo is this binary's version and revision, the same for --version
// and verifierlog_exporter_build_info: -X main.version (or
// prometheus/common/version's -X variables) where the build set them,
// otherwise what `go build` stamped: the module version from the VCS tag,
// or a pseudo-version for an untagged commit, and vcs.revision.
var buildInfo = sync.OnceValue(func() otel.BuildInfo {
	v := version
	if v == "" {
		v = promversion.Version
	}
	b := otel.ReadBuildInfo(v)
	if promversion.Revision != "" {
		b.Revision = promversion.Revision
	}
	promversion.Version, promversion.Revision = b.Version, b.Revision
	for _, v := range []*string{&promversion.Branch, &promversion.BuildUser, &promversion.BuildDate} {
		if *v == "" {
			*v = "unknown"
		}
	}
	return b
})

// usageTemplate is kingpin's, plus, for `exporter --help`, the flags of the
// default command: `exporter --flag` is `exporter serve --flag`.
var usageTemplate = kingpin.DefaultUsageTemplate + `{{if not .Context.SelectedCommand -}}
{{range .App.Commands}}{{if .Default}}
Flags of {{.FullCommand}}, the default command ({{$.App.Name}} --flag is {{$.App.Name}} {{.FullCommand}} --flag):
{{.Flags|FlagsToTwoColumns|FormatTwoColumns}}
{{end}}{{end -}}
{{end -}}
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	build := buildInfo()
	app := kingpin.New("exporter", "Watches every BPF program and BTF load on this node and reports whether the verifier-log buffers fit.")
	app.HelpFlag.Short('h')
	app.UsageWriter(os.Stdout)
	app.UsageTemplate(usageTemplate)
	app.Version(promversion.Print("exporter"))
	logConfig := &promslog.Config{Writer: os.Stderr}
	promslogflag.AddFlags(app, logConfig)

	serve := newServeCommand(app)
	trace := newTraceCommand(app)
	gen := newLoadgenCommand(app)
	rec := newRecommendCommand(app)

	cmd, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "exporter: %v (see exporter --help)\n", err)
		return 2
	}
	logger := promslog.New(logConfig)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	switch cmd {
	case serve.cmd.FullCommand():
		err = serve.run(ctx, logger, build)
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
