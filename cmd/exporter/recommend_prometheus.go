package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/verifierlog/exporter/fleet"
)

// fleetFlags are recommend's flags for a fleet report from Prometheus.
type fleetFlags struct {
	prometheus *string
	selector   *string
	window     *string
	histograms *string
	at         *string
}

func addFleetFlags(cmd *kingpin.CmdClause) fleetFlags {
	return fleetFlags{
		prometheus: cmd.Flag("prometheus", "Report for the whole fleet: the URL of the Prometheus (or compatible API) that scrapes the exporters, e.g. http://prometheus:9090.").String(),
		selector:   cmd.Flag("selector", `With --prometheus: label matchers every series must match, e.g. '{cluster="prod"}' or 'cluster="prod"'.`).String(),
		window:     cmd.Flag("window", "With --prometheus: how far back to look (Prometheus durations: 30d, 12h, 1w).").Default("30d").String(),
		histograms: cmd.Flag("histograms", "With --prometheus: read classic or native histograms; auto: native where the window has them, else classic.").Default("auto").Enum("auto", "classic", "native"),
		at:         cmd.Flag("time", "With --prometheus: evaluate at this time (RFC 3339 or Unix seconds) instead of now.").Hidden().String(),
	}
}

// options are the flags as fleet.Options.
func (f fleetFlags) options() (fleet.Options, error) {
	w, err := model.ParseDuration(*f.window)
	if err != nil || w <= 0 {
		return fleet.Options{}, fmt.Errorf("--window %q: want a Prometheus duration such as 30d or 12h", *f.window)
	}
	o := fleet.Options{Selector: *f.selector, Window: time.Duration(w), Histograms: fleet.Histograms(*f.histograms)}
	if *f.at != "" {
		if o.Time, err = parseTime(*f.at); err != nil {
			return o, fmt.Errorf("--time %q: want RFC 3339 or Unix seconds", *f.at)
		}
	}
	return o, nil
}

func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	secs, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(int64(secs * 1000)), nil
}

// runFleet prints the fleet report from --prometheus.
func (c *recommendCommand) runFleet(ctx context.Context, out io.Writer) error {
	opts, err := c.fleet.options()
	if err != nil {
		return err
	}
	opts.Defaults = c.defaults.all()
	rep, err := queryFleet(ctx, *c.fleet.prometheus, opts)
	if err != nil {
		return err
	}
	if *c.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return writeFleetReport(out, rep)
}

// queryFleet runs fleet.Query against the Prometheus at base, its errors
// one line naming the server.
func queryFleet(ctx context.Context, base string, opts fleet.Options) (fleet.Report, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fleet.Report{}, fmt.Errorf("--prometheus %q: want an http(s) URL such as http://prometheus:9090", base)
	}
	client, err := api.NewClient(api.Config{Address: base})
	if err != nil {
		return fleet.Report{}, fmt.Errorf("--prometheus %s: %w", base, err)
	}
	rep, err := fleet.Query(ctx, v1.NewAPI(client), opts)
	if err != nil {
		var apiErr *v1.Error
		switch {
		case errors.Is(err, fleet.ErrNoSeries):
			return rep, fmt.Errorf("Prometheus at %s: %w", base, err)
		case errors.As(err, &apiErr) && apiErr.Type == v1.ErrClient:
			// Not an error response: the server could not be reached or
			// did not answer as Prometheus does.
			return rep, fmt.Errorf("Prometheus at %s: %s", base, oneLine(apiErr.Msg))
		}
		return rep, fmt.Errorf("Prometheus at %s: %s", base, oneLine(err.Error()))
	}
	return rep, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// writeFleetReport prints the fleet report as recommend prints one node's:
// the table, then what each default would have done, saying which figures
// are exact counts and which are bucket bounds.
func writeFleetReport(w io.Writer, rep fleet.Report) error {
	bw := bufio.NewWriter(w)
	nodes := "nodes"
	if rep.Nodes == 1 {
		nodes = "node"
	}
	fmt.Fprintf(bw, "Fleet: %d %s matching %s, the %s before %s (Prometheus, %s histograms)\n\n", rep.Nodes, nodes, rep.Selector,
		model.Duration(time.Duration(rep.WindowSeconds*float64(time.Second))), rep.Time.Format(time.RFC3339), rep.Histograms)
	row := func(cmd, loader, loads, unknown, trunc, p50, p99, maxNeed, rec, buf, verdict string) {
		fmt.Fprintf(bw, "%-4s %-15s %7s %6s %6s %8s %8s %8s %9s %8s  %s\n", cmd, loader, loads, unknown, trunc, p50, p99, maxNeed, rec, buf, verdict)
	}
	row("CMD", "LOADER", "LOADS", "UNKN", "TRUNC", "P50_NEED", "P99_NEED", "MAX_NEED", "RECOMMEND", "TYP_BUF", "VERDICT")
	for _, l := range rep.Loaders {
		p50, p99, maxNeed, rec, buf := "?", "?", "?", "?", "-"
		if l.NeedsKnown > 0 {
			p50, p99, maxNeed = atMost(l.NeedP50Bytes), atMost(l.NeedP99Bytes), atMost(l.NeedMaxAtMostBytes)
		}
		if r, ok := l.Recommended["1"]; ok {
			rec = humanBytes(r)
		} else if l.NeedsKnown > 0 {
			rec = ">" + humanBytes(l.NeedMaxAboveBytes)
		}
		if l.TypicalBufferAtMostBytes > 0 {
			buf = "≤" + humanBytes(l.TypicalBufferAtMostBytes)
		}
		row(shortCommand(l.Command), clip(l.Loader, 15), strconv.FormatUint(l.Loads, 10), strconv.FormatUint(l.UnknownNeeds, 10),
			strconv.FormatUint(l.Truncated, 10), p50, p99, maxNeed, rec, buf, string(l.Verdict))
	}
	fmt.Fprintln(bw)
	fmt.Fprintln(bw, "Exact counts over the fleet (each series' increase() rounded, then added, so exporter")
	fmt.Fprintln(bw, "  restarts and nodes that joined or left count right): LOADS, logical loads (retry")
	fmt.Fprintln(bw, "  chains) ended; UNKN, those whose need stayed unknown; TRUNC, attempts that got ENOSPC.")
	fmt.Fprintln(bw, "Bucket bounds, not exact: P50/P99/MAX_NEED ≤N: the need is at most N, a power of two;")
	fmt.Fprintln(bw, "  RECOMMEND: the smallest power of two that held every known need; TYP_BUF: the bucket")
	fmt.Fprintln(bw, "  of the log_size attempts passed most often (retries included), as its upper bound.")

	fmt.Fprintln(bw)
	fmt.Fprintln(bw, "What each default would have done to the logs whose need is known (a-b: the default lies")
	fmt.Fprintln(bw, "inside a bucket, so the share is between a and b; waste: bucket bounds, or ~ from the sum):")
	for _, l := range rep.Loaders {
		if l.NeedsKnown == 0 {
			continue
		}
		writeDefaultsHeading(bw, l.Command, l.Loader, l.NeedsKnown)
		for _, d := range l.Defaults {
			fmt.Fprintf(bw, "  %-20s %8s  truncates %10s  leaves %17s unused per load held\n", clip(d.Name, 20), humanBytes(uint64(d.Bytes)), truncatedCell(d), wasteCell(d))
		}
	}
	return bw.Flush()
}

// atMost is an upper bound's cell; 0 is above 1 GiB.
func atMost(n uint64) string {
	if n == 0 {
		return ">1GiB"
	}
	return "≤" + humanBytes(n)
}

func truncatedCell(d fleet.DefaultReport) string {
	if d.TruncatedFraction != nil {
		return strconv.FormatFloat(100**d.TruncatedFraction, 'f', 1, 64) + "%"
	}
	return strconv.FormatFloat(100*d.TruncatedAtLeast, 'f', 1, 64) + "-" + strconv.FormatFloat(100*d.TruncatedAtMost, 'f', 1, 64) + "%"
}

func wasteCell(d fleet.DefaultReport) string {
	switch {
	case d.AvgWasteBytes != nil:
		return "~" + humanBytes(uint64(max(*d.AvgWasteBytes, 0)))
	case d.TruncatedFraction != nil && *d.TruncatedFraction == 1:
		return "-" // it held none
	}
	return humanBytes(uint64(d.AvgWasteAtLeast)) + "-" + humanBytes(uint64(d.AvgWasteAtMost))
}
