package sizing

import (
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/verifierlog/exporter/tracer"
)

// DefaultRecommendWindow is how far back recommendations look.
const DefaultRecommendWindow = 24 * time.Hour

// Coverages are the fractions of logs a recommended size must hold.
var Coverages = []struct {
	Label    string
	Fraction float64
}{{"0.99", 0.99}, {"1", 1}}

// Default is a loader's default verifier-log buffer size.
type Default struct {
	Name  string `json:"name"`
	Bytes uint32 `json:"bytes"`
}

// WellKnownDefaults are the well-known loader defaults, as their loaders
// ship them.
var WellKnownDefaults = []Default{
	{"libbpf", 1<<24 - 1}, // UINT32_MAX >> 8
	{"cilium/ebpf (start)", 64 << 10},
	{"aya (start)", 10 << 10},
	{"bpftrace", 1_000_000},
	{"Cilium", 4 << 20},
	{"OBI", 640 << 10},
}

const (
	windowSlots = 24
	topBuffers  = 8
)

// slot is one time slice of a loader's window. Every field is a count or a
// sum, so memory is fixed whatever the load rate, and every figure is exact:
// recommendations because they are class bounds, the defaults because each
// one keeps its own counts.
type slot struct {
	used      bool
	start     uint64 // the slot's first ns
	loads     uint64 // logical loads (chains) ended
	truncated uint64 // attempts that ended in ENOSPC
	needs     SizeClasses
	maxNeed   uint32
	// Per configured default: needs it would not have held, and the sum of
	// bytes it would have left unused for those it held.
	defTruncated []uint64
	defWaste     []uint64
	// Chains whose need stayed unknown, and the largest buffer any of
	// them proved too small (the need is above it).
	unknown      uint64
	unknownAbove uint32
	buffers      [topBuffers]bufferCount
	otherBuffers uint64
	// The log_size of each chain's first attempt: the loader's default.
	firstBuffers [topBuffers]bufferCount
	otherFirst   uint64
}

type bufferCount struct {
	size uint32
	n    uint64
}

// loaderWindow is one (command, loader)'s sliding window of windowSlots
// slots.
type loaderWindow struct {
	slotNs   uint64
	defaults []Default
	slots    [windowSlots]slot
}

func newLoaderWindow(window time.Duration, defaults []Default) *loaderWindow {
	w := &loaderWindow{slotNs: max(uint64(window)/windowSlots, 1), defaults: defaults}
	for i := range w.slots {
		w.slots[i].defTruncated = make([]uint64, len(defaults))
		w.slots[i].defWaste = make([]uint64, len(defaults))
	}
	return w
}

// at returns the slot for time ns, cleared if it held an older slice.
func (w *loaderWindow) at(ns uint64) *slot {
	start := ns - ns%w.slotNs
	s := &w.slots[(ns/w.slotNs)%windowSlots]
	if !s.used || s.start != start {
		dt, dw := s.defTruncated, s.defWaste
		clear(dt)
		clear(dw)
		*s = slot{used: true, start: start, defTruncated: dt, defWaste: dw}
	}
	return s
}

// addNeed records a logical load's known need.
func (w *loaderWindow) addNeed(ns uint64, need uint32) {
	s := w.at(ns)
	s.loads++
	s.needs[SizeClassOf(uint64(need))]++
	s.maxNeed = max(s.maxNeed, need)
	for i, d := range w.defaults {
		if need > d.Bytes {
			s.defTruncated[i]++
		} else {
			s.defWaste[i] += uint64(d.Bytes - need)
		}
	}
}

// addUnknown records a logical load whose need stayed unknown; above is
// the largest buffer it proved too small (0: none).
func (w *loaderWindow) addUnknown(ns uint64, above uint32) {
	s := w.at(ns)
	s.loads++
	s.unknown++
	s.unknownAbove = max(s.unknownAbove, above)
}

// addAttempt records one attempt's buffer and whether it was truncated.
func (w *loaderWindow) addAttempt(ns uint64, buffer uint32, hasBuffer, truncated bool) {
	s := w.at(ns)
	if truncated {
		s.truncated++
	}
	if hasBuffer {
		countBuffer(&s.buffers, &s.otherBuffers, buffer)
	}
}

// addFirstBuffer records the buffer of a chain's first attempt.
func (w *loaderWindow) addFirstBuffer(ns uint64, buffer uint32) {
	s := w.at(ns)
	countBuffer(&s.firstBuffers, &s.otherFirst, buffer)
}

// countBuffer counts one more use of size in counts, or in other once
// topBuffers sizes are taken.
func countBuffer(counts *[topBuffers]bufferCount, other *uint64, size uint32) {
	free := -1
	for i := range counts {
		switch {
		case counts[i].n > 0 && counts[i].size == size:
			counts[i].n++
			return
		case counts[i].n == 0 && free < 0:
			free = i
		}
	}
	if free >= 0 {
		counts[free] = bufferCount{size, 1}
		return
	}
	*other++
}

// summary is a loader's window added up.
type summary struct {
	loads, truncated, unknown uint64
	unknownAbove, maxNeed     uint32
	needs                     SizeClasses
	known                     uint64
	defTruncated, defWaste    []uint64
	buffers, firstBuffers     map[uint32]uint64
}

// sum adds up the slots that began less than a window before nowNs (the
// window is exact to one slot, 1/24 of it).
func (w *loaderWindow) sum(nowNs uint64) summary {
	out := summary{defTruncated: make([]uint64, len(w.defaults)), defWaste: make([]uint64, len(w.defaults)),
		buffers: map[uint32]uint64{}, firstBuffers: map[uint32]uint64{}}
	span := w.slotNs * windowSlots
	for i := range w.slots {
		s := &w.slots[i]
		if !s.used || s.start+span <= nowNs {
			continue
		}
		out.loads += s.loads
		out.truncated += s.truncated
		out.unknown += s.unknown
		out.unknownAbove = max(out.unknownAbove, s.unknownAbove)
		out.maxNeed = max(out.maxNeed, s.maxNeed)
		for c, n := range s.needs {
			out.needs[c] += n
			out.known += n
		}
		for d := range w.defaults {
			out.defTruncated[d] += s.defTruncated[d]
			out.defWaste[d] += s.defWaste[d]
		}
		for _, b := range s.buffers {
			if b.n > 0 {
				out.buffers[b.size] += b.n
			}
		}
		for _, b := range s.firstBuffers {
			if b.n > 0 {
				out.firstBuffers[b.size] += b.n
			}
		}
	}
	return out
}

// windowKey names one loader's window.
type windowKey struct {
	command tracer.Command
	loader  string
}

// DefaultReport is what one default buffer size would have done to a
// loader's logs.
type DefaultReport struct {
	Default
	// TruncatedFraction of the known needs it would not have held.
	TruncatedFraction float64 `json:"truncated_fraction"`
	// AvgWasteBytes is the mean of (size - need) over the needs it held.
	AvgWasteBytes float64 `json:"avg_waste_bytes"`
}

// LoaderReport is one (command, loader)'s recommendation.
type LoaderReport struct {
	Command string `json:"command"`
	Loader  string `json:"loader"`
	// Loads are logical loads (retry chains) ended in the window;
	// NeedsKnown of them had a known need.
	Loads      uint64 `json:"loads"`
	NeedsKnown uint64 `json:"needs_known"`
	// Truncated counts attempts that ended in ENOSPC.
	Truncated uint64 `json:"truncated"`
	// NeedP50Bytes and NeedP99Bytes are power-of-two upper bounds;
	// NeedMaxBytes is exact.
	NeedP50Bytes uint64 `json:"need_p50_bytes_at_most"`
	NeedP99Bytes uint64 `json:"need_p99_bytes_at_most"`
	NeedMaxBytes uint32 `json:"need_max_bytes"`
	// Recommended by coverage ("0.99", "1"); absent without known needs.
	Recommended map[string]uint64 `json:"recommended_bytes"`
	// TypicalBufferBytes is the loader's most common log_size, retries
	// included.
	TypicalBufferBytes uint32 `json:"typical_buffer_bytes"`
	// FirstBufferBytes is the most common log_size of its chains' first
	// attempts: the loader's default, whatever its retries pass.
	FirstBufferBytes uint32  `json:"first_buffer_bytes"`
	Verdict          Verdict `json:"verdict"`
	// UnknownNeeds are loads whose need stayed unknown; their need is above
	// UnknownNeedAboveBytes, the largest buffer they proved too small.
	UnknownNeeds          uint64 `json:"unknown_needs"`
	UnknownNeedAboveBytes uint32 `json:"unknown_need_above_bytes"`
	// OpenChains are the loader's retry chains not ended yet (a retry may
	// still come), which Loads does not count; OpenNeedAboveBytes is the
	// largest buffer one of them got ENOSPC with (0: none).
	OpenChains         uint64          `json:"open_chains"`
	OpenNeedAboveBytes uint32          `json:"open_need_above_bytes"`
	Defaults           []DefaultReport `json:"defaults"`
}

// Recommendations is the report of every loader seen in the window.
type Recommendations struct {
	WindowSeconds float64        `json:"window_seconds"`
	Loaders       []LoaderReport `json:"loaders"`
}

// Recommendations reports, per loader, what its logs needed and what
// buffer would have held them, over the window before nowNs.
func (l *Ledger) Recommendations(nowNs uint64) Recommendations {
	type open struct {
		chains uint64
		above  uint32
	}
	opens := map[windowKey]open{}
	for _, c := range l.open {
		k := windowKey{c.Key.Command, c.Loader}
		o := opens[k]
		o.chains++
		o.above = max(o.above, c.NeedAbove)
		opens[k] = o
	}
	out := Recommendations{WindowSeconds: l.recommendWindow.Seconds(), Loaders: []LoaderReport{}}
	for k, w := range l.windows {
		s := w.sum(nowNs)
		o := opens[k]
		if s.loads == 0 && s.truncated == 0 && len(s.buffers) == 0 && o.chains == 0 {
			continue
		}
		r := report(k, w.defaults, s)
		r.OpenChains, r.OpenNeedAboveBytes = o.chains, o.above
		out.Loaders = append(out.Loaders, r)
	}
	sort.Slice(out.Loaders, func(i, j int) bool {
		a, b := out.Loaders[i], out.Loaders[j]
		if a.Loads != b.Loads {
			return a.Loads > b.Loads
		}
		return a.Command+a.Loader < b.Command+b.Loader
	})
	return out
}

// RecommendedSizes calls observe with each loader's recommended size for
// each coverage, over the window before nowNs. Loaders with no known need
// in the window have none.
func (l *Ledger) RecommendedSizes(nowNs uint64, observe func(command tracer.Command, loader, coverage string, bytes uint64)) {
	for k, w := range l.windows {
		s := w.sum(nowNs)
		for _, cov := range Coverages {
			if size, ok := s.needs.Quantile(cov.Fraction); ok {
				observe(k.command, k.loader, cov.Label, size)
			}
		}
	}
}

func report(k windowKey, defaults []Default, s summary) LoaderReport {
	r := LoaderReport{Command: k.command.String(), Loader: k.loader, Loads: s.loads, NeedsKnown: s.known,
		Truncated: s.truncated, NeedMaxBytes: s.maxNeed, Recommended: map[string]uint64{},
		UnknownNeeds: s.unknown, UnknownNeedAboveBytes: s.unknownAbove}
	r.NeedP50Bytes, _ = s.needs.Quantile(0.5)
	r.NeedP99Bytes, _ = s.needs.Quantile(0.99)
	for _, c := range Coverages {
		if size, ok := s.needs.Quantile(c.Fraction); ok {
			r.Recommended[c.Label] = size
		}
	}
	r.TypicalBufferBytes = mostUsed(s.buffers)
	r.FirstBufferBytes = mostUsed(s.firstBuffers)
	r.Verdict = VerdictOf(r.Recommended["1"], uint64(r.TypicalBufferBytes), s.truncated)
	for i, d := range defaults {
		dr := DefaultReport{Default: d}
		if s.known > 0 {
			dr.TruncatedFraction = float64(s.defTruncated[i]) / float64(s.known)
			if held := s.known - s.defTruncated[i]; held > 0 {
				dr.AvgWasteBytes = float64(s.defWaste[i]) / float64(held)
			}
		}
		r.Defaults = append(r.Defaults, dr)
	}
	return r
}

// mostUsed is the size counted most often, the larger of a tie; 0 if none.
func mostUsed(counts map[uint32]uint64) uint32 {
	var size uint32
	var most uint64
	for s, n := range counts {
		if n > most || (n == most && s > size) {
			size, most = s, n
		}
	}
	return size
}

// Verdict is what a loader's typical buffer is, next to the size that held
// every log seen: VerdictUndersized, VerdictRight, Oversized(n) or
// VerdictUnknown. Its value is the text of JSON reports and the CLI.
type Verdict string

const (
	VerdictUnknown    Verdict = "unknown"
	VerdictUndersized Verdict = "undersized"
	VerdictRight      Verdict = "right"
)

// oversizedFrom is the ratio of typical buffer to need from which a buffer
// is oversized.
const oversizedFrom = 4

// Oversized is the verdict of a buffer factor times what the logs needed.
func Oversized(factor int64) Verdict {
	return Verdict("oversized by " + strconv.FormatInt(factor, 10) + "x")
}

// VerdictOf compares a loader's typical buffer with the size that holds
// every log seen (recommended): undersized if any attempt was truncated or
// the typical buffer is below it; oversized by Nx from 4x up; right in
// between; unknown without either.
func VerdictOf(recommended, typical, truncated uint64) Verdict {
	switch {
	case truncated > 0 || (recommended > 0 && typical > 0 && typical < recommended):
		return VerdictUndersized
	case recommended == 0 || typical == 0:
		return VerdictUnknown
	}
	ratio := float64(typical) / float64(recommended)
	if ratio >= oversizedFrom {
		return Oversized(int64(math.Round(ratio)))
	}
	return VerdictRight
}

func (l *Ledger) loaderWindow(command tracer.Command, loader string) *loaderWindow {
	k := windowKey{command, loader}
	w := l.windows[k]
	if w == nil {
		w = newLoaderWindow(l.recommendWindow, l.defaults)
		l.windows[k] = w
	}
	return w
}
