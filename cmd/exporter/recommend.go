package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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
	"github.com/verifierlog/exporter/sizing"
	"github.com/verifierlog/exporter/tracer"
)

// defaultsFlag collects --default NAME=BYTES.
type defaultsFlag []sizing.Default

func (d *defaultsFlag) Set(v string) error {
	name, size, ok := strings.Cut(v, "=")
	n, err := strconv.ParseUint(size, 10, 32)
	if !ok || name == "" || err != nil {
		return fmt.Errorf("--default wants NAME=BYTES, got %q", v)
	}
	*d = append(*d, sizing.Default{Name: name, Bytes: uint32(n)})
	return nil
}

func (d *defaultsFlag) String() string { return fmt.Sprint(*d) }

func (d *defaultsFlag) IsCumulative() bool { return true }

// all is the well-known defaults and the ones given with --default.
func (d *defaultsFlag) all() []sizing.Default {
	return append(append([]sizing.Default{}, sizing.WellKnownDefaults...), *d...)
}

func addDefaultsFlag(cmd *kingpin.CmdClause) *defaultsFlag {
	d := &defaultsFlag{}
	cmd.Flag("default", "Also report what this buffer size would do (NAME=BYTES; repeatable). The well-known loader defaults are always reported.").SetValue(d)
	return d
}

// addChainWindowFlag is --chain-window, the same for serve and recommend.
func addChainWindowFlag(cmd *kingpin.CmdClause) *time.Duration {
	return cmd.Flag("chain-window", "A retry starting within this long after the previous attempt's end belongs to the same logical load.").Default(sizing.DefaultChainWindow.String()).Duration()
}

type recommendCommand struct {
	cmd         *kingpin.CmdClause
	from        *string
	duration    *time.Duration
	tracer      *tracerFlags
	chainWindow *time.Duration
	output      *string
	defaults    *defaultsFlag
	fleet       fleetFlags
}

func newRecommendCommand(app *kingpin.Application) *recommendCommand {
	c := &recommendCommand{cmd: app.Command("recommend", "Print recommended verifier-log buffer sizes per loader: from a running exporter (--from), for a fleet from Prometheus (--prometheus) or by tracing for --duration.")}
	c.from = c.cmd.Flag("from", "A running exporter's URL (e.g. http://node:19435); its /recommendations is read.").String()
	c.fleet = addFleetFlags(c.cmd)
	c.duration = c.cmd.Flag("duration", "Without --from: trace this long (or until SIGINT or SIGTERM), then report.").Default("60s").Duration()
	c.tracer = addTracerFlags(c.cmd)
	c.chainWindow = addChainWindowFlag(c.cmd)
	c.output = c.cmd.Flag("output", "table or json.").Short('o').Default("table").Enum("table", "json")
	c.defaults = addDefaultsFlag(c.cmd)
	return c
}

func (c *recommendCommand) run(ctx context.Context, logger *slog.Logger, out io.Writer) error {
	if *c.fleet.prometheus != "" {
		if *c.from != "" {
			return errors.New("recommend: --from and --prometheus exclude each other")
		}
		return c.runFleet(ctx, out)
	}
	var rep report
	if *c.from != "" {
		var err error
		if rep, err = fetchRecommendations(ctx, *c.from); err != nil {
			return err
		}
	} else {
		var err error
		if rep, err = c.trace(ctx, logger); err != nil {
			return err
		}
	}
	if *c.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return writeRecommendations(out, rep)
}

// trace attaches for --duration (or until SIGINT/SIGTERM) and reports what
// it saw. The chains still open at the end are reported as open, with what
// they proved so far.
func (c *recommendCommand) trace(ctx context.Context, logger *slog.Logger) (report, error) {
	tr, err := tracer.New(c.tracer.options())
	if err != nil {
		return report{}, err
	}
	defer tr.Close()
	logAttach(logger, tr)
	pipe, err := otel.New(otel.Config{MeterProvider: noop.NewMeterProvider(), Clock: tr.Clock(), ChainWindow: *c.chainWindow, Defaults: c.defaults.all()})
	if err != nil {
		return report{}, err
	}
	traceCtx, cancel := context.WithTimeout(ctx, *c.duration)
	defer cancel()
	logger.Info("tracing", "duration", *c.duration)
	start := time.Now()
	if err := tr.Run(traceCtx, pipe.Handle); err != nil {
		return report{}, err
	}
	observed := time.Since(start)
	// Chains whose window has passed are ended, not open.
	pipe.Sweep(tracer.MonotonicNow())
	rep := newReport(pipe.Recommendations())
	rep.ObservedSeconds = min(rep.WindowSeconds, observed.Seconds())
	rep.traced = true
	return rep, nil
}

// report is what `recommend` prints and /recommendations serves: otel's
// recommendations, how long the loads were actually watched, and, where
// known, the chains still open.
type report struct {
	// WindowSeconds is the window recommendations look back over
	// (--recommend-window).
	WindowSeconds float64 `json:"window_seconds"`
	// ObservedSeconds is how much of it was watched: the trace's own
	// duration, or the time since the serving exporter attached, at most
	// the window. 0: not said (an older exporter).
	ObservedSeconds float64               `json:"observed_seconds,omitempty"`
	Loaders         []sizing.LoaderReport `json:"loaders"`

	traced bool // made by `recommend --duration`, not fetched
}

func newReport(r sizing.Recommendations) report {
	return report{WindowSeconds: r.WindowSeconds, Loaders: r.Loaders}
}

func fetchRecommendations(ctx context.Context, base string) (report, error) {
	var rep report
	url := strings.TrimSuffix(base, "/")
	if !strings.HasSuffix(url, "/recommendations") {
		url += "/recommendations"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return rep, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rep, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return rep, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return rep, fmt.Errorf("GET %s: %w", url, err)
	}
	return rep, nil
}

// seconds prints a report's durations: whole seconds, or milliseconds
// below ten seconds.
func seconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	if d < 10*time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// windowLine says which span of time the figures cover.
func windowLine(r report) string {
	window := seconds(r.WindowSeconds)
	switch {
	case r.traced:
		return "Window: " + seconds(r.ObservedSeconds) + ", traced by this command"
	case r.ObservedSeconds == 0:
		return "Window: at most " + window + " (the exporter's --recommend-window; it does not say how long it has watched)"
	case r.ObservedSeconds < r.WindowSeconds:
		return "Window: " + seconds(r.ObservedSeconds) + ", since the exporter attached (its --recommend-window is " + window + ")"
	}
	return "Window: " + window + " (the exporter's --recommend-window)"
}

// needCells are a loader's MAX_NEED and RECOMMENDED cells. Where a chain's
// need stayed unknown, its proven lower bound ("above N": the largest
// buffer that got ENOSPC) shows wherever it exceeds what the known needs
// say.
func needCells(l sizing.LoaderReport) (maxNeed, recommended string) {
	above := uint64(l.OpenNeedAboveBytes)
	if l.UnknownNeeds > 0 {
		above = max(above, uint64(l.UnknownNeedAboveBytes))
	}
	maxNeed, recommended = "?", "?"
	if l.NeedsKnown > 0 {
		maxNeed = humanBytes(uint64(l.NeedMaxBytes))
	}
	if above > 0 && (l.NeedsKnown == 0 || above >= uint64(l.NeedMaxBytes)) {
		maxNeed = ">" + humanBytes(above)
	}
	if r, ok := l.Recommended["1"]; ok {
		recommended = humanBytes(r)
	}
	if above > 0 {
		if r, ok := l.Recommended["1"]; !ok || above >= r {
			recommended = ">" + humanBytes(above)
		}
	}
	return maxNeed, recommended
}

// writeRecommendations prints the table an SRE pastes into a ticket, then
// what each default would have done. Every line but the table's fits 100
// columns; the table's do unless a verdict is long.
func writeRecommendations(w io.Writer, rep report) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "%s\n\n", windowLine(rep))
	row := func(cmd, loader, loads, openCell, trunc, p50, p99, maxNeed, rec, buf, verdict string) {
		fmt.Fprintf(bw, "%-4s %-15s %5s %4s %5s %8s %8s %9s %9s %9s  %s\n", cmd, loader, loads, openCell, trunc, p50, p99, maxNeed, rec, buf, verdict)
	}
	row("CMD", "LOADER", "LOADS", "OPEN", "TRUNC", "P50_NEED", "P99_NEED", "MAX_NEED", "RECOMMEND", "FIRST_BUF", "VERDICT")
	for _, l := range rep.Loaders {
		p50, p99 := "?", "?"
		if l.NeedsKnown > 0 {
			p50, p99 = "≤"+humanBytes(l.NeedP50Bytes), "≤"+humanBytes(l.NeedP99Bytes)
		}
		maxNeed, recommended := needCells(l)
		buf := "-"
		if l.FirstBufferBytes > 0 {
			buf = humanBytes(uint64(l.FirstBufferBytes))
		}
		openCell := strconv.FormatUint(l.OpenChains, 10)
		row(shortCommand(l.Command), clip(l.Loader, 15), strconv.FormatUint(l.Loads, 10), openCell, strconv.FormatUint(l.Truncated, 10),
			p50, p99, maxNeed, recommended, buf, string(l.Verdict))
	}
	fmt.Fprintln(bw)
	fmt.Fprintln(bw, "LOADS: logical loads (retry chains) ended; OPEN: chains not ended yet (a retry may still")
	fmt.Fprintln(bw, "  come), not in LOADS; TRUNC: attempts that got ENOSPC.")
	fmt.Fprintln(bw, "P50/P99_NEED: power-of-two bounds of the needs measured; MAX_NEED is exact; >N: a need")
	fmt.Fprintln(bw, "  nobody measured (an open chain's too) is above N, the largest buffer that got ENOSPC.")
	fmt.Fprintln(bw, "RECOMMEND: the smallest power of two that held every log. FIRST_BUF: the log_size most")
	fmt.Fprintln(bw, "  chains' first attempts passed: the loader's default, whatever its retries pass.")

	fmt.Fprintln(bw)
	fmt.Fprintln(bw, "What each default would have done to the logs whose need is known:")
	for _, l := range rep.Loaders {
		if l.NeedsKnown == 0 {
			continue
		}
		writeDefaultsHeading(bw, l.Command, l.Loader, l.NeedsKnown)
		for _, d := range l.Defaults {
			unused := "-" // it held none
			if d.TruncatedFraction < 1 {
				unused = humanBytes(uint64(d.AvgWasteBytes))
			}
			fmt.Fprintf(bw, "  %-24s %9s  truncates %6.1f%%  leaves %9s unused per load it held\n", clip(d.Name, 24), humanBytes(uint64(d.Bytes)), 100*d.TruncatedFraction, unused)
		}
	}
	return bw.Flush()
}

// writeDefaultsHeading starts a loader's lines of what each default would
// have done to its known needs.
func writeDefaultsHeading(w io.Writer, command, loader string, known uint64) {
	loads := "loads"
	if known == 1 {
		loads = "load"
	}
	fmt.Fprintf(w, "%s %s (%d %s):\n", shortCommand(command), loader, known, loads)
}

// shortCommand is PROG or BTF, as in `exporter trace`.
func shortCommand(c string) string {
	switch c {
	case tracer.CmdProgLoad.String():
		return "PROG"
	case tracer.CmdBTFLoad.String():
		return "BTF"
	}
	return c
}
