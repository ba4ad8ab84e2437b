package otel

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protov2 "google.golang.org/protobuf/proto"

	"github.com/verifierlog/exporter/tracer"
)

// TestExactSizeCodecMarshalsIntoABufferOfTheMessagesSize: the bytes gRPC's
// proto codec would send, in one buffer no larger than they are.
func TestExactSizeCodecMarshalsIntoABufferOfTheMessagesSize(t *testing.T) {
	req := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{}}}}}
	for i := range 512 { // a batch: some 100 KiB, which gRPC's pool serves from its 1 MiB tier
		req.ResourceSpans[0].ScopeSpans[0].Spans = append(req.ResourceSpans[0].ScopeSpans[0].Spans, &tracepb.Span{
			Name: "BPF_PROG_LOAD", TraceId: make([]byte, 16), SpanId: make([]byte, 8), StartTimeUnixNano: uint64(i),
			Attributes: []*commonpb.KeyValue{{Key: "process.executable.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "cilium-agent"}}}},
		})
	}
	want, err := protov2.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	c := exactSizeCodec{encoding.GetCodecV2("proto")}
	got, err := c.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || string(got[0].ReadOnlyData()) != string(want) {
		t.Fatalf("marshalled %d buffers, %d bytes; want 1 buffer of the proto codec's %d bytes", len(got), got.Len(), len(want))
	}
	if b := got[0].ReadOnlyData(); cap(b) > len(b)+len(b)/8 {
		t.Errorf("buffer capacity %d for %d bytes", cap(b), len(b))
	}
	var back coltracepb.ExportTraceServiceRequest
	if err := c.Unmarshal(got, &back); err != nil || !protov2.Equal(&back, req) {
		t.Errorf("unmarshal: %v, equal %v", err, protov2.Equal(&back, req))
	}
}

// traceCollector is an OTLP/gRPC trace receiver that keeps what it is sent.
type traceCollector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (c *traceCollector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			c.spans = append(c.spans, ss.Spans...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// TestOTLPGRPCSpansArriveWhole sends spans over gRPC, as serve does with
// OTEL_EXPORTER_OTLP_PROTOCOL=grpc (through exactSizeCodec), to a gRPC
// trace receiver, and finds every span with its attributes.
func TestOTLPGRPCSpansArriveWhole(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &traceCollector{}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, col)
	go srv.Serve(l)
	defer srv.Stop()
	for k, v := range map[string]string{
		"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + l.Addr().String(), "OTEL_BSP_SCHEDULE_DELAY": "10",
	} {
		t.Setenv(k, v)
	}
	tel, err := Setup(context.Background(), BuildInfo{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{MeterProvider: tel.MeterProvider, Recorder: tel.Recorder, TracerProvider: tel.TracerProvider, Clock: tracer.WallClockWithOffset(0)})
	if err != nil {
		t.Fatal(err)
	}
	const loads = 600 // more than a batch
	for i := range uint64(loads) {
		ev := event("bpftool", uint32(i+1), "p", i*ms, i*ms+ms/2, 1<<20, 3)
		p.Handle(&ev)
	}
	p.Flush()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.spans) != 2*loads {
		t.Fatalf("%d spans received, want %d (a chain and an attempt per load)", len(col.spans), 2*loads)
	}
	pids := map[int64]int{}
	for _, s := range col.spans {
		for _, a := range s.Attributes {
			if a.Key == "process.pid" {
				pids[a.Value.GetIntValue()]++
			}
		}
	}
	if len(pids) != loads {
		t.Errorf("%d distinct process.pid values, want %d", len(pids), loads)
	}
	for pid, n := range pids {
		if n != 2 {
			t.Errorf("pid %d on %d spans, want 2", pid, n)
		}
	}
}
