package soak

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteSummary prints the samples over time, first/last/max of RSS,
// goroutines and CPU, the attempts per loader label, and the verdicts.
func (r *Result) WriteSummary(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "soak: %v, %d threads, attach %s (asked: %s), otel %s, a sample every %v\n\n", c.Duration, c.Threads, r.AttachMode, c.Attach, c.OTel, c.Interval)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "time\tphase\tissued\tseen\tevents\tlost\tRSS MiB\tgoroutines\tCPU %\t")
	for i, s := range r.Samples {
		cpu := "-"
		if i > 0 {
			cpu = fmt.Sprintf("%.1f", 100*cpuShare(r.Samples[i-1], s))
		}
		fmt.Fprintf(tw, "%v\t%s\t%d\t%d\t%d\t%d\t%.1f\t%d\t%s\t\n", s.At.Round(time.Second), s.Phase, s.Issued, s.Seen, s.Events, s.Lost, mib(s.RSS), s.Goroutines, cpu)
	}
	tw.Flush()

	if n := len(r.Samples); n > 0 {
		first, last := r.Samples[0], r.Samples[n-1]
		peak := first
		for _, s := range r.Samples {
			peak.RSS = max(peak.RSS, s.RSS)
			peak.Goroutines = max(peak.Goroutines, s.Goroutines)
		}
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "\tRSS MiB\tgoroutines\t")
		fmt.Fprintf(tw, "first\t%.1f\t%d\t\n", mib(first.RSS), first.Goroutines)
		fmt.Fprintf(tw, "last\t%.1f\t%d\t\n", mib(last.RSS), last.Goroutines)
		fmt.Fprintf(tw, "max\t%.1f\t%d\t\n", mib(peak.RSS), peak.Goroutines)
		tw.Flush()
		fmt.Fprintf(w, "exporter CPU over the run: %.1f%% of a core; %d attempts issued, %.0f/s\n",
			100*cpuShare(first, last), last.Issued, float64(last.Issued)/last.At.Seconds())
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "loader\tloads\tattempts issued\tattempts seen\t")
	for _, l := range r.Loaders {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t\n", l.Loader, l.Loads, l.Issued, l.Seen)
	}
	tw.Flush()
	if len(r.Lost) > 0 {
		fmt.Fprint(w, "\nlost by reason (whole run):")
		for _, k := range sortedReasons(r.Lost) {
			fmt.Fprintf(w, " %s %d", k, r.Lost[k])
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w)
	for _, v := range r.Verdicts {
		mark := "PASS"
		if !v.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "%s  %s: %s\n", mark, v.Name, v.Detail)
	}
	if r.OK() {
		fmt.Fprintln(w, "soak: PASS")
	} else {
		fmt.Fprintln(w, "soak: FAIL")
	}
}

// cpuShare is the exporter's CPU time between a and b over the wall time.
func cpuShare(a, b Sample) float64 {
	if b.At <= a.At {
		return 0
	}
	return (b.CPU - a.CPU).Seconds() / (b.At - a.At).Seconds()
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
