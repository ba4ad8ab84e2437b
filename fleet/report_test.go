package fleet

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/common/model"

	"github.com/verifierlog/exporter/sizing"
)

func TestClassOf(t *testing.T) {
	for _, c := range []struct {
		upper float64
		class int
	}{
		{0, 0}, {1, 0}, {100, 0}, {128, 0}, {256, 1}, {4096, 5}, {3000, 5}, {1 << 20, 13},
		{1 << 30, NumClasses - 2}, {1 << 31, NumClasses - 1}, {math.Inf(1), NumClasses - 1},
	} {
		if got := ClassOf(c.upper); got != c.class {
			t.Errorf("ClassOf(%v) = %d, want %d", c.upper, got, c.class)
		}
	}
	for i := 1; i < NumClasses-1; i++ {
		if ClassOf(float64(sizing.SizeClassUpper(i))) != i || sizing.SizeClassLower(i)*2 != sizing.SizeClassUpper(i) {
			t.Errorf("class %d: (%d, %d] maps to %d", i, sizing.SizeClassLower(i), sizing.SizeClassUpper(i), ClassOf(float64(sizing.SizeClassUpper(i))))
		}
	}
	if sizing.SizeClassUpper(NumClasses-1) != 0 || sizing.SizeClassLower(NumClasses-1) != 1<<30 {
		t.Errorf("last class (%d, %d], want above 1 GiB", sizing.SizeClassLower(NumClasses-1), sizing.SizeClassUpper(NumClasses-1))
	}
}

// TestAddNative maps schema-0 native buckets, index i covering
// (2^(i-1), 2^i], to the classes of the classic buckets le=2^i, rounding
// each increase()d count.
func TestAddNative(t *testing.T) {
	bucket := func(i int, n float64) *model.HistogramBucket {
		return &model.HistogramBucket{Boundaries: 0, Lower: model.FloatString(math.Ldexp(1, i-1)), Upper: model.FloatString(math.Ldexp(1, i)), Count: model.FloatString(n)}
	}
	h := &model.SampleHistogram{Buckets: model.HistogramBuckets{
		{Boundaries: 3, Lower: 0, Upper: 0, Count: 1.02}, // the zero bucket
		{Boundaries: 1, Lower: -4, Upper: -2, Count: 7},  // negative: not a size
		bucket(5, 2.04), // (16, 32]: below 128 B
		bucket(7, 0.98), // (64, 128]
		bucket(12, 2.9), // (2 KiB, 4 KiB]
		bucket(17, 5.1), // (64 KiB, 128 KiB]
		bucket(30, 1),   // (512 MiB, 1 GiB]
		bucket(31, 1.2), // (1 GiB, 2 GiB]
	}}
	var c Classes
	AddNative(&c, h)
	AddNative(&c, h) // a second series adds up
	var want Classes
	want[0] = 2 * (1 + 2 + 1)
	want[ClassOf(4096)] = 2 * 3
	want[ClassOf(128<<10)] = 2 * 5
	want[ClassOf(1<<30)] = 2 * 1
	want[NumClasses-1] = 2 * 1
	if c != want {
		t.Errorf("classes %v, want %v", c, want)
	}
	if sizing.SizeClassUpper(ClassOf(128<<10)) != 128<<10 {
		t.Errorf("native bucket 17's class has upper bound %d", sizing.SizeClassUpper(ClassOf(128<<10)))
	}
}

// TestAddCumulative turns classic cumulative buckets into per-class counts.
func TestAddCumulative(t *testing.T) {
	m := func(le string, n float64) *model.Sample {
		return &model.Sample{Metric: model.Metric{"command": "BPF_PROG_LOAD", "loader": "x", "le": model.LabelValue(le)}, Value: model.SampleValue(n)}
	}
	v := model.Vector{m("+Inf", 10), m("128", 1), m("4096", 6), m("2048", 1), m("1.073741824e+09", 9), m("256", 1)}
	var c Classes
	addCumulative(v, func(model.Metric) *Classes { return &c })
	var want Classes
	want[0], want[ClassOf(4096)], want[ClassOf(1<<30)], want[NumClasses-1] = 1, 5, 3, 1
	if c != want {
		t.Errorf("classes %v, want %v", c, want)
	}

	// One node scraped as text (le="4096"), one as protobuf (le="4096.0"):
	// the same bounds, added up.
	v = model.Vector{m("+Inf", 3), m("4096", 2), m("128", 1), m("+Inf", 4), m("4096.0", 4), m("128.0", 0)}
	c = Classes{}
	addCumulative(v, func(model.Metric) *Classes { return &c })
	want = Classes{}
	want[0], want[ClassOf(4096)], want[NumClasses-1] = 1, 5, 1
	if c != want {
		t.Errorf("mixed le spellings: classes %v, want %v", c, want)
	}
}

// needs is 98 needs in (2 KiB, 4 KiB], one in (32 KiB, 64 KiB] and one in
// (512 KiB, 1 MiB].
func needs() Classes {
	var c Classes
	c[ClassOf(4096)] = 98
	c[ClassOf(64<<10)] = 1
	c[ClassOf(1<<20)] = 1
	return c
}

func TestQuantiles(t *testing.T) {
	c := needs()
	for _, q := range []struct {
		f    float64
		want uint64
	}{{0.5, 4096}, {0.98, 4096}, {0.99, 64 << 10}, {0.995, 1 << 20}, {1, 1 << 20}} {
		if got, ok := c.Quantile(q.f); !ok || got != q.want {
			t.Errorf("Quantile(%v) = %d %v, want %d", q.f, got, ok, q.want)
		}
	}
	if _, ok := (&Classes{}).Quantile(0.5); ok {
		t.Error("a quantile of no needs")
	}
	var huge Classes
	huge[NumClasses-1] = 1
	if _, ok := huge.Quantile(1); ok {
		t.Error("a quantile above 1 GiB is not a size")
	}
	r := NewLoaderReport(Counts{Needs: huge, Loads: 1}, nil)
	if len(r.Recommended) != 0 || r.NeedMaxAboveBytes != 1<<30 || r.NeedMaxAtMostBytes != 0 {
		t.Errorf("a need above 1 GiB: recommended %v, max in (%d, %d]", r.Recommended, r.NeedMaxAboveBytes, r.NeedMaxAtMostBytes)
	}
}

func TestLoaderReport(t *testing.T) {
	c := Counts{Command: "BPF_PROG_LOAD", Loader: "agent", Loads: 103, Truncated: 4, Unknown: 3, Needs: needs(), NeedSum: 98*3000 + 40_000 + 600_000, HasNeedSum: true}
	c.Buffers[ClassOf(64<<10)] = 100
	c.Buffers[ClassOf(16<<20)] = 100 // a tie: the larger wins
	c.Buffers[ClassOf(1<<20)] = 4
	defaults := []sizing.Default{
		{Name: "64KiB", Bytes: 64 << 10},     // a bucket bound: exact
		{Name: "10KiB", Bytes: 10 << 10},     // inside (8 KiB, 16 KiB], which holds no need: exact
		{Name: "bpftrace", Bytes: 1_000_000}, // inside (512 KiB, 1 MiB], which holds one: bounds
		{Name: "libbpf", Bytes: 1<<24 - 1},   // above every need: exact, waste from the sum
		{Name: "tiny", Bytes: 100},           // inside (0, 128], which holds none: truncates all
	}
	r := NewLoaderReport(c, defaults)
	if r.Loads != 103 || r.NeedsKnown != 100 || r.Truncated != 4 || r.UnknownNeeds != 3 {
		t.Errorf("counts: loads %d known %d truncated %d unknown %d", r.Loads, r.NeedsKnown, r.Truncated, r.UnknownNeeds)
	}
	if r.NeedP50Bytes != 4096 || r.NeedP99Bytes != 64<<10 || r.NeedMaxAboveBytes != 512<<10 || r.NeedMaxAtMostBytes != 1<<20 {
		t.Errorf("needs: p50 %d p99 %d max (%d, %d]", r.NeedP50Bytes, r.NeedP99Bytes, r.NeedMaxAboveBytes, r.NeedMaxAtMostBytes)
	}
	if !reflect.DeepEqual(r.Recommended, map[string]uint64{"0.99": 64 << 10, "1": 1 << 20}) {
		t.Errorf("recommended %v", r.Recommended)
	}
	if r.TypicalBufferAboveBytes != 8<<20 || r.TypicalBufferAtMostBytes != 16<<20 {
		t.Errorf("typical buffer in (%d, %d], want (8 MiB, 16 MiB]", r.TypicalBufferAboveBytes, r.TypicalBufferAtMostBytes)
	}
	if r.Verdict != sizing.VerdictUndersized {
		t.Errorf("verdict %q with 4 ENOSPC", r.Verdict)
	}
	exact := func(name string, d DefaultReport, f float64) {
		t.Helper()
		if d.TruncatedFraction == nil || *d.TruncatedFraction != f || d.TruncatedAtLeast != f || d.TruncatedAtMost != f {
			t.Errorf("%s: truncated %v in [%v, %v], want exactly %v", name, d.TruncatedFraction, d.TruncatedAtLeast, d.TruncatedAtMost, f)
		}
	}
	exact("64KiB", r.Defaults[0], 0.01)
	exact("10KiB", r.Defaults[1], 0.02)
	exact("libbpf", r.Defaults[3], 0)
	exact("tiny", r.Defaults[4], 1)

	// 64 KiB holds 98 needs in (2, 4] KiB and one in (32, 64] KiB.
	d := r.Defaults[0]
	if lo, hi := float64(98*(65536-4096)+0)/99, float64(98*(65536-2048)+(65536-32768))/99; d.AvgWasteAtLeast != lo || d.AvgWasteAtMost != hi || d.AvgWasteBytes != nil {
		t.Errorf("64KiB: waste [%v, %v] %v, want [%v, %v] and no figure from the sum (it truncates one)", d.AvgWasteAtLeast, d.AvgWasteAtMost, d.AvgWasteBytes, lo, hi)
	}
	// bpftrace: the need in (512 KiB, 1 MiB] may or may not fit.
	d = r.Defaults[2]
	if d.TruncatedFraction != nil || d.TruncatedAtLeast != 0 || d.TruncatedAtMost != 0.01 {
		t.Errorf("bpftrace: truncated %v in [%v, %v], want between 0 and 0.01", d.TruncatedFraction, d.TruncatedAtLeast, d.TruncatedAtMost)
	}
	const D = 1_000_000.0
	wMin := 98*(D-4096) + (D - 65536)
	wMax := 98*(D-2048) + (D - 32768)
	if lo, hi := wMin/100, max(wMax/99, (wMax+D-512*1024)/100); d.AvgWasteAtLeast != lo || d.AvgWasteAtMost != hi {
		t.Errorf("bpftrace: waste [%v, %v], want [%v, %v]", d.AvgWasteAtLeast, d.AvgWasteAtMost, lo, hi)
	}
	// libbpf holds every need: its mean waste is exact from the sum.
	d = r.Defaults[3]
	if want := float64(1<<24-1) - 9340; d.AvgWasteBytes == nil || *d.AvgWasteBytes != want || want < d.AvgWasteAtLeast || want > d.AvgWasteAtMost {
		t.Errorf("libbpf: waste %v, want %v within [%v, %v]", d.AvgWasteBytes, want, d.AvgWasteAtLeast, d.AvgWasteAtMost)
	}
	if d := r.Defaults[4]; d.AvgWasteAtLeast != 0 || d.AvgWasteAtMost != 0 || d.AvgWasteBytes != nil {
		t.Errorf("tiny held nothing, yet waste [%v, %v] %v", d.AvgWasteAtLeast, d.AvgWasteAtMost, d.AvgWasteBytes)
	}
}

// TestStraddledOnly: a default inside the only bucket with needs may
// hold all of them or none.
func TestStraddledOnly(t *testing.T) {
	var c Classes
	c[ClassOf(16<<10)] = 4
	d := NewLoaderReport(Counts{Loads: 4, Needs: c}, []sizing.Default{{Name: "aya", Bytes: 10 << 10}}).Defaults[0]
	if d.TruncatedFraction != nil || d.TruncatedAtLeast != 0 || d.TruncatedAtMost != 1 {
		t.Errorf("truncated %v in [%v, %v], want between 0 and 1", d.TruncatedFraction, d.TruncatedAtLeast, d.TruncatedAtMost)
	}
	if want := float64(10<<10 - 8<<10); d.AvgWasteAtLeast != 0 || d.AvgWasteAtMost != want {
		t.Errorf("waste [%v, %v], want [0, %v]", d.AvgWasteAtLeast, d.AvgWasteAtMost, want)
	}
}

func TestVerdict(t *testing.T) {
	for _, c := range []struct {
		rec, typical, truncated uint64
		want                    sizing.Verdict
	}{
		{128 << 10, 16 << 20, 0, sizing.Oversized(128)},
		{128 << 10, 512 << 10, 0, sizing.Oversized(4)},
		{128 << 10, 256 << 10, 0, sizing.VerdictRight},
		{128 << 10, 128 << 10, 0, sizing.VerdictRight},
		{128 << 10, 64 << 10, 0, sizing.VerdictUndersized},
		{128 << 10, 16 << 20, 1, sizing.VerdictUndersized},
		{0, 16 << 20, 0, sizing.VerdictUnknown},
		{128 << 10, 0, 0, sizing.VerdictUnknown},
		{0, 0, 2, sizing.VerdictUndersized},
	} {
		if got := sizing.VerdictOf(c.rec, c.typical, c.truncated); got != c.want {
			t.Errorf("Verdict(%d, %d, %d) = %q, want %q", c.rec, c.typical, c.truncated, got, c.want)
		}
	}
}

// TestJSONKeys: a key the fleet report shares with sizing.LoaderReport
// keeps its meaning; the figures the histograms give only as bounds have
// keys of their own, and none of sizing's exact ones is faked.
func TestJSONKeys(t *testing.T) {
	keys := func(v any) map[string]bool {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for k := range m {
			out[k] = true
		}
		return out
	}
	local := keys(sizing.LoaderReport{})
	r := NewLoaderReport(Counts{Loads: 1, Needs: needs()}, sizing.WellKnownDefaults)
	fleet := keys(r)
	for _, k := range []string{"command", "loader", "loads", "needs_known", "truncated", "need_p50_bytes_at_most", "need_p99_bytes_at_most", "recommended_bytes", "verdict", "unknown_needs", "defaults"} {
		if !local[k] || !fleet[k] {
			t.Errorf("key %q: in sizing's report %v, in the fleet's %v", k, local[k], fleet[k])
		}
	}
	for _, k := range []string{"need_max_bytes", "typical_buffer_bytes", "first_buffer_bytes", "open_chains"} {
		if fleet[k] {
			t.Errorf("the fleet report has %q, an exact figure it does not know", k)
		}
	}
	for _, k := range []string{"need_max_bytes_above", "need_max_bytes_at_most", "typical_buffer_bytes_above", "typical_buffer_bytes_at_most"} {
		if !fleet[k] {
			t.Errorf("the fleet report lacks %q", k)
		}
	}
	b, _ := json.Marshal(r.Defaults)
	if s := string(b); !strings.Contains(s, `"truncated_fraction_at_most"`) || !strings.Contains(s, `"name":"bpftrace"`) {
		t.Errorf("defaults JSON %s", s)
	}
}
