package tracer_test

// The attr as the caller passed it: sizes from 0 to past a page, pointers
// the kernel cannot read, and a prog_name that is not a valid name; the
// record holds what the kernel saw of it.

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

func TestAttrSize128LeavesTrueSizeUnknown(t *testing.T) {
	h := sharedHarness(t)
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_attr128", LogLevel: loadgen.LogLevel2, LogSize: 256, AttrSize: 128}
	r := loadProg(t, p)
	if r.Errno != unix.ENOSPC {
		t.Fatalf("kernel answered %v, want ENOSPC", r.Errno)
	}
	ev := checkProgRecord(t, h, p, r)
	if !ev.Truncated() {
		t.Errorf("not truncated")
	}
	wantTrueSizeUnknown(t, ev)
}

func TestBadAttrPointerIsRecordedInTracepointMode(t *testing.T) {
	h := sharedHarness(t)
	addr, err := loadgen.UnmappedAddress()
	if err != nil {
		t.Fatal(err)
	}
	for _, ptr := range []uintptr{addr, 0} {
		p := loadgen.ProgLoad{AttrPtr: ptr, NullAttr: ptr == 0}
		r := loadProg(t, p)
		if r.Errno != unix.EFAULT {
			t.Fatalf("attr at %#x: kernel answered %v, want EFAULT", ptr, r.Errno)
		}
		if h.tr.Mode() != tracer.AttachTracepoint {
			// fentry and kprobe hook bpf_prog_load, which the kernel
			// never reaches when it cannot copy the attr.
			h.sync(t)
			if recs := h.recordsOf(r); len(recs) != 0 {
				t.Fatalf("%s mode recorded a load that never reached bpf_prog_load: %+v", h.tr.Mode(), recs)
			}
			continue
		}
		ev := checkProgRecord(t, h, p, r)
		if !ev.AttrUnreadable || ev.ErrnoName() != "EFAULT" {
			t.Errorf("attr at %#x: unreadable %v errno %q, want true, EFAULT", ptr, ev.AttrUnreadable, ev.ErrnoName())
		}
		wantTrueSizeUnknown(t, ev)
	}
}

// TestHostileAttrSizesAreRecordedAsTheKernelSawThem: the tracer reads at
// most min(attr size, 144) bytes and decodes a cut field as the kernel does.
func TestHostileAttrSizesAreRecordedAsTheKernelSawThem(t *testing.T) {
	h := sharedHarness(t)
	for _, size := range []uint32{0, 1, 30, 143, 144, 4096, 8192} {
		p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_hostile", LogLevel: loadgen.LogLevel2, LogSize: 256, AttrSize: size, ZeroAttrSize: size == 0}
		r := loadProg(t, p)
		if size > 4096 && h.tr.Mode() != tracer.AttachTracepoint {
			// Larger than a page is E2BIG in the syscall itself, before
			// bpf_prog_load: only the syscall tracepoints see it.
			if r.Errno != unix.E2BIG {
				t.Errorf("size %d: kernel %v, want E2BIG", size, r.Errno)
			}
			h.sync(t)
			if recs := h.recordsOf(r); len(recs) != 0 {
				t.Errorf("%s mode recorded a load that never reached bpf_prog_load", h.tr.Mode())
			}
			continue
		}
		ev := h.await(t, r)
		if ev.AttrSize != size || ev.Ret != int64(r.Ret) || ev.AttrUnreadable {
			t.Errorf("size %d: recorded size %d ret %d (kernel %d) unreadable %v", size, ev.AttrSize, ev.Ret, r.Ret, ev.AttrUnreadable)
		}
		switch {
		case size < 8:
			// insn_cnt and the pointers are cut to 0: E2BIG (6.4+) or
			// EFAULT (6.1, which copies the license first).
			// Size 0 copies nothing: prog_type is 0 too.
			wantType := uint32(min(size, 1))
			if (r.Errno != unix.E2BIG && r.Errno != unix.EFAULT) || ev.InsnCnt != 0 || ev.LogLevel != 0 || ev.ProgType != wantType {
				t.Errorf("size %d: kernel %v; recorded type %d insn_cnt %d level %d", size, r.Errno, ev.ProgType, ev.InsnCnt, ev.LogLevel)
			}
		case size > 4096:
			// Larger than a page: E2BIG before anything else.
			if r.Errno != unix.E2BIG {
				t.Errorf("size %d: kernel %v, want E2BIG", size, r.Errno)
			}
			wantTrueSizeUnknown(t, ev)
		case size == 30:
			// log_size's low half only: 256 fits in it.
			if ev.LogLevel != p.LogLevel || ev.LogSize != 256 || ev.HasLogBuf {
				t.Errorf("size 30: level %d size %d buf %v", ev.LogLevel, ev.LogSize, ev.HasLogBuf)
			}
		case size >= 144:
			if r.Errno != unix.ENOSPC || !ev.Truncated() || ev.ProgName.String() != p.Name {
				t.Errorf("size %d: kernel %v, truncated %v, name %q", size, r.Errno, ev.Truncated(), ev.ProgName)
			}
			wantTrueSize(t, ev, r)
		default: // 143: log_true_size is cut, so the kernel does not write it
			if r.Errno != unix.ENOSPC {
				t.Errorf("size 143: kernel %v", r.Errno)
			}
			wantTrueSizeUnknown(t, ev)
		}
	}
}

func TestAttrUnmappedMidStructIsRecordedUnreadable(t *testing.T) {
	h := sharedHarness(t)
	addr, unmap, err := loadgen.StraddlingAttr(100)
	if err != nil {
		t.Fatal(err)
	}
	defer unmap()
	p := loadgen.ProgLoad{AttrPtr: addr}
	r := loadProg(t, p)
	if r.Errno != unix.EFAULT {
		t.Fatalf("attr straddling an unmapped page: kernel %v, want EFAULT", r.Errno)
	}
	if h.tr.Mode() != tracer.AttachTracepoint {
		h.sync(t)
		if recs := h.recordsOf(r); len(recs) != 0 {
			t.Fatalf("%s mode recorded a load that never reached bpf_prog_load", h.tr.Mode())
		}
		return
	}
	ev := checkProgRecord(t, h, p, r)
	if !ev.AttrUnreadable || ev.LogTrueSizeKnown || ev.LogUsedSize != 0 {
		t.Errorf("unreadable %v known %v used %d", ev.AttrUnreadable, ev.LogTrueSizeKnown, ev.LogUsedSize)
	}
}

func TestInvalidProgNameIsRejectedAndSanitised(t *testing.T) {
	h := sharedHarness(t)
	var raw [16]byte
	copy(raw[:], "bad\xff\x1bname\x7fxxxxxx") // no NUL, invalid UTF-8, control bytes
	p := loadgen.ProgLoad{Program: loadgen.Valid, RawName: &raw}
	r := loadProg(t, p)
	if r.Errno != unix.EINVAL {
		t.Fatalf("kernel answered %v to an invalid prog_name, want EINVAL", r.Errno)
	}
	ev := h.await(t, r)
	if got := ev.ProgName.String(); got != "bad\uFFFD\uFFFDname\uFFFDxxxxxx" {
		t.Errorf("prog_name recorded as %q", got)
	}
	if ev.ErrnoName() != "EINVAL" {
		t.Errorf("errno %q", ev.ErrnoName())
	}
}
