package otel

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/verifierlog/exporter/tracer"
)

// spanAttrs is a span's attributes as "key=value", sorted: every key, and
// no other, with its value and type.
func spanAttrs(kvs []attribute.KeyValue) []string {
	out := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, fmt.Sprintf("%s=%s:%s", kv.Key, kv.Value.Type(), kv.Value.Emit()))
	}
	slices.Sort(out)
	return out
}

// TestSpanAttributesAreExact pins every attribute of the chain and attempt
// spans, of a PROG_LOAD chain that ends in a success, a failed chain whose
// need nobody measured, a BTF load, and a load the verifier rejected whose
// record carries a log tail: names, types and values, and no attribute
// more.
func TestSpanAttributesAreExact(t *testing.T) {
	r := newRig(t, 0)
	first := withTrueSize(event("cilium-agent", 10, "tail_call", 1000*ms, 1002*ms, 65536, enospc), 70000)
	second := withTrueSize(event("cilium-agent", 10, "tail_call", 1003*ms, 1006*ms, 70000, 7), 70000)
	second.TID = 11
	unknown := event("aya", 20, "xdp_prog", 2000*ms, 2001*ms, 128, enospc) // ENOSPC, no true size: need above 128
	btf := event("bpftool", 30, "", 3000*ms, 3001*ms, 256, 5)
	btf.Command, btf.ProgType, btf.InsnCnt = tracer.CmdBTFLoad, 0, 0
	rejected := event("libbpf", 40, "rejected", 4000*ms, 4001*ms, 4096, -13) // EACCES
	rejected.LogTail = []byte("R0 !read_ok\nprocessed 2 insns (limit 1000000) max_states_per_insn 0 total_states 3 peak_states 1 mark_read 0\n")
	r.handle(first, second, unknown, btf, rejected)
	r.p.Flush()

	idCilium := []string{"bpf.command=STRING:BPF_PROG_LOAD", "bpf.prog.insn_count=INT64:100", "bpf.prog.name=STRING:tail_call",
		"bpf.prog.type=STRING:socket_filter", "process.executable.name=STRING:cilium-agent", "process.pid=INT64:10"}
	idAya := []string{"bpf.command=STRING:BPF_PROG_LOAD", "bpf.prog.insn_count=INT64:100", "bpf.prog.name=STRING:xdp_prog",
		"bpf.prog.type=STRING:socket_filter", "process.executable.name=STRING:aya", "process.pid=INT64:20"}
	idLibbpf := []string{"bpf.command=STRING:BPF_PROG_LOAD", "bpf.prog.insn_count=INT64:100", "bpf.prog.name=STRING:rejected",
		"bpf.prog.type=STRING:socket_filter", "process.executable.name=STRING:libbpf", "process.pid=INT64:40"}
	idBTF := []string{"bpf.command=STRING:BPF_BTF_LOAD", "process.executable.name=STRING:bpftool", "process.pid=INT64:30"}
	with := func(id []string, more ...string) []string {
		out := append(slices.Clone(id), more...)
		slices.Sort(out)
		return out
	}
	type want struct {
		attrs []string
		err   bool
	}
	wants := map[string]want{
		"bpf.load cilium-agent": {with(idCilium, "bpf.load.attempts=INT64:2", "bpf.load.failed_seconds=FLOAT64:0.002"), false},
		"BPF_PROG_LOAD cilium-agent 1": {with(idCilium, "thread.id=INT64:10", "bpf.log.level=INT64:1", "bpf.log.mode=STRING:rotating",
			"bpf.log.size=INT64:65536", "bpf.log.truncated=BOOL:true", "bpf.load.attempt=INT64:1", "bpf.log.true_size=INT64:70000",
			"error.type=STRING:ENOSPC"), true},
		"BPF_PROG_LOAD cilium-agent 2": {with(idCilium, "thread.id=INT64:11", "bpf.log.level=INT64:1", "bpf.log.mode=STRING:rotating",
			"bpf.log.size=INT64:70000", "bpf.log.truncated=BOOL:false", "bpf.load.attempt=INT64:2", "bpf.log.true_size=INT64:70000"), false},
		"bpf.load aya": {with(idAya, "bpf.load.attempts=INT64:1", "bpf.load.failed_seconds=FLOAT64:0.001", "bpf.log.need_above=INT64:128",
			"error.type=STRING:ENOSPC"), true},
		"BPF_PROG_LOAD aya 1": {with(idAya, "thread.id=INT64:20", "bpf.log.level=INT64:1", "bpf.log.mode=STRING:rotating",
			"bpf.log.size=INT64:128", "bpf.log.truncated=BOOL:true", "bpf.load.attempt=INT64:1", "error.type=STRING:ENOSPC"), true},
		"bpf.load bpftool": {with(idBTF, "bpf.load.attempts=INT64:1", "bpf.load.failed_seconds=FLOAT64:0", "bpf.log.need_at_most=INT64:256"), false},
		"BPF_BTF_LOAD bpftool 1": {with(idBTF, "thread.id=INT64:30", "bpf.log.level=INT64:1", "bpf.log.mode=STRING:rotating",
			"bpf.log.size=INT64:256", "bpf.log.truncated=BOOL:false", "bpf.load.attempt=INT64:1"), false},
		"bpf.load libbpf": {with(idLibbpf, "bpf.load.attempts=INT64:1", "bpf.load.failed_seconds=FLOAT64:0.001", "error.type=STRING:EACCES"), true},
		"BPF_PROG_LOAD libbpf 1": {with(idLibbpf, "thread.id=INT64:40", "bpf.log.level=INT64:1", "bpf.log.mode=STRING:rotating",
			"bpf.log.size=INT64:4096", "bpf.log.truncated=BOOL:false", "bpf.load.attempt=INT64:1", "error.type=STRING:EACCES",
			"bpf.verifier.processed_insns=INT64:2", "bpf.verifier.total_states=INT64:3", "bpf.verifier.peak_states=INT64:1"), true},
	}
	got := map[string]tracetest.SpanStub{}
	for _, s := range r.spans.GetSpans() {
		a := attrs(s.Attributes)
		name := s.Name + " " + a["process.executable.name"]
		if s.Name != "bpf.load" {
			name += " " + a["bpf.load.attempt"]
		}
		if _, dup := got[name]; dup {
			t.Errorf("two spans %q", name)
		}
		got[name] = s
	}
	if len(got) != len(wants) {
		t.Errorf("%d spans, want %d", len(got), len(wants))
	}
	for name, w := range wants {
		s, ok := got[name]
		if !ok {
			t.Errorf("no span %q", name)
			continue
		}
		if a := spanAttrs(s.Attributes); !slices.Equal(a, w.attrs) {
			t.Errorf("span %q attributes\n got %q\nwant %q", name, a, w.attrs)
		}
		if (s.Status.Code == codes.Error) != w.err {
			t.Errorf("span %q status %v, want error %v", name, s.Status, w.err)
		}
		if s.DroppedAttributes != 0 {
			t.Errorf("span %q dropped %d attributes", name, s.DroppedAttributes)
		}
	}
}

// discardSpans is a span processor that keeps nothing.
type discardSpans struct{}

func (discardSpans) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (discardSpans) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (discardSpans) Shutdown(context.Context) error                  { return nil }
func (discardSpans) ForceFlush(context.Context) error                { return nil }

// BenchmarkPipelineHandleSpans is BenchmarkPipelineHandle's events with
// spans on (ended into a processor that keeps nothing): the span path's
// own cost, without the export's.
func BenchmarkPipelineHandleSpans(b *testing.B) {
	p, err := New(Config{
		MeterProvider:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())),
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(discardSpans{})),
		Clock:          tracer.WallClockWithOffset(0),
	})
	if err != nil {
		b.Fatal(err)
	}
	benchmarkHandle(b, p)
}
