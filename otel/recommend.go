package otel

import (
	"context"
	"math/bits"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/verifierlog/exporter/tracer"
)

// DefaultRecommendWindow is how far back recommendations look.
const DefaultRecommendWindow = 24 * time.Hour

// Coverages are the fractions of logs a recommended size must hold.
var Coverages = []struct {
	Label    string
	Fraction float64
}{{"0.99", 0.99}, {"1", 1}}

const (
	minSizeExp = 7  // 128 B, the smallest size bucket
	maxSizeExp = 30 // 1 GiB, the largest
	// sizeClasses: one per power of two from 2^7 to 2^30, plus "larger".
	sizeClasses = maxSizeExp - minSizeExp + 2
	windowSlots = 24
)

// sizeClass is the index of the smallest power of two >= n (at least
// 128 B), or the last class for needs above 1 GiB.
func sizeClass(n uint32) int {
	if n <= 1<<minSizeExp {
		return 0
	}
	exp := bits.Len32(n - 1) // smallest e with 2^e >= n
	if exp > maxSizeExp {
		return sizeClasses - 1
	}
	return exp - minSizeExp
}

// classSize is the buffer size of class i (0 for "larger than 1 GiB").
func classSize(i int) uint64 {
	if i >= sizeClasses-1 {
		return 0
	}
	return 1 << (i + minSizeExp)
}

// needWindow counts needs by size class over a sliding window of
// windowSlots time slots: memory is fixed whatever the load rate, and the
// answer is exact, because the recommended sizes are the class bounds.
type needWindow struct {
	slotNs uint64
	slots  [windowSlots]struct {
		used   bool
		start  uint64 // the slot's first ns
		counts [sizeClasses]uint64
	}
}

func newNeedWindow(window time.Duration) *needWindow {
	return &needWindow{slotNs: max(uint64(window)/windowSlots, 1)}
}

func (w *needWindow) add(nowNs uint64, need uint32) {
	start := nowNs - nowNs%w.slotNs
	s := &w.slots[(nowNs/w.slotNs)%windowSlots]
	if !s.used || s.start != start {
		s.used, s.start, s.counts = true, start, [sizeClasses]uint64{}
	}
	s.counts[sizeClass(need)]++
}

// totals sums the slots that began less than a window before nowNs (the
// window is thus exact to one slot, 1/24 of it).
func (w *needWindow) totals(nowNs uint64) (counts [sizeClasses]uint64, total uint64) {
	span := w.slotNs * windowSlots
	for i := range w.slots {
		s := &w.slots[i]
		if !s.used || s.start+span <= nowNs {
			continue
		}
		for c, n := range s.counts {
			counts[c] += n
			total += n
		}
	}
	return counts, total
}

// recommend is the smallest class size holding fraction of the needs, and
// false if there are none (or the answer is above 1 GiB).
func recommend(counts [sizeClasses]uint64, total uint64, fraction float64) (uint64, bool) {
	if total == 0 {
		return 0, false
	}
	want := uint64(float64(total)*fraction + 0.999999)
	var acc uint64
	for i, n := range counts {
		acc += n
		if acc >= want {
			size := classSize(i)
			return size, size != 0
		}
	}
	return 0, false
}

// recommendKey names one recommendation series.
type recommendKey struct {
	command tracer.Command
	loader  string
}

func (p *Pipeline) needWindow(k recommendKey) *needWindow {
	w := p.needs[k]
	if w == nil {
		w = newNeedWindow(p.recommendWindow)
		p.needs[k] = w
	}
	return w
}

// registerRecommendations exports
// bpf_verifier_log_recommended_buffer_bytes{command,loader,coverage}: the
// smallest power of two that would have held that fraction of the needs
// seen in the window. Loaders with no known need in the window have none.
func (p *Pipeline) registerRecommendations(m metric.Meter) error {
	gauge, err := m.Int64ObservableGauge("bpf_verifier_log_recommended_buffer_bytes",
		metric.WithDescription("Smallest power-of-two verifier-log buffer that would have held the given fraction (coverage) of this loader's logs in the recommendation window."),
		metric.WithUnit("By"))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		now := p.now()
		for k, w := range p.needs {
			counts, total := w.totals(now)
			for _, cov := range Coverages {
				if size, ok := recommend(counts, total, cov.Fraction); ok {
					o.ObserveInt64(gauge, int64(size), metric.WithAttributes(
						attribute.String(keyCommand, k.command.String()), attribute.String(keyLoader, k.loader),
						attribute.String("coverage", cov.Label)))
				}
			}
		}
		return nil
	}, gauge)
	return err
}
