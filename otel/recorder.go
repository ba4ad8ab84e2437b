package otel

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Recorder aggregates the per-event metrics itself and hands them to the
// OpenTelemetry SDK's readers as a metric.Producer: the Prometheus exporter
// and the OTLP reader both collect it. Recording is a cached-series lookup
// and a few additions under one lock taken once per event, instead of the
// SDK instrument path's per-measurement attribute handling
// (BenchmarkPipelineHandle measures this path; BENCHMARKS.md, "Pipeline").
// Instruments that are read only at collection (self metrics,
// recommendations) stay SDK instruments.
type Recorder struct {
	mu          sync.Mutex
	start       time.Time
	instruments []*instrument
	// hold is how long a new series shows zero on /metrics (SetNewSeriesHold).
	hold time.Duration
	// exponential: Produce hands OTLP exponential histograms (scale 0)
	// instead of explicit-bucket ones.
	exponential bool
	now         func() time.Time
}

// NewRecorder starts the cumulative series now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now(), now: time.Now} }

// SetNewSeriesHold makes each series the Recorder creates show zero (an
// empty histogram) on /metrics for its first d, and its real value after.
// Loads are rare and come at a loader's start, so a series is born holding
// them: its first sample in Prometheus is already 1 or more, and
// increase() and rate(), which count rises between samples, miss them. The
// same goes for the loads right after an exporter restart when they match
// the previous run's counts. With d at least the scrape interval,
// Prometheus stores each series' rise from zero. OTLP pushes are not held:
// they carry each series' start time. 0 (the default) holds nothing.
func (r *Recorder) SetNewSeriesHold(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hold = d
}

// SetExponentialHistograms makes Produce hand base-2 exponential
// histograms at scale 0 (bucket (2^i, 2^(i+1)]) instead of explicit-bucket
// ones: OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION's
// base2_exponential_bucket_histogram. Prometheus's /metrics serves both
// kinds of buckets whatever this says.
func (r *Recorder) SetExponentialHistograms(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.exponential = on
}

type instrumentKind uint8

const (
	kindSum instrumentKind = iota
	kindIntHistogram
	kindFloatHistogram
)

type instrument struct {
	id                      int
	name, description, unit string
	kind                    instrumentKind
	bounds                  []float64
	series                  []*series
	desc                    *prometheus.Desc // made at the first Collect
}

// series is one attribute set of one instrument.
type series struct {
	attrs    attribute.Set
	created  time.Time
	value    int64 // sums
	count    uint64
	sum      float64
	min, max float64
	buckets  []uint64 // classic, by bounds
	native   nativeBuckets
}

func (r *Recorder) newInstrument(name, description, unit string, kind instrumentKind, bounds []float64) *instrument {
	in := &instrument{id: len(r.instruments), name: name, description: description, unit: unit, kind: kind, bounds: bounds}
	r.instruments = append(r.instruments, in)
	return in
}

// seriesOf returns in's series for o, creating it on first use.
func (r *Recorder) seriesOf(in *instrument, o *attrOpts) *series {
	if s := o.series[in.id]; s != nil {
		return s
	}
	s := &series{attrs: o.set, created: r.now()}
	if in.kind != kindSum {
		s.buckets = make([]uint64, len(in.bounds)+1)
	}
	in.series = append(in.series, s)
	o.series[in.id] = s
	return s
}

// add adds v to a sum. The caller holds r.mu.
func (r *Recorder) add(in *instrument, o *attrOpts, v int64) {
	r.seriesOf(in, o).value += v
}

// observe records v in a histogram. The caller holds r.mu.
func (r *Recorder) observe(in *instrument, o *attrOpts, v float64) {
	s := r.seriesOf(in, o)
	// Buckets are upper-inclusive, as the SDK's: value <= bounds[i].
	s.buckets[sort.SearchFloat64s(in.bounds, v)]++
	s.native.observe(v)
	if s.count == 0 || v < s.min {
		s.min = v
	}
	if s.count == 0 || v > s.max {
		s.max = v
	}
	s.count++
	s.sum += v
}

// Produce implements go.opentelemetry.io/otel/sdk/metric.Producer.
func (r *Recorder) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	sm := metricdata.ScopeMetrics{Scope: instrumentation.Scope{Name: ScopeName}}
	for _, in := range r.instruments {
		if len(in.series) == 0 {
			continue
		}
		m := metricdata.Metrics{Name: in.name, Description: in.description, Unit: in.unit}
		switch in.kind {
		case kindSum:
			dps := make([]metricdata.DataPoint[int64], len(in.series))
			for i, s := range in.series {
				dps[i] = metricdata.DataPoint[int64]{Attributes: s.attrs, StartTime: r.start, Time: now, Value: s.value}
			}
			m.Data = metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true, DataPoints: dps}
		case kindIntHistogram:
			if r.exponential {
				m.Data = metricdata.ExponentialHistogram[int64]{Temporality: metricdata.CumulativeTemporality,
					DataPoints: exponentialPoints(in.series, r.start, now, func(v float64) int64 { return int64(v) })}
				break
			}
			dps := make([]metricdata.HistogramDataPoint[int64], len(in.series))
			for i, s := range in.series {
				dps[i] = metricdata.HistogramDataPoint[int64]{Attributes: s.attrs, StartTime: r.start, Time: now,
					Count: s.count, Bounds: in.bounds, BucketCounts: append([]uint64(nil), s.buckets...),
					Min: metricdata.NewExtrema(int64(s.min)), Max: metricdata.NewExtrema(int64(s.max)), Sum: int64(s.sum)}
			}
			m.Data = metricdata.Histogram[int64]{Temporality: metricdata.CumulativeTemporality, DataPoints: dps}
		case kindFloatHistogram:
			if r.exponential {
				m.Data = metricdata.ExponentialHistogram[float64]{Temporality: metricdata.CumulativeTemporality,
					DataPoints: exponentialPoints(in.series, r.start, now, func(v float64) float64 { return v })}
				break
			}
			dps := make([]metricdata.HistogramDataPoint[float64], len(in.series))
			for i, s := range in.series {
				dps[i] = metricdata.HistogramDataPoint[float64]{Attributes: s.attrs, StartTime: r.start, Time: now,
					Count: s.count, Bounds: in.bounds, BucketCounts: append([]uint64(nil), s.buckets...),
					Min: metricdata.NewExtrema(s.min), Max: metricdata.NewExtrema(s.max), Sum: s.sum}
			}
			m.Data = metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality, DataPoints: dps}
		}
		sm.Metrics = append(sm.Metrics, m)
	}
	return []metricdata.ScopeMetrics{sm}, nil
}
