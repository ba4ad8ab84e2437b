package otel

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// nativeZeroThreshold is the width of the native histograms' zero bucket,
// client_golang's default (2^-128). It holds the observations of 0, and a
// threshold above 0 is what marks an empty histogram as native to
// Prometheus 2.x (newer servers also read the empty span written with it).
var nativeZeroThreshold = math.Ldexp(1, -128)

// Describe implements prometheus.Collector. It describes nothing: the
// series appear as loads come, so the Recorder is an unchecked collector.
func (r *Recorder) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector: the per-event metrics for
// /metrics, under the names the OpenTelemetry Prometheus exporter gives
// them (sums with _total). Histograms carry both their classic buckets and
// native buckets at schema 0: the text format has only the classic ones,
// the protobuf format both, and a Prometheus server ingests the native
// ones where native histograms are enabled, the classic ones elsewhere.
// Each series carries its creation time (the protobuf format's created
// timestamp) and shows zero for its first hold (SetNewSeriesHold).
func (r *Recorder) Collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	for _, in := range r.instruments {
		if len(in.series) == 0 {
			continue
		}
		if in.desc == nil {
			in.desc = prometheus.NewDesc(in.promName(), in.description, labelNames(in.series[0]), nil)
		}
		for _, s := range in.series {
			m := &dto.Metric{Label: labelPairs(in.desc, s)}
			held := r.hold > 0 && now.Sub(s.created) < r.hold
			if in.kind == kindSum {
				m.Counter = &dto.Counter{Value: proto.Float64(0), CreatedTimestamp: timestamppb.New(s.created)}
				if !held {
					m.Counter.Value = proto.Float64(float64(s.value))
				}
			} else {
				m.Histogram = histogram(in.bounds, s, held)
			}
			ch <- recorded{desc: in.desc, m: m}
		}
	}
}

// promName is the instrument's Prometheus name: sums end in _total; the
// other names already end in their unit.
func (in *instrument) promName() string {
	if in.kind == kindSum {
		return in.name + "_total"
	}
	return in.name
}

func labelNames(s *series) []string {
	names := make([]string, 0, s.attrs.Len())
	for _, kv := range s.attrs.ToSlice() {
		names = append(names, string(kv.Key))
	}
	return names
}

func labelPairs(desc *prometheus.Desc, s *series) []*dto.LabelPair {
	values := make([]string, 0, s.attrs.Len())
	for _, kv := range s.attrs.ToSlice() {
		values = append(values, kv.Value.Emit())
	}
	return prometheus.MakeLabelPairs(desc, values)
}

// histogram is s as a Prometheus histogram with classic and native
// buckets; held, as an empty one.
func histogram(bounds []float64, s *series, held bool) *dto.Histogram {
	h := &dto.Histogram{
		SampleCount:      proto.Uint64(0),
		SampleSum:        proto.Float64(0),
		Bucket:           make([]*dto.Bucket, len(bounds)),
		Schema:           proto.Int32(0),
		ZeroThreshold:    proto.Float64(nativeZeroThreshold),
		ZeroCount:        proto.Uint64(0),
		CreatedTimestamp: timestamppb.New(s.created),
	}
	var cumulative uint64
	for i, b := range bounds {
		if !held {
			cumulative += s.buckets[i]
		}
		h.Bucket[i] = &dto.Bucket{UpperBound: proto.Float64(b), CumulativeCount: proto.Uint64(cumulative)}
	}
	if held || len(s.native.counts) == 0 {
		// An empty span marks a histogram without buckets as native.
		h.PositiveSpan = []*dto.BucketSpan{{Offset: proto.Int32(0), Length: proto.Uint32(0)}}
	}
	if held {
		return h
	}
	h.SampleCount = proto.Uint64(s.count)
	h.SampleSum = proto.Float64(s.sum)
	h.ZeroCount = proto.Uint64(s.native.zero)
	if n := len(s.native.counts); n > 0 {
		h.PositiveSpan = []*dto.BucketSpan{{Offset: proto.Int32(s.native.first), Length: proto.Uint32(uint32(n))}}
		h.PositiveDelta = make([]int64, n)
		var prev int64
		for i, c := range s.native.counts {
			h.PositiveDelta[i] = int64(c) - prev
			prev = int64(c)
		}
	}
	return h
}

// recorded is one collected series.
type recorded struct {
	desc *prometheus.Desc
	m    *dto.Metric
}

func (r recorded) Desc() *prometheus.Desc { return r.desc }

func (r recorded) Write(m *dto.Metric) error {
	m.Label, m.Counter, m.Histogram = r.m.Label, r.m.Counter, r.m.Histogram
	return nil
}
