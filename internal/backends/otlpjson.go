package backends

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Span is one span the collector received, flattened.
type Span struct {
	TraceID      string // 32 hex digits
	SpanID       string // 16 hex digits
	ParentSpanID string // 16 hex digits, "" for a root span
	Name         string
	Kind         string // "Internal", "Server", "Client", "Producer", "Consumer" or "Unspecified"

	StartUnixNano, EndUnixNano uint64

	Attributes    map[string]any // values: string, bool, int64, float64, []byte, []any, map[string]any
	StatusCode    string         // "Unset", "Ok" or "Error"
	StatusMessage string
	Events        []SpanEvent
	Links         []SpanLink

	Scope    string // instrumentation scope name
	Resource map[string]any
}

// SpanEvent is an event of a Span.
type SpanEvent struct {
	Name         string
	TimeUnixNano uint64
	Attributes   map[string]any
}

// SpanLink is a link of a Span to another span.
type SpanLink struct {
	TraceID, SpanID string
	Attributes      map[string]any
}

// Metric is one metric of one export, flattened.
type Metric struct {
	Name, Description, Unit string
	Type                    string // "gauge", "sum", "histogram", "exponential_histogram" or "summary"
	Monotonic               bool   // sums only
	Temporality             string // "cumulative" or "delta" (sums and histograms), else ""
	DataPoints              []DataPoint

	Scope    string // instrumentation scope name
	Resource map[string]any
}

// DataPoint is one data point of a Metric.
type DataPoint struct {
	Attributes                  map[string]any
	StartUnixNano, TimeUnixNano uint64

	// Value is a gauge's or sum's value (integer values converted).
	Value float64

	// Count and Sum are set for histograms, exponential histograms and
	// summaries; BucketCounts, ExplicitBounds, Min and Max for histograms
	// (Min and Max nil when not recorded).
	Count          uint64
	Sum            float64
	BucketCounts   []uint64
	ExplicitBounds []float64
	Min, Max       *float64

	// Exponential histograms: the scale, the zero bucket's count, and the
	// positive buckets (PositiveCounts[i] is bucket PositiveOffset+i).
	Scale          int32
	ZeroCount      uint64
	PositiveOffset int32
	PositiveCounts []uint64
}

// LogRecord is one log record the collector received, flattened.
type LogRecord struct {
	TimeUnixNano, ObservedTimeUnixNano uint64

	SeverityNumber int32
	SeverityText   string
	EventName      string
	Body           any
	Attributes     map[string]any
	TraceID        string // hex, "" if none
	SpanID         string // hex, "" if none

	Scope    string
	Resource map[string]any
}

// FindSpan returns the first span named name.
func FindSpan(spans []Span, name string) (Span, bool) {
	for _, s := range spans {
		if s.Name == name {
			return s, true
		}
	}
	return Span{}, false
}

// LastMetric returns the last (newest) metric named name.
func LastMetric(metrics []Metric, name string) (Metric, bool) {
	for i := len(metrics) - 1; i >= 0; i-- {
		if metrics[i].Name == name {
			return metrics[i], true
		}
	}
	return Metric{}, false
}

func readSpans(path string) ([]Span, error) {
	var out []Span
	err := readOTLPLines(path, func() proto.Message { return &coltracepb.ExportTraceServiceRequest{} }, func(m proto.Message) {
		for _, rs := range m.(*coltracepb.ExportTraceServiceRequest).GetResourceSpans() {
			res := resourceMap(rs.GetResource())
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					out = append(out, flattenSpan(s, ss.GetScope().GetName(), res))
				}
			}
		}
	})
	return out, err
}

func flattenSpan(s *tracepb.Span, scope string, res map[string]any) Span {
	sp := Span{
		TraceID:       hex.EncodeToString(s.GetTraceId()),
		SpanID:        hex.EncodeToString(s.GetSpanId()),
		ParentSpanID:  hex.EncodeToString(s.GetParentSpanId()),
		Name:          s.GetName(),
		Kind:          spanKinds[s.GetKind()],
		StartUnixNano: s.GetStartTimeUnixNano(),
		EndUnixNano:   s.GetEndTimeUnixNano(),
		Attributes:    attrMap(s.GetAttributes()),
		StatusCode:    statusCodes[s.GetStatus().GetCode()],
		StatusMessage: s.GetStatus().GetMessage(),
		Scope:         scope,
		Resource:      res,
	}
	if sp.Kind == "" {
		sp.Kind = s.GetKind().String()
	}
	if sp.StatusCode == "" {
		sp.StatusCode = s.GetStatus().GetCode().String()
	}
	for _, e := range s.GetEvents() {
		sp.Events = append(sp.Events, SpanEvent{Name: e.GetName(), TimeUnixNano: e.GetTimeUnixNano(), Attributes: attrMap(e.GetAttributes())})
	}
	for _, l := range s.GetLinks() {
		sp.Links = append(sp.Links, SpanLink{TraceID: hex.EncodeToString(l.GetTraceId()), SpanID: hex.EncodeToString(l.GetSpanId()), Attributes: attrMap(l.GetAttributes())})
	}
	return sp
}

var spanKinds = map[tracepb.Span_SpanKind]string{
	tracepb.Span_SPAN_KIND_UNSPECIFIED: "Unspecified",
	tracepb.Span_SPAN_KIND_INTERNAL:    "Internal",
	tracepb.Span_SPAN_KIND_SERVER:      "Server",
	tracepb.Span_SPAN_KIND_CLIENT:      "Client",
	tracepb.Span_SPAN_KIND_PRODUCER:    "Producer",
	tracepb.Span_SPAN_KIND_CONSUMER:    "Consumer",
}

var statusCodes = map[tracepb.Status_StatusCode]string{
	tracepb.Status_STATUS_CODE_UNSET: "Unset",
	tracepb.Status_STATUS_CODE_OK:    "Ok",
	tracepb.Status_STATUS_CODE_ERROR: "Error",
}

func readMetrics(path string) ([]Metric, error) {
	var out []Metric
	err := readOTLPLines(path, func() proto.Message { return &colmetricspb.ExportMetricsServiceRequest{} }, func(m proto.Message) {
		for _, rm := range m.(*colmetricspb.ExportMetricsServiceRequest).GetResourceMetrics() {
			res := resourceMap(rm.GetResource())
			for _, sm := range rm.GetScopeMetrics() {
				for _, mt := range sm.GetMetrics() {
					out = append(out, flattenMetric(mt, sm.GetScope().GetName(), res))
				}
			}
		}
	})
	return out, err
}

func flattenMetric(m *metricspb.Metric, scope string, res map[string]any) Metric {
	out := Metric{Name: m.GetName(), Description: m.GetDescription(), Unit: m.GetUnit(), Scope: scope, Resource: res}
	number := func(p *metricspb.NumberDataPoint) DataPoint {
		dp := DataPoint{Attributes: attrMap(p.GetAttributes()), StartUnixNano: p.GetStartTimeUnixNano(), TimeUnixNano: p.GetTimeUnixNano()}
		switch v := p.GetValue().(type) {
		case *metricspb.NumberDataPoint_AsDouble:
			dp.Value = v.AsDouble
		case *metricspb.NumberDataPoint_AsInt:
			dp.Value = float64(v.AsInt)
		}
		return dp
	}
	switch d := m.GetData().(type) {
	case *metricspb.Metric_Gauge:
		out.Type = "gauge"
		for _, p := range d.Gauge.GetDataPoints() {
			out.DataPoints = append(out.DataPoints, number(p))
		}
	case *metricspb.Metric_Sum:
		out.Type = "sum"
		out.Monotonic = d.Sum.GetIsMonotonic()
		out.Temporality = temporality(d.Sum.GetAggregationTemporality())
		for _, p := range d.Sum.GetDataPoints() {
			out.DataPoints = append(out.DataPoints, number(p))
		}
	case *metricspb.Metric_Histogram:
		out.Type = "histogram"
		out.Temporality = temporality(d.Histogram.GetAggregationTemporality())
		for _, p := range d.Histogram.GetDataPoints() {
			out.DataPoints = append(out.DataPoints, DataPoint{
				Attributes: attrMap(p.GetAttributes()), StartUnixNano: p.GetStartTimeUnixNano(), TimeUnixNano: p.GetTimeUnixNano(),
				Count: p.GetCount(), Sum: p.GetSum(), BucketCounts: p.GetBucketCounts(), ExplicitBounds: p.GetExplicitBounds(),
				Min: p.Min, Max: p.Max,
			})
		}
	case *metricspb.Metric_ExponentialHistogram:
		out.Type = "exponential_histogram"
		out.Temporality = temporality(d.ExponentialHistogram.GetAggregationTemporality())
		for _, p := range d.ExponentialHistogram.GetDataPoints() {
			out.DataPoints = append(out.DataPoints, DataPoint{
				Attributes: attrMap(p.GetAttributes()), StartUnixNano: p.GetStartTimeUnixNano(), TimeUnixNano: p.GetTimeUnixNano(),
				Count: p.GetCount(), Sum: p.GetSum(), Min: p.Min, Max: p.Max,
				Scale: p.GetScale(), ZeroCount: p.GetZeroCount(),
				PositiveOffset: p.GetPositive().GetOffset(), PositiveCounts: p.GetPositive().GetBucketCounts(),
			})
		}
	case *metricspb.Metric_Summary:
		out.Type = "summary"
		for _, p := range d.Summary.GetDataPoints() {
			out.DataPoints = append(out.DataPoints, DataPoint{
				Attributes: attrMap(p.GetAttributes()), StartUnixNano: p.GetStartTimeUnixNano(), TimeUnixNano: p.GetTimeUnixNano(),
				Count: p.GetCount(), Sum: p.GetSum(),
			})
		}
	}
	return out
}

func temporality(t metricspb.AggregationTemporality) string {
	switch t {
	case metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE:
		return "cumulative"
	case metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA:
		return "delta"
	}
	return ""
}

func readLogs(path string) ([]LogRecord, error) {
	var out []LogRecord
	err := readOTLPLines(path, func() proto.Message { return &collogspb.ExportLogsServiceRequest{} }, func(m proto.Message) {
		for _, rl := range m.(*collogspb.ExportLogsServiceRequest).GetResourceLogs() {
			res := resourceMap(rl.GetResource())
			for _, sl := range rl.GetScopeLogs() {
				for _, l := range sl.GetLogRecords() {
					out = append(out, LogRecord{
						TimeUnixNano:         l.GetTimeUnixNano(),
						ObservedTimeUnixNano: l.GetObservedTimeUnixNano(),
						SeverityNumber:       int32(l.GetSeverityNumber()),
						SeverityText:         l.GetSeverityText(),
						EventName:            l.GetEventName(),
						Body:                 anyValue(l.GetBody()),
						Attributes:           attrMap(l.GetAttributes()),
						TraceID:              hex.EncodeToString(l.GetTraceId()),
						SpanID:               hex.EncodeToString(l.GetSpanId()),
						Scope:                sl.GetScope().GetName(),
						Resource:             res,
					})
				}
			}
		}
	})
	return out, err
}

// readOTLPLines parses the file exporter's output: one OTLP JSON export
// request per line. A missing file is no data yet; a last line without its
// newline is a write in progress and is left for the next read.
func readOTLPLines(path string, newMsg func() proto.Message, each func(proto.Message)) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	for n, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		m := newMsg()
		if err := unmarshalOTLPJSON(line, m); err != nil {
			return fmt.Errorf("%s:%d: %w", path, n+1, err)
		}
		each(m)
	}
	return nil
}

// unmarshalOTLPJSON decodes OTLP/JSON. It differs from protojson's
// mapping of the same messages in one way that matters: trace and span IDs
// are hex strings, where protojson expects base64 for bytes fields (and
// would silently decode 32 hex digits as 24 wrong bytes). They are
// rewritten to base64 first. Unknown fields (newer OTLP) are ignored.
func unmarshalOTLPJSON(line []byte, m proto.Message) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return err
	}
	hexIDsToBase64(v)
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, m)
}

func hexIDsToBase64(v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			switch k {
			case "traceId", "spanId", "parentSpanId":
				if s, ok := x.(string); ok {
					if raw, err := hex.DecodeString(s); err == nil {
						v[k] = base64.StdEncoding.EncodeToString(raw)
					}
					continue
				}
			}
			hexIDsToBase64(x)
		}
	case []any:
		for _, x := range v {
			hexIDsToBase64(x)
		}
	}
}

func resourceMap(r *resourcepb.Resource) map[string]any { return attrMap(r.GetAttributes()) }

func attrMap(kvs []*commonpb.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = anyValue(kv.GetValue())
	}
	return m
}

func anyValue(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BytesValue:
		return x.BytesValue
	case *commonpb.AnyValue_ArrayValue:
		out := make([]any, 0, len(x.ArrayValue.GetValues()))
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, anyValue(e))
		}
		return out
	case *commonpb.AnyValue_KvlistValue:
		return attrMap(x.KvlistValue.GetValues())
	}
	return nil
}
