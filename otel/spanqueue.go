package otel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	otelglobal "go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// dropReason says why a span was never exported.
type dropReason int

const (
	dropQueueFull    dropReason = iota // the queue held maxPending spans when the span ended
	dropExportFailed                   // the exporter returned an error for the span's batch
	dropShutdown                       // shutdown's deadline passed before the span was exported
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{"queue_full", "export_failed", "shutdown"}

func (r dropReason) String() string { return dropReasonNames[r] }

// spanStats is a consistent snapshot of a spanQueue's accounting:
// Ended == Exported + the sum of Dropped + Pending.
type spanStats struct {
	Ended, Exported uint64
	Dropped         [numDropReasons]uint64
	Pending         int // queued or being exported
	// Exports and Failures count ExportSpans calls and those that failed.
	Exports, Failures uint64
}

// DroppedTotal is the sum of Dropped over the reasons.
func (s spanStats) DroppedTotal() uint64 {
	var n uint64
	for _, d := range s.Dropped {
		n += d
	}
	return n
}

// spanQueueConfig is the spanQueue's bounds and timing, from the
// OTEL_BSP_* variables that the SDK's BatchSpanProcessor reads.
type spanQueueConfig struct {
	maxPending    int           // OTEL_BSP_MAX_QUEUE_SIZE: spans held, queued or being exported
	batchSize     int           // OTEL_BSP_MAX_EXPORT_BATCH_SIZE, at most maxPending
	delay         time.Duration // OTEL_BSP_SCHEDULE_DELAY: longest wait before queued spans are exported
	exportTimeout time.Duration // OTEL_BSP_EXPORT_TIMEOUT: per ExportSpans call
}

// spanQueueConfigFromEnv reads the OTEL_BSP_* variables, with the
// specification's defaults.
func spanQueueConfigFromEnv() (spanQueueConfig, error) {
	var errs []error
	num := func(key string, def int) int {
		v := os.Getenv(key)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a positive integer", key, v))
			return def
		}
		return n
	}
	cfg := spanQueueConfig{
		maxPending:    num("OTEL_BSP_MAX_QUEUE_SIZE", sdktrace.DefaultMaxQueueSize),
		batchSize:     num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", sdktrace.DefaultMaxExportBatchSize),
		delay:         time.Duration(num("OTEL_BSP_SCHEDULE_DELAY", sdktrace.DefaultScheduleDelay)) * time.Millisecond,
		exportTimeout: time.Duration(num("OTEL_BSP_EXPORT_TIMEOUT", sdktrace.DefaultExportTimeout)) * time.Millisecond,
	}
	cfg.batchSize = min(cfg.batchSize, cfg.maxPending)
	return cfg, errors.Join(errs...)
}

// shutdownAbortGrace is how long Shutdown, once its deadline has passed and
// it has cancelled the export in flight, waits for that export to return.
const shutdownAbortGrace = time.Second

// spanQueue is the span processor in front of the OTLP span exporter. It
// batches like the SDK's BatchSpanProcessor, which it replaces because that
// one drops silently, but it accounts for every sampled span that ends:
// at most maxPending spans are held (queued or in the export in flight), a
// span that finds no room is dropped as queue_full, a batch the exporter
// fails is dropped as export_failed, and what shutdown cannot flush in time
// is dropped as shutdown; so that at every instant
//
//	ended == exported + dropped + pending.
//
// OnEnd, on the per-event path, never waits for the exporter: it takes one
// short lock that no export holds.
type spanQueue struct {
	exp sdktrace.SpanExporter
	cfg spanQueueConfig

	mu       sync.Mutex
	ring     []sdktrace.ReadOnlySpan // the queue, len(ring) == cfg.maxPending
	head, n  int                     // the queued spans are ring[head], ... (n of them, wrapping)
	inflight int                     // spans in the export in flight
	stopped  bool                    // Shutdown has begun: spans ending now are dropped
	stats    spanStats               // Pending is filled in by snapshot

	wake    chan struct{}      // a full batch is queued (capacity 1)
	flushes chan chan struct{} // ForceFlush requests; the worker closes each when done
	stop    chan struct{}      // closed by Shutdown
	done    chan struct{}      // closed when the worker returns
	// abortCtx is the parent of every export; Shutdown cancels it when
	// its deadline passes.
	abortCtx context.Context
	abort    context.CancelFunc

	shutdownOnce sync.Once
	shutdownErr  error
}

// newSpanQueue starts the worker that exports for exp.
func newSpanQueue(exp sdktrace.SpanExporter, cfg spanQueueConfig) *spanQueue {
	q := &spanQueue{
		exp:     exp,
		cfg:     cfg,
		ring:    make([]sdktrace.ReadOnlySpan, cfg.maxPending),
		wake:    make(chan struct{}, 1),
		flushes: make(chan chan struct{}),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	q.abortCtx, q.abort = context.WithCancel(context.Background())
	go q.run()
	return q
}

// OnStart does nothing: spans are queued when they end.
func (q *spanQueue) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues s for export, or drops and counts it.
func (q *spanQueue) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	q.mu.Lock()
	q.stats.Ended++
	switch {
	case q.stopped:
		q.stats.Dropped[dropShutdown]++
	case q.n+q.inflight >= len(q.ring):
		q.stats.Dropped[dropQueueFull]++
	default:
		q.ring[(q.head+q.n)%len(q.ring)] = s
		q.n++
		if q.n >= q.cfg.batchSize {
			select {
			case q.wake <- struct{}{}:
			default:
			}
		}
	}
	q.mu.Unlock()
}

// snapshot returns the accounting as of now.
func (q *spanQueue) snapshot() spanStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := q.stats
	s.Pending = q.n + q.inflight
	return s
}

// run is the worker: it exports when a batch is full, when the schedule
// delay passes, on ForceFlush, and a last time on Shutdown.
func (q *spanQueue) run() {
	defer close(q.done)
	batch := make([]sdktrace.ReadOnlySpan, 0, q.cfg.batchSize)
	timer := time.NewTimer(q.cfg.delay)
	defer timer.Stop()
	for {
		select {
		case <-q.stop:
			q.exportQueued(batch) // all of it: nothing is added any more
			return
		case done := <-q.flushes:
			q.exportQueued(batch)
			close(done)
		case <-q.wake:
			q.exportQueued(batch)
		case <-timer.C:
			q.exportQueued(batch)
		}
		timer.Reset(q.cfg.delay)
	}
}

// exportQueued exports, batch by batch, the spans queued when it is called
// (not those that arrive meanwhile, so that a flush ends). Once Shutdown
// has begun, a failed export drops the rest as shutdown: the endpoint is
// down, and trying each batch would only hold up the exit.
func (q *spanQueue) exportQueued(batch []sdktrace.ReadOnlySpan) {
	q.mu.Lock()
	left := q.n
	q.mu.Unlock()
	for left > 0 {
		b := q.take(batch, left)
		if len(b) == 0 {
			return // Shutdown abandoned the queue
		}
		left -= len(b)
		if !q.export(b) && q.isStopped() {
			q.abandon()
			return
		}
	}
}

// isStopped says whether Shutdown has begun.
func (q *spanQueue) isStopped() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stopped
}

// take moves up to min(limit, batch size) queued spans into batch: they
// are then in flight.
func (q *spanQueue) take(batch []sdktrace.ReadOnlySpan, limit int) []sdktrace.ReadOnlySpan {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := min(q.n, q.cfg.batchSize, limit)
	batch = batch[:0]
	for range k {
		batch = append(batch, q.ring[q.head])
		q.ring[q.head] = nil
		q.head = (q.head + 1) % len(q.ring)
	}
	q.n -= k
	q.inflight = k
	return batch
}

// export makes one ExportSpans call and counts its spans as exported or
// dropped. It reports whether the export succeeded.
func (q *spanQueue) export(batch []sdktrace.ReadOnlySpan) bool {
	ctx, cancel := context.WithTimeout(q.abortCtx, q.cfg.exportTimeout)
	err := q.exp.ExportSpans(ctx, batch)
	cancel()
	n := uint64(len(batch))
	clear(batch)
	q.mu.Lock()
	q.inflight = 0
	q.stats.Exports++
	switch {
	case err == nil:
		q.stats.Exported += n
	case q.abortCtx.Err() != nil:
		q.stats.Failures++
		q.stats.Dropped[dropShutdown] += n
	default:
		q.stats.Failures++
		q.stats.Dropped[dropExportFailed] += n
	}
	q.mu.Unlock()
	if err != nil {
		otelglobal.Handle(fmt.Errorf("OTLP traces: %d spans dropped: %w", n, err))
	}
	return err == nil
}

// abandon drops the queued spans (shutdown's deadline passed).
func (q *spanQueue) abandon() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n > 0 {
		q.ring[q.head] = nil
		q.head = (q.head + 1) % len(q.ring)
		q.n--
		q.stats.Dropped[dropShutdown]++
	}
}

// ForceFlush exports the spans queued now and waits for that, or for ctx.
func (q *spanQueue) ForceFlush(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case q.flushes <- done:
	case <-q.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown exports what is queued until an export fails or ctx's deadline
// passes; then it cancels the export in flight, drops the rest as shutdown
// and shuts the exporter down. It returns within ctx's deadline plus shutdownAbortGrace (given an
// exporter whose Shutdown honours ctx, as the OTLP ones do).
func (q *spanQueue) Shutdown(ctx context.Context) error {
	q.shutdownOnce.Do(func() {
		q.mu.Lock()
		q.stopped = true
		q.mu.Unlock()
		close(q.stop)
		select {
		case <-q.done:
		case <-ctx.Done():
			q.abort()
			q.abandon()
			select {
			case <-q.done:
			case <-time.After(shutdownAbortGrace):
			}
		}
		errs := []error{q.exp.Shutdown(ctx)}
		if s := q.snapshot(); s.Dropped[dropShutdown] > 0 || s.Pending > 0 {
			errs = append(errs, fmt.Errorf("OTLP traces: %d spans not flushed at shutdown, %d more in an export that did not return",
				s.Dropped[dropShutdown], s.Pending))
		}
		q.shutdownErr = errors.Join(errs...)
	})
	return q.shutdownErr
}
