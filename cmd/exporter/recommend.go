package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/verifierlog/exporter/otel"
	"github.com/verifierlog/exporter/tracer"
)

// defaultsFlag collects --default NAME=BYTES.
type defaultsFlag []otel.Default

func (d *defaultsFlag) Set(v string) error {
	name, size, ok := strings.Cut(v, "=")
	n, err := strconv.ParseUint(size, 10, 32)
	if !ok || name == "" || err != nil {
		return fmt.Errorf("--default wants NAME=BYTES, got %q", v)
	}
	*d = append(*d, otel.Default{Name: name, Bytes: uint32(n)})
	return nil
}

func (d *defaultsFlag) String() string { return fmt.Sprint(*d) }

func (d *defaultsFlag) IsCumulative() bool { return true }

// all is the well-known defaults and the ones given with --default.
func (d *defaultsFlag) all() []otel.Default {
	return append(append([]otel.Default{}, otel.WellKnownDefaults...), *d...)
}

func addDefaultsFlag(cmd *kingpin.CmdClause) *defaultsFlag {
	d := &defaultsFlag{}
	cmd.Flag("default", "Also report what this buffer size would do (NAME=BYTES; repeatable). The well-known loader defaults are always reported.").SetValue(d)
	return d
}

type recommendCommand struct {
	cmd      *kingpin.CmdClause
	from     *string
	duration *time.Duration
	tracer   *tracerFlags
	output   *string
	defaults *defaultsFlag
}

func newRecommendCommand(app *kingpin.Application) *recommendCommand {
	c := &recommendCommand{cmd: app.Command("recommend", "Print recommended verifier-log buffer sizes per loader: from a running exporter (--from) or by tracing for --duration.")}
	c.from = c.cmd.Flag("from", "A running exporter's URL (e.g. http://node:9435); its /recommendations is read.").String()
	c.duration = c.cmd.Flag("duration", "Without --from: trace this long, then report.").Default("60s").Duration()
	c.tracer = addTracerFlags(c.cmd)
	c.output = c.cmd.Flag("output", "table or json.").Short('o').Default("table").Enum("table", "json")
	c.defaults = addDefaultsFlag(c.cmd)
	return c
}

func (c *recommendCommand) run(ctx context.Context, logger *slog.Logger, out io.Writer) error {
	var rec otel.Recommendations
	if *c.from != "" {
		var err error
		if rec, err = fetchRecommendations(ctx, *c.from); err != nil {
			return err
		}
	} else {
		tr, err := tracer.New(c.tracer.options())
		if err != nil {
			return err
		}
		defer tr.Close()
		logAttach(logger, tr)
		pipe, err := otel.New(otel.Config{MeterProvider: noop.NewMeterProvider(), Clock: tr.Clock(), Defaults: c.defaults.all()})
		if err != nil {
			return err
		}
		traceCtx, cancel := context.WithTimeout(ctx, *c.duration)
		defer cancel()
		logger.Info("tracing", "duration", *c.duration)
		if err := tr.Run(traceCtx, pipe.Handle); err != nil {
			return err
		}
		pipe.Flush()
		rec = pipe.Recommendations()
	}
	if *c.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rec)
	}
	return writeRecommendations(out, rec)
}

func fetchRecommendations(ctx context.Context, base string) (otel.Recommendations, error) {
	var rec otel.Recommendations
	url := strings.TrimSuffix(base, "/")
	if !strings.HasSuffix(url, "/recommendations") {
		url += "/recommendations"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return rec, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rec, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return rec, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&rec); err != nil {
		return rec, fmt.Errorf("GET %s: %w", url, err)
	}
	return rec, nil
}

// writeRecommendations prints the table an SRE pastes into a ticket, then
// what each default would have done.
func writeRecommendations(w io.Writer, rec otel.Recommendations) error {
	const row = "%-13s %-16s %7s %9s %9s %9s %9s %12s %12s  %s\n"
	fmt.Fprintf(w, "Window: %v\n\n", time.Duration(rec.WindowSeconds*float64(time.Second)))
	fmt.Fprintf(w, row, "COMMAND", "LOADER", "LOADS", "TRUNCATED", "P50_NEED", "P99_NEED", "MAX_NEED", "RECOMMENDED", "TYPICAL_BUF", "VERDICT")
	for _, l := range rec.Loaders {
		p50, p99, maxNeed, recommended := "?", "?", "?", "?"
		if l.NeedsKnown > 0 {
			p50, p99 = "≤"+humanBytes(l.NeedP50Bytes), "≤"+humanBytes(l.NeedP99Bytes)
			maxNeed = humanBytes(uint64(l.NeedMaxBytes))
		}
		if r, ok := l.Recommended["1"]; ok {
			recommended = humanBytes(r)
		} else if l.UnknownNeedAboveBytes > 0 {
			recommended = ">" + humanBytes(uint64(l.UnknownNeedAboveBytes))
		}
		typical := "-"
		if l.TypicalBufferBytes > 0 {
			typical = humanBytes(uint64(l.TypicalBufferBytes))
		}
		fmt.Fprintf(w, row, clip(l.Command, 13), clip(l.Loader, 16), strconv.FormatUint(l.Loads, 10), strconv.FormatUint(l.Truncated, 10),
			p50, p99, maxNeed, recommended, typical, l.Verdict)
	}
	fmt.Fprintf(w, "\nWhat each default would have done to the logs seen (truncated share / average unused bytes per load):\n")
	for _, l := range rec.Loaders {
		if l.NeedsKnown == 0 {
			continue
		}
		fmt.Fprintf(w, "%s %s:", l.Command, l.Loader)
		for _, d := range l.Defaults {
			fmt.Fprintf(w, "  %s %s: %.1f%% / %s", d.Name, humanBytes(uint64(d.Bytes)), 100*d.TruncatedFraction, humanBytes(uint64(d.AvgWasteBytes)))
		}
		fmt.Fprintln(w)
	}
	return nil
}
