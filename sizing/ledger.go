package sizing

import (
	"time"

	"github.com/verifierlog/exporter/tracer"
)

// Sink is told what the Ledger concludes. Its methods run inside the
// Ledger's calls, in order.
type Sink interface {
	// Attempt: ev, classified as class, has joined chain c (c.Attempts
	// counts it; 1 means ev began the chain).
	Attempt(ev *tracer.LoadEvent, class Class, c *Chain)
	// ChainEnded: c will have no more attempts. It ends on success, when
	// no retry came within the chain window, or at Flush.
	ChainEnded(c *Chain)
}

// Config configures a Ledger; zero values take the defaults.
type Config struct {
	ChainWindow time.Duration // DefaultChainWindow
	LoaderLimit int           // DefaultLoaderLimit
	// RecommendWindow is how far back recommendations look
	// (DefaultRecommendWindow).
	RecommendWindow time.Duration
	// Defaults are the buffer sizes whose effect recommendations report
	// (WellKnownDefaults).
	Defaults []Default
}

// Ledger keeps what the exporter knows of the loads it has seen: the
// loaders, the open retry chains and each loader's recommendation window.
// It is not safe for concurrent use.
type Ledger struct {
	sink    Sink
	window  uint64 // chain window, ns
	loaders *Loaders
	open    map[ChainKey]*Chain
	free    []*Chain

	windows         map[windowKey]*loaderWindow
	defaults        []Default
	recommendWindow time.Duration
}

// NewLedger tells sink of every attempt and ended chain.
func NewLedger(cfg Config, sink Sink) *Ledger {
	l := &Ledger{
		sink:            sink,
		window:          uint64(cfg.ChainWindow),
		loaders:         NewLoaders(cfg.LoaderLimit),
		open:            make(map[ChainKey]*Chain),
		windows:         make(map[windowKey]*loaderWindow),
		defaults:        cfg.Defaults,
		recommendWindow: cfg.RecommendWindow,
	}
	if cfg.ChainWindow <= 0 {
		l.window = uint64(DefaultChainWindow)
	}
	if l.recommendWindow <= 0 {
		l.recommendWindow = DefaultRecommendWindow
	}
	if l.defaults == nil {
		l.defaults = WellKnownDefaults
	}
	return l
}

// Add takes one load attempt. ev is not kept.
func (l *Ledger) Add(ev *tracer.LoadEvent) {
	loader := l.loaders.Name(ev.Comm)
	class := Classify(ev)
	l.loaderWindow(ev.Command, loader).addAttempt(ev.EndNs, ev.LogSize, ev.HasLogBuf && ev.LogLevel > 0, class.Truncated)

	key := keyOf(ev)
	c := l.open[key]
	if c != nil && ev.StartNs > c.LastEndNs+l.window {
		l.end(c)
		c = nil
	}
	if c == nil {
		c = l.start(key, ev, loader)
	}
	c.add(ev, class)
	l.sink.Attempt(ev, class, c)
	if ev.OK() || len(l.open) > maxOpenChains {
		l.end(c)
	}
}

// Sweep ends the chains whose window has passed at nowNs (CLOCK_MONOTONIC).
func (l *Ledger) Sweep(nowNs uint64) {
	for _, c := range l.open {
		if nowNs > c.LastEndNs+l.window {
			l.end(c)
		}
	}
}

// Flush ends every open chain (at shutdown).
func (l *Ledger) Flush() {
	for _, c := range l.open {
		l.end(c)
	}
}

// OpenChains is the number of retry chains still open.
func (l *Ledger) OpenChains() int { return len(l.open) }

// Loaders is the number of loaders with their own name.
func (l *Ledger) Loaders() int { return l.loaders.Len() }

func (l *Ledger) start(key ChainKey, ev *tracer.LoadEvent, loader string) *Chain {
	var c *Chain
	if n := len(l.free); n > 0 {
		c, l.free = l.free[n-1], l.free[:n-1]
	} else {
		c = new(Chain)
	}
	*c = Chain{Key: key, Loader: loader, FirstStartNs: ev.StartNs, LastEndNs: ev.EndNs}
	l.open[key] = c
	return c
}

func (l *Ledger) end(c *Chain) {
	delete(l.open, c.Key)
	w := l.loaderWindow(c.Key.Command, c.Loader)
	if c.FirstHasBuffer {
		w.addFirstBuffer(c.LastEndNs, c.FirstBuffer)
	}
	switch {
	case c.NeedSource != tracer.NeedUnknown:
		w.addNeed(c.LastEndNs, c.Need)
	case c.LogRequested:
		w.addUnknown(c.LastEndNs, c.NeedAbove)
	}
	l.sink.ChainEnded(c)
	*c = Chain{}
	if len(l.free) < 1024 {
		l.free = append(l.free, c)
	}
}
