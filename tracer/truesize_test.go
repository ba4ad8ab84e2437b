package tracer_test

// log_true_size and the need: where the kernel writes log_true_size back
// (6.4+) the record carries it, and never a value the kernel did not write;
// a log that fit is measured to exactly its length + NUL.

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

func TestTrueSizeSupportMatchesKernelVersion(t *testing.T) {
	h := sharedHarness(t)
	if got, want := h.tr.LogTrueSizeSupported(), hasLogTrueSize(t); got != want {
		t.Fatalf("LogTrueSizeSupported %v on %s, want %v", got, h.tr.KernelRelease(), want)
	}
}

func TestExactFitBufferLoadsAndTrueSizeEqualsBuffer(t *testing.T) {
	h := sharedHarness(t)
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 40, Name: "vlog_exact", LogLevel: loadgen.LogLevel2}
	p.LogSize = fullLogSize(t, p)
	if !hasLogTrueSize(t) {
		// Before 6.4 a log that fills the buffer to its last byte counts as
		// full: exactly len+1 is ENOSPC, and one byte more is needed.
		r := loadProg(t, p)
		if r.Errno != unix.ENOSPC {
			t.Fatalf("pre-6.4 kernel answered %v to a buffer of exactly log+NUL, want ENOSPC", r.Errno)
		}
		if ev := checkProgRecord(t, h, p, r); !ev.Truncated() {
			t.Errorf("ENOSPC not recorded as truncated")
		}
		p.LogSize++
	}
	r := loadProg(t, p)
	if !r.OK() {
		t.Fatalf("exact-size load: %v", r.Errno)
	}
	ev := checkProgRecord(t, h, p, r)
	if ev.Truncated() {
		t.Errorf("exact fit reported truncated")
	}
	wantTrueSize(t, ev, r)
	if hasLogTrueSize(t) && ev.LogTrueSize != ev.LogSize {
		t.Errorf("true size %d, buffer %d: want equal", ev.LogTrueSize, ev.LogSize)
	}
	// The scan finds the NUL on the buffer's last byte (6.4+) too.
	if want := uint32(len(r.Log)) + 1; ev.LogUsedSize != want || ev.LogUsedAtLeast {
		t.Errorf("measured %d (at least %v) in a %d-byte buffer, the log is %d bytes + NUL", ev.LogUsedSize, ev.LogUsedAtLeast, ev.LogSize, len(r.Log))
	}
}

func TestOneByteShortBufferIsTruncated(t *testing.T) {
	h := sharedHarness(t)
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 40, Name: "vlog_short1", LogLevel: loadgen.LogLevel2}
	need := fullLogSize(t, p)
	p.LogSize = need - 1
	r := loadProg(t, p)
	if r.Errno != unix.ENOSPC {
		t.Fatalf("kernel answered %v for a buffer one byte short, want ENOSPC", r.Errno)
	}
	ev := checkProgRecord(t, h, p, r)
	if !ev.Truncated() {
		t.Errorf("not truncated")
	}
	wantTrueSize(t, ev, r)
	if ev.LogTrueSizeKnown && ev.LogTrueSize != need {
		t.Errorf("true size %d, want %d", ev.LogTrueSize, need)
	}
}

func TestPresetTrueSizeIsNotTakenForTheKernels(t *testing.T) {
	h := sharedHarness(t)
	// An invalid program type fails before the verifier: the kernel never
	// writes log_true_size, and the preset must not be reported.
	p := loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_preset", LogLevel: loadgen.LogLevel1, LogSize: 4096, TrueSizePreset: 4242, ProgType: 0x7fff}
	r := loadProg(t, p)
	// A kernel whose union bpf_attr ends before offset 140 (5.10) refuses
	// the non-zero tail before it looks at the attr: E2BIG.
	want := unix.EINVAL
	if !kerneltest.KernelAtLeast(t, 6, 1) {
		want = unix.E2BIG
	}
	if r.Errno != want || r.LogTrueSize != 4242 {
		t.Fatalf("kernel answered %v, true size %d: want %v and the preset untouched", r.Errno, r.LogTrueSize, want)
	}
	if want == unix.E2BIG && h.tr.Mode() != tracer.AttachTracepoint {
		// Refused in the syscall itself: bpf_prog_load never ran.
		h.sync(t)
		if recs := h.recordsOf(r); len(recs) != 0 {
			t.Fatalf("%s mode recorded a load that never reached bpf_prog_load: %+v", h.tr.Mode(), recs)
		}
		return
	}
	ev := checkProgRecord(t, h, p, r)
	wantTrueSizeUnknown(t, ev)
	// Nor is the untouched (zeroed) buffer measured as a one-byte log.
	if need, src := ev.Need(); ev.LogUsedSize != 0 || src != "" {
		t.Errorf("early EINVAL measured: log_used %d, need %d from %q", ev.LogUsedSize, need, src)
	}
}

// TestMeasuredLogLengthIsTheExactNeed: for a log that fit, the tracer's
// measured length + 1 equals the kernel's log_true_size where the kernel
// writes it, and the log the caller got + 1 everywhere.
func TestMeasuredLogLengthIsTheExactNeed(t *testing.T) {
	h := sharedHarness(t)
	for _, c := range []struct {
		name string
		p    loadgen.ProgLoad
	}{
		{"rotating", loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 200, LogLevel: loadgen.LogLevel2, LogSize: 1 << 20}},
		{"multi-chunk", loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 2000, LogLevel: loadgen.LogLevel2, LogSize: 1 << 20}},
		{"level1", loadgen.ProgLoad{Program: loadgen.Valid, LogLevel: loadgen.LogLevel1, LogSize: 4096}},
		{"rejected", loadgen.ProgLoad{Program: loadgen.Rejected, Insns: 10, LogLevel: loadgen.LogLevel2, LogSize: 65536}},
		{"libbpf attr 128", loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 100, LogLevel: loadgen.LogLevel1, LogSize: 16<<20 - 1, AttrSize: 128}},
	} {
		c.p.Name = "vlog_meas"
		r := loadProg(t, c.p)
		if r.Errno == unix.ENOSPC {
			t.Fatalf("%s: ENOSPC", c.name)
		}
		ev := h.await(t, r)
		want := uint32(len(r.Log)) + 1
		if ev.LogUsedSize != want || ev.LogUsedAtLeast {
			t.Errorf("%s: measured %d (at least %v), the caller's log is %d bytes + NUL", c.name, ev.LogUsedSize, ev.LogUsedAtLeast, len(r.Log))
		}
		if ev.LogTrueSizeKnown && ev.LogTrueSize != ev.LogUsedSize {
			t.Errorf("%s: measured %d, kernel log_true_size %d", c.name, ev.LogUsedSize, ev.LogTrueSize)
		}
		need, source := ev.Need()
		wantSource := tracer.NeedMeasured
		if ev.LogTrueSizeKnown {
			wantSource = tracer.NeedKernel
		}
		if need != want || source != wantSource {
			t.Errorf("%s: need %d from %q, want %d from %q", c.name, need, source, want, wantSource)
		}
	}
	// A truncated log is not measured: ENOSPC proves only need > buffer.
	r := loadProg(t, loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_meas", LogLevel: loadgen.LogLevel2, LogSize: 256})
	if ev := h.await(t, r); ev.LogUsedSize != 0 {
		t.Errorf("ENOSPC load measured at %d", ev.LogUsedSize)
	}
}
