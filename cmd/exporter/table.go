package main

import (
	"fmt"
	"io"
	"strconv"

	"github.com/verifierlog/exporter/tracer"
)

// tableWriter prints records as fixed-width columns, so that a stream of
// lines stays aligned without buffering.
type tableWriter struct {
	w     io.Writer
	clock tracer.WallClock
}

func newTableWriter(w io.Writer, clock tracer.WallClock) *tableWriter {
	return &tableWriter{w: w, clock: clock}
}

const tableFormat = "%-12s %-15s %7s %7s %-4s %-14s %-15s %-8s %8s %8s %-8s %-5s %9s\n"

func (t *tableWriter) header() error {
	_, err := fmt.Fprintf(t.w, tableFormat, "TIME", "COMM", "PID", "TID", "CMD", "PROG_TYPE", "PROG_NAME",
		"LOG", "BUF", "NEED", "RESULT", "TRUNC", "DURATION")
	return err
}

func (t *tableWriter) row(ev *tracer.LoadEvent) error {
	cmd, progType := "BTF", "-"
	if ev.Command == tracer.CmdProgLoad {
		cmd, progType = "PROG", tracer.ProgTypeName(ev.ProgType)
	}
	buf := "-"
	if ev.HasLogBuf {
		buf = humanBytes(uint64(ev.LogSize))
	}
	need := "?"
	if ev.LogTrueSizeKnown {
		need = humanBytes(uint64(ev.LogTrueSize))
	}
	result := "ok"
	if !ev.OK() {
		result = ev.ErrnoName()
	}
	trunc := "-"
	if ev.Truncated() {
		trunc = "yes"
	}
	name := ev.ProgName.String()
	if name == "" {
		name = "-"
	}
	_, err := fmt.Fprintf(t.w, tableFormat,
		t.clock.Time(ev.StartNs).Local().Format("15:04:05.000"),
		clip(ev.Comm.String(), 15), strconv.FormatUint(uint64(ev.PID), 10), strconv.FormatUint(uint64(ev.TID), 10),
		cmd, clip(progType, 14), clip(name, 15), ev.LogMode(), buf, need, result, trunc, ev.Duration().Round(1000))
	if err != nil || ev.OK() || len(ev.LogTail) == 0 {
		return err
	}
	// A failed load's verdict, the verifier's complaint (the last line of
	// its log tail before the summary), on a line of its own under the
	// row, so that the columns stay aligned.
	if verdict := tracer.RejectionLine(ev.LogTail); verdict != "" {
		_, err = fmt.Fprintf(t.w, "%*s%s%s\n", verdictIndent, "", verdictPrefix, verdict)
	}
	return err
}

// A verdict line starts under the row's COMM column.
const (
	verdictIndent = 13
	verdictPrefix = "verifier: "
)

// humanBytes prints sizes as loaders choose them: exact binary multiples as
// "64KiB", anything else in bytes up to 10,000, then with one decimal.
func humanBytes(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB"}
	for i := len(units) - 1; i > 0; i-- {
		unit := uint64(1) << (10 * i)
		if n >= unit && n%unit == 0 {
			return strconv.FormatUint(n/unit, 10) + units[i]
		}
	}
	if n < 10000 {
		return strconv.FormatUint(n, 10) + "B"
	}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + units[i]
}

func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
