// Package otel turns tracer LoadEvents into what SREs consume: it
// classifies each load attempt (log mode, truncated, undersized, shortfall,
// need), correlates retry chains, records the OpenTelemetry metrics and
// spans of the README's public interface, and sets up the SDK providers that
// export them to Prometheus (pull) and OTLP (push). It never reads the
// kernel itself.
package otel

import "github.com/verifierlog/exporter/tracer"

// NeedSource says where a load's log need came from.
type NeedSource uint8

const (
	NeedUnknown  NeedSource = iota
	NeedKernel              // the kernel's log_true_size
	NeedMeasured            // the measured length + 1 of a log that fit
)

func (s NeedSource) String() string {
	switch s {
	case NeedKernel:
		return "kernel"
	case NeedMeasured:
		return "measured"
	}
	return ""
}

// Class is what one attempt says about its buffer (README, "JSON records":
// log_mode, truncated, need).
type Class struct {
	// Truncated: ENOSPC with a log buffer.
	Truncated bool
	// Undersized: truncated, or a known need above the buffer.
	Undersized bool
	// Need is the buffer size, NUL included, that holds the whole log;
	// meaningful only when NeedSource != NeedUnknown.
	Need       uint32
	NeedSource NeedSource
	// Shortfall is Need - LogSize for undersized attempts with a known
	// need; ShortfallKnown says whether it is set.
	Shortfall      uint32
	ShortfallKnown bool
	// LogRequested: log level > 0, so there is a need to know.
	LogRequested bool
}

// Headroom is log_size / need, where both are known (>1: room to spare).
func (c Class) Headroom(logSize uint32) (float64, bool) {
	if c.NeedSource == NeedUnknown || c.Need == 0 || logSize == 0 {
		return 0, false
	}
	return float64(logSize) / float64(c.Need), true
}

// Classify never reports an unknown need as a number.
func Classify(ev *tracer.LoadEvent) Class {
	c := Class{Truncated: ev.Truncated(), LogRequested: ev.LogLevel > 0}
	switch need, source := ev.Need(); source {
	case "kernel":
		c.Need, c.NeedSource = need, NeedKernel
	case "measured":
		c.Need, c.NeedSource = need, NeedMeasured
	}
	hasBuffer := ev.HasLogBuf && c.LogRequested
	c.Undersized = c.Truncated || (hasBuffer && c.NeedSource != NeedUnknown && c.Need > ev.LogSize)
	if c.Undersized && c.NeedSource != NeedUnknown && c.Need > ev.LogSize {
		c.Shortfall, c.ShortfallKnown = c.Need-ev.LogSize, true
	}
	return c
}
