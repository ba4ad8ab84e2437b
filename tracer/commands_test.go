package tracer_test

// Commands other than BPF_PROG_LOAD: BPF_BTF_LOAD is recorded with its log
// as a program load is, any other bpf(2) command not at all.

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

func TestBTFLoadWithSmallBufferIsTruncated(t *testing.T) {
	h := sharedHarness(t)
	b := loadgen.BTFLoad{Types: 16, LogLevel: loadgen.LogLevel1, LogSize: 128}
	r := loadBTF(t, b)
	if r.Errno != unix.ENOSPC {
		t.Fatalf("kernel answered %v, want ENOSPC", r.Errno)
	}
	ev := h.await(t, r)
	if ev.Command != tracer.CmdBTFLoad || ev.Ret != int64(r.Ret) || ev.AttrSize != loadgen.BTFLoadAttrSize {
		t.Errorf("command %v ret %d attr size %d", ev.Command, ev.Ret, ev.AttrSize)
	}
	if ev.LogLevel != b.LogLevel || ev.LogSize != b.LogSize || !ev.HasLogBuf || !ev.Truncated() {
		t.Errorf("log level %d size %d buf %v truncated %v", ev.LogLevel, ev.LogSize, ev.HasLogBuf, ev.Truncated())
	}
	wantTrueSize(t, ev, r)
	if ev.LogTrueSizeKnown && ev.LogTrueSize <= b.LogSize {
		t.Errorf("true size %d not above the buffer", ev.LogTrueSize)
	}

	ok := loadBTF(t, loadgen.BTFLoad{Types: 16, LogLevel: loadgen.LogLevel1, LogSize: 1 << 16})
	if !ok.OK() {
		t.Fatalf("BTF load with 64 KiB log: %v", ok.Errno)
	}
	ev = h.await(t, ok)
	if !ev.OK() || ev.Truncated() {
		t.Errorf("successful BTF load recorded as ret %d truncated %v", ev.Ret, ev.Truncated())
	}
	wantTrueSize(t, ev, ok)
}

func TestOtherBPFCommandsAreNotRecorded(t *testing.T) {
	h := sharedHarness(t)
	r := loadgen.MapCreate()
	if r.Errno != 0 {
		t.Fatalf("map create: %v", r.Errno)
	}
	h.sync(t)
	if recs := h.recordsOf(r); len(recs) != 0 {
		t.Fatalf("BPF_MAP_CREATE produced records: %+v", recs)
	}
}
