package otel

import (
	"context"
	"sort"
	"sync"
	"time"

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
}

// NewRecorder starts the cumulative series now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

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
}

// series is one attribute set of one instrument.
type series struct {
	attrs    attribute.Set
	value    int64 // sums
	count    uint64
	sum      float64
	min, max float64
	buckets  []uint64
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
	s := &series{attrs: o.set}
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
	now := time.Now()
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
			dps := make([]metricdata.HistogramDataPoint[int64], len(in.series))
			for i, s := range in.series {
				dps[i] = metricdata.HistogramDataPoint[int64]{Attributes: s.attrs, StartTime: r.start, Time: now,
					Count: s.count, Bounds: in.bounds, BucketCounts: append([]uint64(nil), s.buckets...),
					Min: metricdata.NewExtrema(int64(s.min)), Max: metricdata.NewExtrema(int64(s.max)), Sum: int64(s.sum)}
			}
			m.Data = metricdata.Histogram[int64]{Temporality: metricdata.CumulativeTemporality, DataPoints: dps}
		case kindFloatHistogram:
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
