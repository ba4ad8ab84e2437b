package otel

import (
	"math"
	"time"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// nativeBuckets are a histogram's base-2 buckets: Prometheus native
// histograms at schema 0, where bucket i holds the values in
// (2^(i-1), 2^i], and OpenTelemetry exponential histograms at scale 0,
// whose bucket i-1 is the same range. The size histograms' classic bounds
// are powers of two too, so both kinds count the same loads in the same
// ranges. Only the buckets between the lowest and the highest observed
// exist: a histogram of sizes from 1 KiB to 1 MiB holds 11 counters.
type nativeBuckets struct {
	first  int32    // index of counts[0]
	counts []uint64 // by index - first
	zero   uint64   // observations <= 0
}

// nativeIndex is the schema-0 bucket holding v > 0: the smallest i with
// v <= 2^i.
func nativeIndex(v float64) int32 {
	frac, exp := math.Frexp(v) // v = frac * 2^exp, frac in [0.5, 1)
	if frac == 0.5 {
		exp-- // v is 2^(exp-1) exactly: the upper bound of bucket exp-1
	}
	return int32(exp)
}

func (b *nativeBuckets) observe(v float64) {
	if !(v > 0) { // 0, and NaN, which no caller records
		b.zero++
		return
	}
	i := nativeIndex(v)
	switch {
	case len(b.counts) == 0:
		b.first = i
		b.counts = append(b.counts, 0)
	case i < b.first:
		grown := make([]uint64, int(b.first-i)+len(b.counts))
		copy(grown[b.first-i:], b.counts)
		b.counts, b.first = grown, i
	case int(i-b.first) >= len(b.counts):
		b.counts = append(b.counts, make([]uint64, int(i-b.first)-len(b.counts)+1)...)
	}
	b.counts[i-b.first]++
}

// exponentialPoints are series' OTLP exponential data points at scale 0.
func exponentialPoints[N int64 | float64](ss []*series, start, now time.Time, conv func(float64) N) []metricdata.ExponentialHistogramDataPoint[N] {
	dps := make([]metricdata.ExponentialHistogramDataPoint[N], len(ss))
	for i, s := range ss {
		dps[i] = metricdata.ExponentialHistogramDataPoint[N]{Attributes: s.attrs, StartTime: start, Time: now,
			Count: s.count, Sum: conv(s.sum), Scale: 0, ZeroCount: s.native.zero,
			// OpenTelemetry's bucket j is (2^j, 2^(j+1)]: Prometheus's j+1.
			PositiveBucket: metricdata.ExponentialBucket{Offset: s.native.first - 1, Counts: append([]uint64(nil), s.native.counts...)},
			Min:            metricdata.NewExtrema(conv(s.min)), Max: metricdata.NewExtrema(conv(s.max))}
	}
	return dps
}
