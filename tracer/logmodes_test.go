package tracer_test

// Log modes: a load without a log, a rotating or a fixed log too small for
// what the verifier wrote (ENOSPC), a size query without a buffer, and a
// program the verifier rejects, each recorded as the kernel answered it.

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

func TestLogOffLoadIsRecordedWithUnknownTrueSize(t *testing.T) {
	h := sharedHarness(t)
	p := loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_off"}
	if hasLogTrueSize(t) {
		// Before 6.4 offset 140 is past the PROG_LOAD attr: non-zero is EINVAL.
		p.TrueSizePreset = 777
	}
	r := loadProg(t, p)
	if !r.OK() {
		t.Fatalf("load: %v", r.Errno)
	}
	ev := checkProgRecord(t, h, p, r)
	if ev.LogMode() != tracer.LogOff || ev.Truncated() {
		t.Errorf("log mode %v truncated %v, want off, false", ev.LogMode(), ev.Truncated())
	}
	wantTrueSizeUnknown(t, ev)
}

func TestRotatingBufferTooSmallIsTruncatedWithTrueSize(t *testing.T) {
	h := sharedHarness(t)
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_small", LogLevel: loadgen.LogLevel2, LogSize: 256}
	r := loadProg(t, p)
	if r.Errno != unix.ENOSPC {
		t.Fatalf("kernel answered %v, want ENOSPC", r.Errno)
	}
	ev := checkProgRecord(t, h, p, r)
	if ev.LogMode() != tracer.LogRotating || !ev.Truncated() {
		t.Errorf("log mode %v truncated %v, want rotating, true", ev.LogMode(), ev.Truncated())
	}
	wantTrueSize(t, ev, r)
	if ev.LogTrueSizeKnown && ev.LogTrueSize <= p.LogSize {
		t.Errorf("true size %d not above the %d-byte buffer", ev.LogTrueSize, p.LogSize)
	}
}

func TestFixedLogModeIsRecorded(t *testing.T) {
	h := sharedHarness(t)
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_fixed", LogLevel: loadgen.LogLevel2 | loadgen.LogLevelFixed, LogSize: 256}
	r := loadProg(t, p)
	ev := checkProgRecord(t, h, p, r)
	if ev.LogMode() != tracer.LogFixed {
		t.Errorf("log mode %v, want fixed", ev.LogMode())
	}
	if !hasLogTrueSize(t) {
		// BPF_LOG_FIXED came with the rotating log in 6.4; before, the
		// level is out of range.
		if r.Errno != unix.EINVAL {
			t.Fatalf("pre-6.4 kernel answered %v to BPF_LOG_FIXED, want EINVAL", r.Errno)
		}
		wantTrueSizeUnknown(t, ev)
		return
	}
	if r.Errno != unix.ENOSPC || !ev.Truncated() {
		t.Fatalf("kernel %v, record truncated %v: want ENOSPC, true", r.Errno, ev.Truncated())
	}
	wantTrueSize(t, ev, r)
}

func TestSizeQueryIsRecordedAsQuery(t *testing.T) {
	h := sharedHarness(t)
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 16, Name: "vlog_query", LogLevel: loadgen.LogLevel1, NoLogBuf: true}
	r := loadProg(t, p)
	ev := checkProgRecord(t, h, p, r)
	if ev.LogMode() != tracer.LogQuery || ev.Truncated() {
		t.Errorf("log mode %v truncated %v, want query, false", ev.LogMode(), ev.Truncated())
	}
	if !hasLogTrueSize(t) {
		if r.Errno != unix.EINVAL {
			t.Fatalf("pre-6.4 kernel answered %v to a size query, want EINVAL", r.Errno)
		}
		wantTrueSizeUnknown(t, ev)
		return
	}
	if !r.OK() || r.LogTrueSize == 0 {
		t.Fatalf("size query: %v, true size %d", r.Errno, r.LogTrueSize)
	}
	wantTrueSize(t, ev, r)
}

func TestRejectedProgramKeepsEACCESWithBufferAndWithoutLog(t *testing.T) {
	h := sharedHarness(t)
	for _, p := range []loadgen.ProgLoad{
		{Program: loadgen.Rejected, Insns: 64, Name: "vlog_rej_nolog"},
		{Program: loadgen.Rejected, Insns: 64, Name: "vlog_rej_big", LogLevel: loadgen.LogLevel2, LogSize: 1 << 20},
	} {
		r := loadProg(t, p)
		if r.Errno != unix.EACCES {
			t.Fatalf("%s: kernel answered %v, want EACCES", p.Name, r.Errno)
		}
		ev := checkProgRecord(t, h, p, r)
		if ev.ErrnoName() != "EACCES" || ev.Truncated() {
			t.Errorf("%s: errno %q truncated %v", p.Name, ev.ErrnoName(), ev.Truncated())
		}
		if p.LogLevel == 0 {
			wantTrueSizeUnknown(t, ev)
		} else {
			wantTrueSize(t, ev, r)
		}
	}
}

func TestRejectedProgramWithSmallBufferIsENOSPC(t *testing.T) {
	h := sharedHarness(t)
	p := loadgen.ProgLoad{Program: loadgen.Rejected, Insns: 64, Name: "vlog_rej_small", LogLevel: loadgen.LogLevel2, LogSize: 256}
	r := loadProg(t, p)
	if r.Errno != unix.ENOSPC {
		t.Fatalf("kernel answered %v, want ENOSPC (hiding the verifier's EACCES)", r.Errno)
	}
	ev := checkProgRecord(t, h, p, r)
	if !ev.Truncated() || ev.ErrnoName() != "ENOSPC" {
		t.Errorf("truncated %v errno %q, want true, ENOSPC", ev.Truncated(), ev.ErrnoName())
	}
	wantTrueSize(t, ev, r)
}
