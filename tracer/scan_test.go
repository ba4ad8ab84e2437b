package tracer_test

// The log scan: the exit hook measures the log the kernel left in the
// caller's buffer, up to tracer.MaxLogScanBytes, in both program variants.

import (
	"fmt"
	"os"
	"testing"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

// wantMeasured checks that ev measured exactly the log of r: its length +
// NUL, as the need where the kernel did not write log_true_size.
func wantMeasured(t *testing.T, what string, ev tracer.LoadEvent, r loadgen.Result) {
	t.Helper()
	want := uint32(len(r.Log)) + 1
	if ev.LogUsedSize != want || ev.LogUsedAtLeast {
		t.Errorf("%s: measured %d (at least %v), the caller's log is %d bytes + NUL", what, ev.LogUsedSize, ev.LogUsedAtLeast, len(r.Log))
	}
	if need, _ := ev.Need(); need != want {
		t.Errorf("%s: need %d, want %d", what, need, want)
	}
}

// TestLargeLogsAreMeasuredWholeUpToTheCap: logs of one scan chunk, of many,
// and the 8.77 MB level-2 log of a 100,000-instruction program in libbpf
// 1.1's 16 MiB - 1 buffer with a 128-byte attr (no log_true_size on any
// kernel) are measured exactly; a log 15% longer than the scan's cap, in
// a 32 MiB buffer, is reported as at least the cap + 1.
func TestLargeLogsAreMeasuredWholeUpToTheCap(t *testing.T) {
	h := sharedHarness(t)
	var bytesPerInsn float64
	for _, c := range []struct {
		insns int
		size  uint32
	}{
		{40, 1 << 20},
		{2000, 1 << 20},
		{100000, 16<<20 - 1},
	} {
		p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: c.insns, Name: "vlog_big", LogLevel: loadgen.LogLevel2, LogSize: c.size, AttrSize: 128}
		r := loadProg(t, p)
		if !r.OK() {
			t.Fatalf("%d insns, %d-byte buffer: %v", c.insns, c.size, r.Errno)
		}
		ev := h.await(t, r)
		wantMeasured(t, fmt.Sprintf("%d insns", c.insns), ev, r)
		if _, src := ev.Need(); src != "measured" {
			t.Errorf("%d insns: need from %q, want measured (attr 128 has no log_true_size)", c.insns, src)
		}
		bytesPerInsn = float64(len(r.Log)) / float64(c.insns)
	}

	// Each kernel writes its own amount per instruction: aim 15% past
	// the cap.
	insns := int(1.15*tracer.MaxLogScanBytes/bytesPerInsn) + 1
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: insns, Name: "vlog_huge", LogLevel: loadgen.LogLevel2, LogSize: 32 << 20, AttrSize: 128}
	r := loadProg(t, p)
	if !r.OK() || len(r.Log) <= tracer.MaxLogScanBytes {
		t.Fatalf("%d insns in a 32 MiB buffer: %v, log %d bytes: want a log past the %d-byte cap", insns, r.Errno, len(r.Log), tracer.MaxLogScanBytes)
	}
	ev := h.await(t, r)
	if ev.LogUsedSize != tracer.MaxLogScanBytes+1 || !ev.LogUsedAtLeast {
		t.Errorf("a %d-byte log: measured %d (at least %v), want at least %d", len(r.Log), ev.LogUsedSize, ev.LogUsedAtLeast, tracer.MaxLogScanBytes+1)
	}
	if need, src := ev.Need(); need != 0 || src != "" {
		t.Errorf("need %d from %q past the cap, want unknown", need, src)
	}
}

// TestScanCapBoundaries: with the scan capped at exactly a log's length +
// NUL, the log is measured exactly (its NUL is the last byte read); a
// longer log is at least the cap + 1; and the cap also ends a scan in the
// middle of its first chunk.
func TestScanCapBoundaries(t *testing.T) {
	kerneltest.Require(t)
	short := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 40, Name: "vlog_cap", LogLevel: loadgen.LogLevel2}
	need := fullLogSize(t, short)
	opts := testOptions(t)
	opts.LogScanMax = int(need)
	h, err := startHarness(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer h.stop()

	short.LogSize = need + 100
	r := loadProg(t, short)
	if !r.OK() || uint32(len(r.Log))+1 != need {
		t.Fatalf("load: %v, log %d bytes, want %d", r.Errno, len(r.Log), need-1)
	}
	wantMeasured(t, "NUL on the cap's last byte", h.await(t, r), r)

	long := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 80, Name: "vlog_cap", LogLevel: loadgen.LogLevel2, LogSize: 1 << 20}
	r = loadProg(t, long)
	if !r.OK() || uint32(len(r.Log)) < need {
		t.Fatalf("load: %v, log %d bytes, want more than %d", r.Errno, len(r.Log), need)
	}
	if ev := h.await(t, r); ev.LogUsedSize != need+1 || !ev.LogUsedAtLeast {
		t.Errorf("a %d-byte log past a %d-byte cap: measured %d (at least %v), want at least %d", len(r.Log), need, ev.LogUsedSize, ev.LogUsedAtLeast, need+1)
	}
}

// TestUnreadableLogIsAScanFaultAndCounted: a load whose log fit, but whose
// buffer's first page is gone again when the load returns, cannot be
// measured. The record says so (LogScanFault, nothing measured) and the
// tracer counts it once; the need is the kernel's where it wrote
// log_true_size, else unknown.
func TestUnreadableLogIsAScanFaultAndCounted(t *testing.T) {
	h := sharedHarness(t)
	before := h.tr.LogScanFaults()
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 400, Name: "vlog_dropped", LogLevel: loadgen.LogLevel2, LogSize: 1 << 20}
	r, dropped, err := loadgen.LoadDroppingLogHead(p)
	if err != nil {
		kerneltest.Unavailable(t, "userfaultfd-held log buffer: "+err.Error())
	}
	if !r.OK() || !dropped {
		t.Fatalf("load %v, first page dropped %v: want a successful load whose log passed its first page", r.Errno, dropped)
	}
	ev := h.await(t, r)
	if !ev.LogScanFault || ev.LogUsedSize != 0 {
		t.Errorf("scan fault %v, measured %d: the log's first page was absent at exit", ev.LogScanFault, ev.LogUsedSize)
	}
	need, src := ev.Need()
	switch {
	case ev.LogTrueSizeKnown && (src != tracer.NeedKernel || need != r.LogTrueSize || need <= uint32(os.Getpagesize())):
		t.Errorf("need %d from %q, want the kernel's %d (over a page)", need, src, r.LogTrueSize)
	case !ev.LogTrueSizeKnown && src != tracer.NeedUnknown:
		t.Errorf("need %d from %q without log_true_size: a faulted scan measures nothing", need, src)
	}
	if got := h.tr.LogScanFaults() - before; got != 1 {
		t.Errorf("LogScanFaults rose by %d, want 1", got)
	}
}
