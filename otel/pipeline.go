package otel

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/verifierlog/exporter/tracer"
)

// DefaultChainWindow is how long after an attempt's end a retry still
// belongs to the same logical load.
const DefaultChainWindow = 5 * time.Second

// maxOpenChains bounds the open retry chains: past it a new chain is ended
// right after its attempt, so hostile loaders cannot grow the table.
const maxOpenChains = 1 << 16

// Config configures a Pipeline.
type Config struct {
	// MeterProvider holds the metrics read at collection (self metrics,
	// recommendations); required.
	MeterProvider metric.MeterProvider
	// Recorder holds the per-event metrics; the MeterProvider's readers
	// must have it as a producer (Setup does). nil: a Recorder of its own,
	// read by no one.
	Recorder *Recorder
	// TracerProvider exports spans; nil records none (and costs nothing).
	TracerProvider trace.TracerProvider
	Clock          tracer.WallClock
	ChainWindow    time.Duration // 0: DefaultChainWindow
	LoaderLimit    int           // 0: DefaultLoaderLimit
	// Source feeds the self metrics; nil registers none.
	Source Source
	Build  BuildInfo
	// RecommendWindow is how far back recommended sizes look; 0:
	// DefaultRecommendWindow.
	RecommendWindow time.Duration
	// Now is CLOCK_MONOTONIC in ns (tests replace it); nil: the real one.
	Now func() uint64
	// Defaults are the buffer sizes whose effect recommendations report;
	// nil: WellKnownDefaults.
	Defaults []Default
}

// Pipeline classifies load events, correlates retry chains and records
// metrics and spans. Handle and Sweep may be called from different
// goroutines.
type Pipeline struct {
	mu      sync.Mutex
	clock   tracer.WallClock
	window  uint64 // ns
	in      *instruments
	rec     *Recorder
	tracer  trace.Tracer // nil: no spans
	loaders *loaderLabels
	open    map[chainKey]*chain
	free    []*chain

	windows         map[recommendKey]*loaderWindow
	defaults        []Default
	recommendWindow time.Duration
	now             func() uint64

	loadOpts   *optCache[loadKey]
	loaderOpts *optCache[loaderKey]
	resultOpts *optCache[resultKey]
	sourceOpts *optCache[sourceKey]
	ctx        context.Context
}

// New creates the instruments on cfg.MeterProvider.
func New(cfg Config) (*Pipeline, error) {
	if cfg.MeterProvider == nil {
		return nil, errors.New("otel: Config.MeterProvider is required")
	}
	window := cfg.ChainWindow
	if window <= 0 {
		window = DefaultChainWindow
	}
	meter := cfg.MeterProvider.Meter(ScopeName)
	rec := cfg.Recorder
	if rec == nil {
		rec = NewRecorder()
	}
	in := newInstruments(rec)
	if cfg.Source != nil {
		if err := registerSelfMetrics(meter, cfg.Source, cfg.Build); err != nil {
			return nil, err
		}
	}
	p := &Pipeline{
		windows:         make(map[recommendKey]*loaderWindow),
		defaults:        cfg.Defaults,
		recommendWindow: cfg.RecommendWindow,
		now:             cfg.Now,
		clock:           cfg.Clock,
		window:          uint64(window),
		in:              in,
		rec:             rec,
		loaders:         newLoaderLabels(cfg.LoaderLimit),
		open:            make(map[chainKey]*chain),
		ctx:             context.Background(),
	}
	if cfg.TracerProvider != nil {
		p.tracer = cfg.TracerProvider.Tracer(ScopeName)
	}
	if p.recommendWindow <= 0 {
		p.recommendWindow = DefaultRecommendWindow
	}
	if p.now == nil {
		p.now = tracer.MonotonicNow
	}
	if p.defaults == nil {
		p.defaults = WellKnownDefaults
	}
	if err := p.registerRecommendations(meter); err != nil {
		return nil, err
	}
	p.loadOpts = newOptCache(func(k loadKey) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String(keyCommand, k.command.String()), attribute.String(keyLoader, k.loader),
			attribute.String(keyProgType, k.progType), attribute.String(keyLogMode, k.mode.String()), attribute.String(keyResult, k.result)}
	})
	p.loaderOpts = newOptCache(func(k loaderKey) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String(keyCommand, k.command.String()), attribute.String(keyLoader, k.loader)}
	})
	p.resultOpts = newOptCache(func(k resultKey) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String(keyCommand, k.command.String()), attribute.String(keyLoader, k.loader), attribute.String(keyResult, k.result)}
	})
	p.sourceOpts = newOptCache(func(k sourceKey) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String(keyCommand, k.command.String()), attribute.String(keyLoader, k.loader), attribute.String(keySource, k.source.String())}
	})
	return p, nil
}

// Handle records one load attempt. ev is not kept.
func (p *Pipeline) Handle(ev *tracer.LoadEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.mu.Lock()
	defer p.rec.mu.Unlock()

	loader := p.loaders.label(ev.Comm)
	class := Classify(ev)
	p.recordAttempt(ev, loader, class)

	key := keyOf(ev)
	c := p.open[key]
	if c != nil && ev.StartNs > c.lastEndNs+p.window {
		p.endChain(c)
		c = nil
	}
	if c == nil {
		c = p.startChain(key, ev, loader)
	}
	c.add(ev, class)
	if p.tracer != nil {
		p.attemptSpan(c, ev, class)
	}
	if ev.OK() || len(p.open) > maxOpenChains {
		p.endChain(c)
	}
}

// Sweep ends the chains whose window has passed at nowNs (CLOCK_MONOTONIC).
func (p *Pipeline) Sweep(nowNs uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.mu.Lock()
	defer p.rec.mu.Unlock()
	for _, c := range p.open {
		if nowNs > c.lastEndNs+p.window {
			p.endChain(c)
		}
	}
}

// Flush ends every open chain (at shutdown).
func (p *Pipeline) Flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.mu.Lock()
	defer p.rec.mu.Unlock()
	for _, c := range p.open {
		p.endChain(c)
	}
}

// OpenChains is the number of retry chains still open.
func (p *Pipeline) OpenChains() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.open)
}

func (p *Pipeline) recordAttempt(ev *tracer.LoadEvent, loader string, class Class) {
	result := resultLabel(ev)
	p.rec.add(p.in.loads, p.loadOpts.get(loadKey{ev.Command, loader, progTypeLabel(ev), ev.LogMode(), result}), 1)
	cl := p.loaderOpts.get(loaderKey{ev.Command, loader})
	if ev.HasLogBuf && ev.LogLevel > 0 {
		p.rec.observe(p.in.bufferBytes, cl, float64(ev.LogSize))
	}
	if class.Undersized {
		p.rec.add(p.in.undersized, cl, 1)
	}
	if class.ShortfallKnown {
		p.rec.observe(p.in.shortfall, cl, float64(class.Shortfall))
	}
	p.rec.observe(p.in.duration, p.resultOpts.get(resultKey{ev.Command, loader, result}), ev.Duration().Seconds())
	p.loaderWindow(recommendKey{ev.Command, loader}).addAttempt(ev.EndNs, ev.LogSize, ev.HasLogBuf && ev.LogLevel > 0, class.Truncated)
}

// chainKey identifies a logical load (README, "Spans": a retry chain).
type chainKey struct {
	pid      uint32
	command  tracer.Command
	progType uint32
	progName tracer.Name
	insnCnt  uint32
}

func keyOf(ev *tracer.LoadEvent) chainKey {
	return chainKey{pid: ev.PID, command: ev.Command, progType: ev.ProgType, progName: ev.ProgName, insnCnt: ev.InsnCnt}
}

// chain is one logical load in progress.
type chain struct {
	key          chainKey
	loader       string
	comm         tracer.Name
	firstStartNs uint64
	lastEndNs    uint64
	attempts     int
	failedNs     uint64
	lastOK       bool
	lastErrno    string
	need         uint32
	needSource   NeedSource
	logRequested bool
	tooSmall     uint32 // largest buffer that ended in ENOSPC
	lastBuffer   uint32 // log_size of the last attempt with a buffer
	firstBuffer  uint32 // log_size of the first attempt, if it had a buffer
	firstHasBuf  bool

	span trace.Span
	ctx  context.Context
}

func (c *chain) add(ev *tracer.LoadEvent, class Class) {
	c.attempts++
	if c.attempts == 1 && ev.HasLogBuf && ev.LogLevel > 0 {
		c.firstBuffer, c.firstHasBuf = ev.LogSize, true
	}
	if ev.EndNs > c.lastEndNs {
		c.lastEndNs = ev.EndNs
	}
	c.lastOK = ev.OK()
	c.lastErrno = ev.ErrnoName()
	if !c.lastOK {
		c.failedNs += uint64(ev.Duration())
	}
	if class.LogRequested {
		c.logRequested = true
	}
	if class.Truncated {
		c.tooSmall = max(c.tooSmall, ev.LogSize)
	}
	if ev.HasLogBuf {
		c.lastBuffer = ev.LogSize
	}
	if class.NeedSource != NeedUnknown {
		c.need, c.needSource = class.Need, class.NeedSource
	}
}

func (p *Pipeline) startChain(key chainKey, ev *tracer.LoadEvent, loader string) *chain {
	var c *chain
	if n := len(p.free); n > 0 {
		c, p.free = p.free[n-1], p.free[:n-1]
	} else {
		c = new(chain)
	}
	*c = chain{key: key, loader: loader, comm: ev.Comm, firstStartNs: ev.StartNs, lastEndNs: ev.EndNs}
	if p.tracer != nil {
		c.ctx, c.span = p.tracer.Start(context.Background(), "bpf.load",
			trace.WithTimestamp(p.clock.Time(ev.StartNs)),
			trace.WithSpanKind(trace.SpanKindInternal),
			trace.WithAttributes(identityAttributes(ev)...))
	}
	p.open[key] = c
	return c
}

func (p *Pipeline) endChain(c *chain) {
	delete(p.open, c.key)
	cl := p.loaderOpts.get(loaderKey{c.key.command, c.loader})
	p.rec.observe(p.in.attempts, cl, float64(c.attempts))
	if c.firstHasBuf {
		p.loaderWindow(recommendKey{c.key.command, c.loader}).addFirstBuffer(c.lastEndNs, c.firstBuffer)
	}
	switch {
	case c.needSource != NeedUnknown:
		p.rec.observe(p.in.requiredBytes, p.sourceOpts.get(sourceKey{c.key.command, c.loader, c.needSource}), float64(c.need))
		p.loaderWindow(recommendKey{c.key.command, c.loader}).addNeed(c.lastEndNs, c.need)
	case c.logRequested:
		p.rec.add(p.in.unknownSize, cl, 1)
		p.loaderWindow(recommendKey{c.key.command, c.loader}).addUnknown(c.lastEndNs, c.tooSmall)
	}
	if c.span != nil {
		c.span.SetAttributes(
			attribute.Int("bpf.load.attempts", c.attempts),
			attribute.Float64("bpf.load.failed_seconds", time.Duration(c.failedNs).Seconds()))
		if c.needSource == NeedUnknown && c.logRequested {
			// What the chain proves of a need nobody measured.
			if c.tooSmall > 0 {
				c.span.SetAttributes(attribute.Int("bpf.log.need_above", int(c.tooSmall)))
			}
			if c.lastOK && c.lastBuffer > 0 {
				c.span.SetAttributes(attribute.Int("bpf.log.need_at_most", int(c.lastBuffer)))
			}
		}
		if !c.lastOK {
			c.span.SetAttributes(attribute.String("error.type", c.lastErrno))
			c.span.SetStatus(codes.Error, c.lastErrno)
		}
		c.span.End(trace.WithTimestamp(p.clock.Time(c.lastEndNs)))
	}
	*c = chain{}
	if len(p.free) < 1024 {
		p.free = append(p.free, c)
	}
}

// identityAttributes are the span attributes that name the load and its
// process, on both the chain span and the attempt spans.
func identityAttributes(ev *tracer.LoadEvent) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		attribute.String("bpf.command", ev.Command.String()),
		attribute.Int("process.pid", int(ev.PID)),
		attribute.String("process.executable.name", ev.Comm.String()),
	}
	if ev.Command == tracer.CmdProgLoad {
		attrs = append(attrs,
			attribute.String("bpf.prog.name", ev.ProgName.String()),
			attribute.String("bpf.prog.type", tracer.ProgTypeName(ev.ProgType)),
			attribute.Int("bpf.prog.insn_count", int(ev.InsnCnt)))
	}
	return attrs
}

// attemptSpan records one attempt as a child of its chain's span, with the
// kernel's start and end times.
func (p *Pipeline) attemptSpan(c *chain, ev *tracer.LoadEvent, class Class) {
	attrs := append(identityAttributes(ev),
		attribute.Int("thread.id", int(ev.TID)),
		attribute.Int("bpf.log.level", int(ev.LogLevel)),
		attribute.String("bpf.log.mode", ev.LogMode().String()),
		attribute.Int("bpf.log.size", int(ev.LogSize)),
		attribute.Bool("bpf.log.truncated", class.Truncated),
		attribute.Int("bpf.load.attempt", c.attempts))
	if ev.LogTrueSizeKnown {
		attrs = append(attrs, attribute.Int("bpf.log.true_size", int(ev.LogTrueSize)))
	}
	_, span := p.tracer.Start(c.ctx, ev.Command.String(),
		trace.WithTimestamp(p.clock.Time(ev.StartNs)),
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attrs...))
	if !ev.OK() {
		span.SetAttributes(attribute.String("error.type", ev.ErrnoName()))
		span.SetStatus(codes.Error, ev.ErrnoName())
	}
	span.End(trace.WithTimestamp(p.clock.Time(ev.EndNs)))
}

// Keys of the cached attribute sets.
type (
	loadKey struct {
		command  tracer.Command
		loader   string
		progType string
		mode     tracer.LogMode
		result   string
	}
	loaderKey struct {
		command tracer.Command
		loader  string
	}
	resultKey struct {
		command tracer.Command
		loader  string
		result  string
	}
	sourceKey struct {
		command tracer.Command
		loader  string
		source  NeedSource
	}
)

// attrOpts is one attribute set and its series in each instrument that
// uses it, so that recording needs one map lookup per key, not per
// instrument.
type attrOpts struct {
	set    attribute.Set
	series [numInstruments]*series
}

// maxCachedSets bounds each cache (and so the series of each metric); past
// it, every new set shares one overflow series per cache, whose loader label
// is "other".
const maxCachedSets = 1 << 14

type optCache[K comparable] struct {
	m        map[K]*attrOpts
	overflow *attrOpts
	build    func(K) []attribute.KeyValue
}

func newOptCache[K comparable](build func(K) []attribute.KeyValue) *optCache[K] {
	return &optCache[K]{m: make(map[K]*attrOpts), build: build}
}

func (c *optCache[K]) get(k K) *attrOpts {
	if o, ok := c.m[k]; ok {
		return o
	}
	if len(c.m) >= maxCachedSets {
		if c.overflow == nil {
			kvs := c.build(k)
			for i := range kvs {
				if kvs[i].Key == keyLoader {
					kvs[i] = attribute.String(keyLoader, OtherLoader)
				}
			}
			c.overflow = &attrOpts{set: attribute.NewSet(kvs...)}
		}
		return c.overflow
	}
	o := &attrOpts{set: attribute.NewSet(c.build(k)...)}
	c.m[k] = o
	return o
}
