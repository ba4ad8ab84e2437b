// Package fleet computes the recommend report (sizing.LoaderReport's
// figures: loads, needs, truncations, need bounds, recommended sizes, the
// typical buffer, the verdict and what each default would have done) for a
// whole fleet, from the series every node's exporter exports, by PromQL
// against Prometheus at one evaluation time over one window.
//
// It owns two things: the queries (Query), which turn per-series counters
// and histograms into exact fleet-wide counts across exporter restarts and
// nodes that joined or left within the window (per-series round(increase())
// then sum), and the arithmetic (NewLoaderReport), which turns those counts
// into the report. Histograms keep only power-of-two bucket bounds, so the
// report says which figures are exact and which are bounds: a field named
// ..._at_most or ..._above is a bucket bound, the counts are exact.
package fleet

import (
	"math"

	"github.com/verifierlog/exporter/sizing"
)

// Classes are counts per size class (sizing's): the needs' or the
// buffers' histogram buckets.
type Classes = sizing.SizeClasses

// NumClasses is the number of size classes.
const NumClasses = sizing.NumSizeClasses

// ClassOf is the class of a bucket whose upper bound is upper: the class
// whose upper bound is the smallest power of two >= upper (upper <= 128
// B: class 0; above 1 GiB or +Inf: the last). A classic bucket's le and
// a schema-0 native bucket's upper bound (bucket index i covers
// (2^(i-1), 2^i]) are powers of two, so the class holds the same sizes.
func ClassOf(upper float64) int {
	switch {
	case math.IsNaN(upper) || upper <= 0:
		return 0
	case math.IsInf(upper, 1) || upper > math.MaxUint64/2:
		return NumClasses - 1
	}
	return sizing.SizeClassOf(uint64(math.Ceil(upper)))
}

// Counts are one (command, loader)'s fleet-wide figures over the window,
// as Query adds them up: every count is exact.
type Counts struct {
	Command, Loader string
	// Loads are logical loads ended (bpf_prog_load_attempts' count).
	Loads uint64
	// Truncated are attempts that got ENOSPC.
	Truncated uint64
	// Unknown are logical loads whose need stayed unknown.
	Unknown uint64
	// Needs are the known needs (bpf_verifier_log_required_bytes, every
	// source) per class; NeedSum their sum, if HasNeedSum.
	Needs      Classes
	NeedSum    float64
	HasNeedSum bool
	// Buffers are the buffers attempts passed (bpf_verifier_log_buffer_bytes)
	// per class.
	Buffers Classes
}

// LoaderReport is one (command, loader)'s fleet recommendation. Its JSON
// keys that sizing.LoaderReport has mean what they mean there; where the
// histograms give only a bucket, the figure has new keys for its bounds
// (..._above: exclusive lower bound; ..._at_most: upper bound).
type LoaderReport struct {
	Command string `json:"command"`
	Loader  string `json:"loader"`
	// Loads, NeedsKnown, Truncated and UnknownNeeds are exact counts.
	Loads      uint64 `json:"loads"`
	NeedsKnown uint64 `json:"needs_known"`
	Truncated  uint64 `json:"truncated"`
	// NeedP50Bytes and NeedP99Bytes are power-of-two upper bounds (0:
	// no known need, or above 1 GiB).
	NeedP50Bytes uint64 `json:"need_p50_bytes_at_most"`
	NeedP99Bytes uint64 `json:"need_p99_bytes_at_most"`
	// The largest need is in (NeedMaxAboveBytes, NeedMaxAtMostBytes];
	// NeedMaxAtMostBytes 0 with NeedMaxAboveBytes 1 GiB: above 1 GiB.
	NeedMaxAboveBytes  uint64 `json:"need_max_bytes_above"`
	NeedMaxAtMostBytes uint64 `json:"need_max_bytes_at_most"`
	// Recommended by coverage ("0.99", "1"): the smallest power of two
	// that held that share of the known needs; absent without known needs.
	Recommended map[string]uint64 `json:"recommended_bytes"`
	// The most used buffer (retries included) is in (TypicalBufferAboveBytes,
	// TypicalBufferAtMostBytes]; both 0 if no attempt passed a buffer.
	TypicalBufferAboveBytes  uint64          `json:"typical_buffer_bytes_above"`
	TypicalBufferAtMostBytes uint64          `json:"typical_buffer_bytes_at_most"`
	Verdict                  sizing.Verdict  `json:"verdict"`
	UnknownNeeds             uint64          `json:"unknown_needs"`
	Defaults                 []DefaultReport `json:"defaults"`
}

// DefaultReport is what one default buffer size would have done to the
// known needs. A default that is a power of two (128 B .. 1 GiB) is a
// bucket bound, so its truncated share is exact; one that lies inside a
// bucket gets the share known to be above it and the share possibly above.
type DefaultReport struct {
	sizing.Default
	// TruncatedFraction is the share of known needs above the default,
	// where exact (nil: between the two bounds below).
	TruncatedFraction *float64 `json:"truncated_fraction,omitempty"`
	// TruncatedAtLeast: needs known to be above it; TruncatedAtMost: needs
	// possibly above it (those in the bucket it lies inside too).
	TruncatedAtLeast float64 `json:"truncated_fraction_at_least"`
	TruncatedAtMost  float64 `json:"truncated_fraction_at_most"`
	// AvgWasteBytes is the mean of (default - need) over the needs it held,
	// from the histogram sum: given only where it held every known need.
	AvgWasteBytes *float64 `json:"avg_waste_bytes,omitempty"`
	// The same mean's bounds from the buckets (0 and 0 if it held none).
	AvgWasteAtLeast float64 `json:"avg_waste_bytes_at_least"`
	AvgWasteAtMost  float64 `json:"avg_waste_bytes_at_most"`
}

// top is the highest class with a count, -1 if none.
func top(c *Classes) int {
	for i := len(c) - 1; i >= 0; i-- {
		if c[i] > 0 {
			return i
		}
	}
	return -1
}

// mostUsed is the class counted most often, the larger of a tie; -1 if
// none.
func mostUsed(c *Classes) int {
	best := -1
	for i, n := range c {
		if n > 0 && (best < 0 || n >= c[best]) {
			best = i
		}
	}
	return best
}

// NewLoaderReport turns one loader's counts into its report, with what
// each of defaults would have done.
func NewLoaderReport(c Counts, defaults []sizing.Default) LoaderReport {
	known := c.Needs.Total()
	r := LoaderReport{Command: c.Command, Loader: c.Loader, Loads: c.Loads, NeedsKnown: known,
		Truncated: c.Truncated, UnknownNeeds: c.Unknown, Recommended: map[string]uint64{}, Defaults: []DefaultReport{}}
	r.NeedP50Bytes, _ = c.Needs.Quantile(0.5)
	r.NeedP99Bytes, _ = c.Needs.Quantile(0.99)
	for _, cov := range sizing.Coverages {
		if size, ok := c.Needs.Quantile(cov.Fraction); ok {
			r.Recommended[cov.Label] = size
		}
	}
	if t := top(&c.Needs); t >= 0 {
		r.NeedMaxAboveBytes, r.NeedMaxAtMostBytes = sizing.SizeClassLower(t), sizing.SizeClassUpper(t)
	}
	if m := mostUsed(&c.Buffers); m >= 0 {
		r.TypicalBufferAboveBytes, r.TypicalBufferAtMostBytes = sizing.SizeClassLower(m), sizing.SizeClassUpper(m)
		if r.TypicalBufferAtMostBytes == 0 { // above 1 GiB: log_size is a u32
			r.TypicalBufferAtMostBytes = math.MaxUint32
		}
	}
	r.Verdict = sizing.VerdictOf(r.Recommended["1"], r.TypicalBufferAtMostBytes, c.Truncated)
	for _, d := range defaults {
		r.Defaults = append(r.Defaults, defaultReport(d, c, known))
	}
	return r
}

// defaultReport is what default d would have done to c's known needs.
func defaultReport(d sizing.Default, c Counts, known uint64) DefaultReport {
	dr := DefaultReport{Default: d}
	if known == 0 {
		zero := 0.0
		dr.TruncatedFraction = &zero
		return dr
	}
	size := float64(d.Bytes)
	var (
		truncated, held, straddling uint64
		wasteMin, wasteMax          float64 // over the needs surely held
		straddleLower               float64
	)
	for i, n := range c.Needs {
		if n == 0 {
			continue
		}
		lo, up := float64(sizing.SizeClassLower(i)), float64(sizing.SizeClassUpper(i))
		if i == NumClasses-1 {
			up = math.Inf(1)
		}
		switch {
		case up <= size:
			held += n
			wasteMin += float64(n) * (size - up)
			wasteMax += float64(n) * (size - lo)
		case lo >= size:
			truncated += n
		default: // lo < size < up: each need here may or may not fit
			straddling += n
			straddleLower = lo
		}
	}
	dr.TruncatedAtLeast = float64(truncated) / float64(known)
	dr.TruncatedAtMost = float64(truncated+straddling) / float64(known)
	if straddling == 0 {
		f := dr.TruncatedAtLeast
		dr.TruncatedFraction = &f
	}
	// The mean waste over the needs held: h of the straddling needs may be
	// held too, each wasting [0, size-straddleLower). The mean is monotone
	// in h, so its bounds are at the ends of h's range.
	if held+straddling > 0 {
		dr.AvgWasteAtLeast = wasteMin / float64(held+straddling)
		hMin := uint64(0)
		if held == 0 {
			hMin = 1
		}
		mean := func(h uint64) float64 {
			return (wasteMax + float64(h)*(size-straddleLower)) / float64(held+h)
		}
		dr.AvgWasteAtMost = max(mean(hMin), mean(straddling))
	}
	if truncated == 0 && straddling == 0 && c.HasNeedSum {
		w := size - c.NeedSum/float64(known)
		dr.AvgWasteBytes = &w
	}
	return dr
}
