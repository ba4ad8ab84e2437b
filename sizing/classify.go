// Package sizing is the exporter's judgement of verifier-log buffers, apart
// from any telemetry: it classifies each load attempt (truncated,
// undersized, need and its source, shortfall), caps the loader label,
// joins retries into logical loads (retry chains), and recommends a buffer
// size per loader from the needs seen over a sliding window. A Ledger takes
// the tracer's LoadEvents and tells a Sink (the otel package) of every
// classified attempt and every ended chain. It reads no kernel and exports
// nothing itself.
package sizing

import "github.com/verifierlog/exporter/tracer"

// Class is what one attempt says about its buffer.
type Class struct {
	// Truncated: ENOSPC with a log buffer.
	Truncated bool
	// Undersized: truncated, or a known need above the buffer.
	Undersized bool
	// Need is the buffer size, NUL included, that holds the whole log;
	// meaningful only when NeedSource is not tracer.NeedUnknown.
	Need       uint32
	NeedSource tracer.NeedSource
	// Shortfall is Need - LogSize for undersized attempts with a known
	// need; ShortfallKnown says whether it is set.
	Shortfall      uint32
	ShortfallKnown bool
	// LogRequested: log level > 0, so there is a need to know.
	LogRequested bool
}

// Classify never reports an unknown need as a number.
func Classify(ev *tracer.LoadEvent) Class {
	c := Class{Truncated: ev.Truncated(), LogRequested: ev.LogLevel > 0}
	c.Need, c.NeedSource = ev.Need()
	known := c.NeedSource != tracer.NeedUnknown
	hasBuffer := ev.HasLogBuf && c.LogRequested
	c.Undersized = c.Truncated || (hasBuffer && known && c.Need > ev.LogSize)
	if c.Undersized && known && c.Need > ev.LogSize {
		c.Shortfall, c.ShortfallKnown = c.Need-ev.LogSize, true
	}
	return c
}
