package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"

	"github.com/alecthomas/kingpin/v2"

	"github.com/verifierlog/exporter/tracer"
)

type traceCommand struct {
	cmd      *kingpin.CmdClause
	tracer   *tracerFlags
	output   *string
	dropCaps *bool
}

func newTraceCommand(app *kingpin.Application) *traceCommand {
	c := &traceCommand{cmd: app.Command("trace", "Print one line per BPF_PROG_LOAD / BPF_BTF_LOAD attempt until SIGINT or SIGTERM.")}
	c.tracer = addTracerFlags(c.cmd)
	c.output = c.cmd.Flag("output", "table (aligned columns, human sizes) or json (one object per line).").Short('o').Default("table").Enum("table", "json")
	c.dropCaps = addDropCapabilitiesFlag(c.cmd)
	return c
}

func (c *traceCommand) run(ctx context.Context, logger *slog.Logger, stdout io.Writer) error {
	tr, err := tracer.New(c.tracer.options())
	if err != nil {
		return err
	}
	defer tr.Close()
	logAttach(logger, tr)
	dropCapabilitiesAndLog(logger, *c.dropCaps)

	w := bufio.NewWriter(stdout)
	var write func(*tracer.LoadEvent) error
	switch *c.output {
	case "json":
		enc := json.NewEncoder(w)
		write = func(ev *tracer.LoadEvent) error { return enc.Encode(ev.Record(tr.Clock())) }
	default:
		// The header goes out at once, so that a trace with no load yet
		// does not look dead.
		table := newTableWriter(w, tr.Clock())
		if err := table.header(); err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
		write = table.row
	}
	var writeErr error
	err = tr.Run(ctx, func(ev *tracer.LoadEvent) {
		if writeErr != nil {
			return
		}
		if writeErr = write(ev); writeErr == nil {
			writeErr = w.Flush()
		}
	})
	if err == nil {
		err = writeErr
	}
	if flushErr := w.Flush(); err == nil {
		err = flushErr
	}
	lost, lostErr := tr.Lost()
	logLost(logger, tr.Events(), lost, lostErr)
	return err
}

// logAttach says which mode is in use and why the modes tried before it
// failed.
func logAttach(logger *slog.Logger, tr *tracer.Tracer) {
	for _, a := range tr.Attempts() {
		if a.Err != nil {
			logger.Info("attach mode unavailable", "mode", a.Mode, "reason", a.Err)
		}
	}
	if lacks := tr.VariantLacks(); len(lacks) > 0 {
		logger.Info("using the compat BPF programs", "kernel_lacks", strings.Join(lacks, ", "))
	}
	logger.Info("attached", "mode", tr.Mode(), "bpf_variant", tr.Variant(), "kernel", tr.KernelRelease(), "log_true_size_supported", tr.LogTrueSizeSupported())
	for _, n := range tr.Notes() {
		logger.Warn("attach limitation", "note", n)
	}
}

// logLost says that the tracer detached, and what it could not record.
func logLost(logger *slog.Logger, events uint64, lost map[tracer.LostReason]uint64, err error) {
	if err != nil {
		logger.Warn("detached; cannot read lost-event counters", "events", events, "err", err)
		return
	}
	attrs := []any{"events", events}
	var total uint64
	for _, reason := range tracer.LostReasons() {
		attrs = append(attrs, "lost_"+string(reason), lost[reason])
		total += lost[reason]
	}
	if total > 0 {
		logger.Warn("detached; some load attempts were not recorded", attrs...)
		return
	}
	logger.Info("detached", attrs...)
}
