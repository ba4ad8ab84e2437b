package otel

import (
	"slices"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/tracer"
)

// Log tails as the verifier leaves them: a success at log level 1 (only
// the summary), a rejection (the complaint, then the summary), and a tail
// that holds no summary (the middle of a long log).
const (
	okTail       = "processed 6 insns (limit 1000000) max_states_per_insn 0 total_states 1 peak_states 1 mark_read 0\n"
	rejectedTail = "0: (b7) r1 = 0\n1: (95) exit\nR0 !read_ok\nprocessed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n"
	middleTail   = "12: (bf) r2 = r10\n13: (07) r2 += -8\n"
)

func withTail(ev tracer.LoadEvent, tail string) tracer.LoadEvent {
	ev.LogTail = []byte(tail)
	return ev
}

var eacces = -int64(unix.EACCES)

// TestLogTailBecomesASpanEventAndAttributes: an attempt with a log tail
// has a bpf.verifier.log event at its end carrying the tail, sanitized, and
// the summary's counters as attributes where the tail has the summary; the
// chain span gets neither, and an attempt without a tail has no event.
func TestLogTailBecomesASpanEventAndAttributes(t *testing.T) {
	r := newRig(t, 0)
	ok := withTail(event("libbpf", 10, "ok", 1000*ms, 1002*ms, 4096, 7), "\x1b[2Jloader text\r\n"+okTail)
	rejected := withTail(event("aya", 20, "rejected", 2000*ms, 2003*ms, 4096, eacces), rejectedTail)
	middle := withTail(event("bpftool", 30, "middle", 3000*ms, 3001*ms, 4096, 8), middleTail)
	none := event("systemd", 40, "none", 4000*ms, 4001*ms, 4096, 9)
	evs := []tracer.LoadEvent{ok, rejected, middle, none}
	for i := range evs {
		r.p.Handle(&evs[i])
		// The tracer reuses the tail's buffer for the next record.
		for j := range evs[i].LogTail {
			evs[i].LogTail[j] = 'X'
		}
	}
	r.p.Flush()

	type want struct {
		tail                   string // "": no event
		processed, total, peak int64  // -1: no attributes
		err                    bool
	}
	wants := map[string]want{
		"ok":       {"\ufffd[2Jloader text\ufffd\n" + okTail, 6, 1, 1, false},
		"rejected": {rejectedTail, 2, 0, 0, true},
		"middle":   {middleTail, -1, -1, -1, false},
		"none":     {"", -1, -1, -1, false},
	}
	seen := 0
	for _, s := range r.spans.GetSpans() {
		a := s.Attributes
		name := attrs(a)["bpf.prog.name"]
		if s.Name == "bpf.load" {
			if len(s.Events) != 0 || slices.ContainsFunc(a, func(kv attribute.KeyValue) bool { return kv.Key == "bpf.verifier.processed_insns" }) {
				t.Errorf("chain span of %s: events %v, attributes %v", name, s.Events, a)
			}
			continue
		}
		w, found := wants[name]
		if !found {
			t.Errorf("unexpected span %q of %q", s.Name, name)
			continue
		}
		seen++
		if (s.Status.Code == codes.Error) != w.err {
			t.Errorf("%s: status %v", name, s.Status)
		}
		for _, k := range []struct {
			key  string
			want int64
		}{{"bpf.verifier.processed_insns", w.processed}, {"bpf.verifier.total_states", w.total}, {"bpf.verifier.peak_states", w.peak}} {
			i := slices.IndexFunc(a, func(kv attribute.KeyValue) bool { return string(kv.Key) == k.key })
			switch {
			case k.want < 0 && i >= 0:
				t.Errorf("%s: %s = %v, want none", name, k.key, a[i].Value.Emit())
			case k.want >= 0 && i < 0:
				t.Errorf("%s: no %s, want %d", name, k.key, k.want)
			case k.want >= 0 && (a[i].Value.Type() != attribute.INT64 || a[i].Value.AsInt64() != k.want):
				t.Errorf("%s: %s = %s %s, want INT64 %d", name, k.key, a[i].Value.Type(), a[i].Value.Emit(), k.want)
			}
		}
		if w.tail == "" {
			if len(s.Events) != 0 {
				t.Errorf("%s: events %v, want none", name, s.Events)
			}
			continue
		}
		if len(s.Events) != 1 {
			t.Errorf("%s: %d events, want one", name, len(s.Events))
			continue
		}
		e := s.Events[0]
		if e.Name != "bpf.verifier.log" || !e.Time.Equal(s.EndTime) {
			t.Errorf("%s: event %q at %v, want bpf.verifier.log at the span's end %v", name, e.Name, e.Time, s.EndTime)
		}
		if got := spanAttrs(e.Attributes); !slices.Equal(got, []string{"bpf.verifier.log.tail=STRING:" + w.tail}) {
			t.Errorf("%s: event attributes\n got %q\nwant the tail %q", name, got, w.tail)
		}
	}
	if seen != len(wants) {
		t.Errorf("%d attempt spans, want %d", seen, len(wants))
	}
}

// TestProcessedInsnsHistogram: bpf_verifier_processed_insns observes the
// summary's count of successful attempts only, per command and loader,
// in power-of-two buckets from 1 to 2^21.
func TestProcessedInsnsHistogram(t *testing.T) {
	r := newRig(t, 0)
	big := "processed 1000000 insns (limit 1000000) max_states_per_insn 4 total_states 9000 peak_states 900 mark_read 20\n"
	r.handle(
		withTail(event("libbpf", 10, "a", 0, ms, 4096, 7), okTail),
		withTail(event("libbpf", 10, "b", 2*ms, 3*ms, 4096, 7), big),
		// 5.x kernels print fewer fields: the count is still read.
		withTail(event("libbpf", 10, "c", 4*ms, 5*ms, 4096, 7), "processed 3 insns (limit 131072), stack depth 0\n"),
		withTail(event("libbpf", 10, "d", 6*ms, 7*ms, 4096, eacces), rejectedTail), // rejected: not observed
		withTail(event("libbpf", 10, "e", 8*ms, 9*ms, 4096, 7), middleTail),        // no summary: not observed
		event("aya", 20, "f", 10*ms, 11*ms, 4096, 7),                               // tail off: not observed
	)
	hs := r.histograms(t, "bpf_verifier_processed_insns")
	if len(hs) != 1 {
		t.Fatalf("series %v, want libbpf's only", hs)
	}
	h, ok := hs["command=BPF_PROG_LOAD,loader=libbpf"]
	if !ok {
		t.Fatalf("series %v", hs)
	}
	if h.Count != 3 || h.Sum != 1000009 {
		t.Errorf("count %d sum %d, want 3 and 1000009", h.Count, h.Sum)
	}
	if len(h.Bounds) != 22 || h.Bounds[0] != 1 || h.Bounds[21] != 1<<21 {
		t.Errorf("bounds %v, want 1, 2, 4 .. 2^21", h.Bounds)
	}
	for i := 1; i < len(h.Bounds); i++ {
		if h.Bounds[i] != 2*h.Bounds[i-1] {
			t.Errorf("bounds %v are not powers of two", h.Bounds)
			break
		}
	}
	want := make([]uint64, len(h.Bounds)+1)
	want[2]++  // 3 <= 4
	want[3]++  // 6 <= 8
	want[20]++ // 1000000 <= 2^20
	if !slices.Equal(h.BucketCounts, want) {
		t.Errorf("buckets %v, want %v", h.BucketCounts, want)
	}
}

// TestLogTailMetricsPathDoesNotAllocate: with the tail on, reading the
// summary for the histogram costs no allocation on the metrics path.
func TestLogTailMetricsPathDoesNotAllocate(t *testing.T) {
	p, err := New(Config{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))})
	if err != nil {
		t.Fatal(err)
	}
	evs := []tracer.LoadEvent{
		withTail(event("libbpf", 10, "a", 0, 2*ms, 4096, eacces), rejectedTail),
		withTail(event("libbpf", 10, "a", 3*ms, 5*ms, 4096, 7), okTail),
	}
	for i := range evs {
		p.Handle(&evs[i])
	}
	allocs := testing.AllocsPerRun(1000, func() {
		for i := range evs {
			p.Handle(&evs[i])
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per chain of two attempts with log tails, want 0", allocs)
	}
}
