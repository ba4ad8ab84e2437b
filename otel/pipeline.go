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

	"github.com/verifierlog/exporter/sizing"
	"github.com/verifierlog/exporter/tracer"
)

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
	ChainWindow    time.Duration // 0: sizing.DefaultChainWindow
	LoaderLimit    int           // 0: sizing.DefaultLoaderLimit
	// Source feeds the self metrics; nil registers none.
	Source Source
	Build  BuildInfo
	// RecommendWindow is how far back recommended sizes look; 0:
	// sizing.DefaultRecommendWindow.
	RecommendWindow time.Duration
	// Now is CLOCK_MONOTONIC in ns (tests replace it); nil: the real one.
	Now func() uint64
	// Defaults are the buffer sizes whose effect recommendations report;
	// nil: sizing.WellKnownDefaults.
	Defaults []sizing.Default
}

// Pipeline records what a sizing.Ledger concludes of each load event as
// metrics and spans: it is the Ledger's Sink. Handle, Sweep, Flush and the
// readers may be called from different goroutines.
type Pipeline struct {
	mu     sync.Mutex
	ledger *sizing.Ledger
	clock  tracer.WallClock
	in     *instruments
	rec    *Recorder
	tracer trace.Tracer // nil: no spans
	spans  map[*sizing.Chain]chainSpan
	now    func() uint64
	// attrs is scratch space for span attributes, which the SDK copies:
	// one slice for every span, under mu.
	attrs []attribute.KeyValue

	loadOpts   *optCache[loadKey]
	loaderOpts *optCache[loaderKey]
	sourceOpts *optCache[sourceKey]
}

// chainSpan is the span of one open chain.
type chainSpan struct {
	span trace.Span
	ctx  context.Context
}

// New creates the instruments on cfg.MeterProvider.
func New(cfg Config) (*Pipeline, error) {
	if cfg.MeterProvider == nil {
		return nil, errors.New("otel: Config.MeterProvider is required")
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
		now:   cfg.Now,
		clock: cfg.Clock,
		in:    in,
		rec:   rec,
		spans: make(map[*sizing.Chain]chainSpan),
	}
	p.ledger = sizing.NewLedger(sizing.Config{
		ChainWindow:     cfg.ChainWindow,
		LoaderLimit:     cfg.LoaderLimit,
		RecommendWindow: cfg.RecommendWindow,
		Defaults:        cfg.Defaults,
	}, p)
	if cfg.TracerProvider != nil {
		p.tracer = cfg.TracerProvider.Tracer(ScopeName)
	}
	if p.now == nil {
		p.now = tracer.MonotonicNow
	}
	if err := p.registerRecommendations(meter); err != nil {
		return nil, err
	}
	n := len(rec.instruments)
	p.loadOpts = newOptCache(n, func(k loadKey) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String(keyCommand, k.command.String()), attribute.String(keyLoader, k.loader),
			attribute.String(keyProgType, k.progType), attribute.String(keyLogMode, k.mode.String()), attribute.String(keyResult, k.result)}
	})
	p.loaderOpts = newOptCache(n, func(k loaderKey) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String(keyCommand, k.command.String()), attribute.String(keyLoader, k.loader)}
	})
	p.sourceOpts = newOptCache(n, func(k sourceKey) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String(keyCommand, k.command.String()), attribute.String(keyLoader, k.loader), attribute.String(keySource, string(k.source))}
	})
	return p, nil
}

// Handle records one load attempt. ev is not kept.
func (p *Pipeline) Handle(ev *tracer.LoadEvent) {
	p.lock()
	defer p.unlock()
	p.ledger.Add(ev)
}

// Sweep ends the chains whose window has passed at nowNs (CLOCK_MONOTONIC).
func (p *Pipeline) Sweep(nowNs uint64) {
	p.lock()
	defer p.unlock()
	p.ledger.Sweep(nowNs)
}

// Flush ends every open chain (at shutdown).
func (p *Pipeline) Flush() {
	p.lock()
	defer p.unlock()
	p.ledger.Flush()
}

// OpenChains is the number of retry chains still open.
func (p *Pipeline) OpenChains() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ledger.OpenChains()
}

// Recommendations reports, per loader, what its logs needed and what
// buffer would have held them.
func (p *Pipeline) Recommendations() sizing.Recommendations {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ledger.Recommendations(p.now())
}

// lock takes the pipeline's lock and the Recorder's, which the Sink
// methods record into, once for all of an event's measurements.
func (p *Pipeline) lock() {
	p.mu.Lock()
	p.rec.mu.Lock()
}

func (p *Pipeline) unlock() {
	p.rec.mu.Unlock()
	p.mu.Unlock()
}

// Attempt implements sizing.Sink: the attempt's metrics, and its span as a
// child of its chain's.
func (p *Pipeline) Attempt(ev *tracer.LoadEvent, class sizing.Class, c *sizing.Chain) {
	result := resultLabel(ev)
	p.rec.add(p.in.loads, p.loadOpts.get(loadKey{ev.Command, c.Loader, progTypeLabel(ev), ev.LogMode(), result}), 1)
	cl := p.loaderOpts.get(loaderKey{ev.Command, c.Loader})
	if ev.HasLogBuf && ev.LogLevel > 0 {
		p.rec.observe(p.in.bufferBytes, cl, float64(ev.LogSize))
	}
	if class.Undersized {
		p.rec.add(p.in.undersized, cl, 1)
	}
	if class.ShortfallKnown {
		p.rec.observe(p.in.shortfall, cl, float64(class.Shortfall))
	}
	p.rec.observe(p.in.duration, cl, ev.Duration().Seconds())
	var stats tracer.VerifierStats
	var parsed bool
	if len(ev.LogTail) > 0 {
		stats, parsed = tracer.ParseVerifierStats(ev.LogTail)
		if parsed && ev.OK() {
			p.rec.observe(p.in.processed, cl, float64(stats.ProcessedInsns))
		}
	}
	if p.tracer == nil {
		return
	}
	// The identity attributes are built once into the scratch slice: the
	// chain span (when this attempt opens it) and the attempt span copy
	// them from there.
	attrs := appendIdentityAttributes(p.attrs[:0], ev)
	cs, ok := p.spans[c]
	if !ok {
		cs.ctx, cs.span = p.tracer.Start(context.Background(), "bpf.load",
			trace.WithTimestamp(p.clock.Time(c.FirstStartNs)),
			trace.WithSpanKind(trace.SpanKindInternal))
		cs.span.SetAttributes(attrs...)
		p.spans[c] = cs
	}
	var sp *tracer.VerifierStats
	if parsed {
		sp = &stats
	}
	p.attrs = p.attemptSpan(cs.ctx, c, ev, class, sp, attrs)
}

// ChainEnded implements sizing.Sink: the logical load's metrics, and the
// end of its span.
func (p *Pipeline) ChainEnded(c *sizing.Chain) {
	cl := p.loaderOpts.get(loaderKey{c.Key.Command, c.Loader})
	p.rec.observe(p.in.attempts, cl, float64(c.Attempts))
	switch {
	case c.NeedSource != tracer.NeedUnknown:
		p.rec.observe(p.in.requiredBytes, p.sourceOpts.get(sourceKey{c.Key.Command, c.Loader, c.NeedSource}), float64(c.Need))
	case c.LogRequested:
		p.rec.add(p.in.unknownSize, cl, 1)
	}
	if p.tracer == nil {
		return
	}
	cs := p.spans[c]
	delete(p.spans, c)
	attrs := append(p.attrs[:0],
		attribute.Int("bpf.load.attempts", c.Attempts),
		attribute.Float64("bpf.load.failed_seconds", time.Duration(c.FailedNs).Seconds()))
	if c.NeedSource == tracer.NeedUnknown && c.LogRequested {
		// What the chain proves of a need nobody measured.
		if c.NeedAbove > 0 {
			attrs = append(attrs, attribute.Int("bpf.log.need_above", int(c.NeedAbove)))
		}
		if atMost, ok := c.NeedAtMost(); ok {
			attrs = append(attrs, attribute.Int("bpf.log.need_at_most", int(atMost)))
		}
	}
	if !c.LastOK {
		attrs = append(attrs, attribute.String("error.type", c.LastErrno))
		cs.span.SetStatus(codes.Error, c.LastErrno)
	}
	// One call: the span grows its attribute slice once.
	cs.span.SetAttributes(attrs...)
	p.attrs = attrs
	cs.span.End(trace.WithTimestamp(p.clock.Time(c.LastEndNs)))
}

// appendIdentityAttributes appends the span attributes that name the load
// and its process, those of both the chain span and the attempt spans, to
// dst.
func appendIdentityAttributes(dst []attribute.KeyValue, ev *tracer.LoadEvent) []attribute.KeyValue {
	dst = append(dst,
		attribute.String("bpf.command", ev.Command.String()),
		attribute.Int("process.pid", int(ev.PID)),
		attribute.String("process.executable.name", ev.Comm.String()))
	if ev.Command == tracer.CmdProgLoad {
		dst = append(dst,
			attribute.String("bpf.prog.name", ev.ProgName.String()),
			attribute.String("bpf.prog.type", tracer.ProgTypeName(ev.ProgType)),
			attribute.Int("bpf.prog.insn_count", int(ev.InsnCnt)))
	}
	return dst
}

// attemptSpan records one attempt as a child of its chain's span (ctx),
// with the kernel's start and end times. attrs holds the attempt's
// identity attributes; the attempt's own are appended to it, and the
// slice is returned for reuse (the span keeps a copy). stats is the
// verifier's summary parsed from the log tail, nil where there is none.
func (p *Pipeline) attemptSpan(ctx context.Context, c *sizing.Chain, ev *tracer.LoadEvent, class sizing.Class, stats *tracer.VerifierStats, attrs []attribute.KeyValue) []attribute.KeyValue {
	attrs = append(attrs,
		attribute.Int("thread.id", int(ev.TID)),
		attribute.Int("bpf.log.level", int(ev.LogLevel)),
		attribute.String("bpf.log.mode", ev.LogMode().String()),
		attribute.Int("bpf.log.size", int(ev.LogSize)),
		attribute.Bool("bpf.log.truncated", class.Truncated),
		attribute.Int("bpf.load.attempt", c.Attempts))
	if ev.LogTrueSizeKnown {
		attrs = append(attrs, attribute.Int("bpf.log.true_size", int(ev.LogTrueSize)))
	}
	if stats != nil {
		attrs = append(attrs,
			attribute.Int64("bpf.verifier.processed_insns", int64(stats.ProcessedInsns)),
			attribute.Int64("bpf.verifier.total_states", int64(stats.TotalStates)),
			attribute.Int64("bpf.verifier.peak_states", int64(stats.PeakStates)))
	}
	_, span := p.tracer.Start(ctx, ev.Command.String(),
		trace.WithTimestamp(p.clock.Time(ev.StartNs)),
		trace.WithSpanKind(trace.SpanKindInternal))
	if !ev.OK() {
		errno := ev.ErrnoName()
		attrs = append(attrs, attribute.String("error.type", errno))
		span.SetStatus(codes.Error, errno)
	}
	// Set after Start rather than passed to it: passed, they would be
	// copied twice, into the start config and then into the span.
	span.SetAttributes(attrs...)
	end := p.clock.Time(ev.EndNs)
	if len(ev.LogTail) > 0 {
		// The log as the load left it: an event at the load's end, whose
		// attribute is a copy (ev.LogTail is reused for the next record).
		span.AddEvent("bpf.verifier.log", trace.WithTimestamp(end),
			trace.WithAttributes(attribute.String("bpf.verifier.log.tail", tracer.SanitizeLogTail(ev.LogTail))))
	}
	span.End(trace.WithTimestamp(end))
	return attrs
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
	sourceKey struct {
		command tracer.Command
		loader  string
		source  tracer.NeedSource
	}
)

// attrOpts is one attribute set and its series in each instrument that
// uses it, so that recording needs one map lookup per key, not per
// instrument.
type attrOpts struct {
	set    attribute.Set
	series []*series // by instrument id
}

// maxCachedSets bounds each cache (and so the series of each metric); past
// it, every new set shares one overflow series per cache, whose loader label
// is "other".
const maxCachedSets = 1 << 14

type optCache[K comparable] struct {
	m           map[K]*attrOpts
	overflow    *attrOpts
	build       func(K) []attribute.KeyValue
	instruments int
}

// newOptCache caches the attribute sets that build makes, each with a
// series slot for every one of the Recorder's instruments.
func newOptCache[K comparable](instruments int, build func(K) []attribute.KeyValue) *optCache[K] {
	return &optCache[K]{m: make(map[K]*attrOpts), build: build, instruments: instruments}
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
					kvs[i] = attribute.String(keyLoader, sizing.OtherLoader)
				}
			}
			c.overflow = &attrOpts{set: attribute.NewSet(kvs...), series: make([]*series, c.instruments)}
		}
		return c.overflow
	}
	o := &attrOpts{set: attribute.NewSet(c.build(k)...), series: make([]*series, c.instruments)}
	c.m[k] = o
	return o
}
