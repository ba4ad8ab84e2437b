package loadgen

import (
	"syscall"
	"testing"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

func TestSizeQueryReportsTrueSizeWithoutENOSPC(t *testing.T) {
	kerneltest.Require(t)
	q, err := LoadProgram(ProgLoad{Program: LongLog, Insns: 32, LogLevel: LogLevel2, NoLogBuf: true})
	if err != nil {
		t.Fatal(err)
	}
	if !q.OK() {
		// Before 6.4 a size query is EINVAL: that is the expectation there.
		if q.Errno != syscall.EINVAL {
			t.Fatalf("size query: %v, want success (6.4+) or EINVAL (older)", q.Errno)
		}
		return
	}
	if q.LogTrueSize == 0 {
		t.Fatalf("size query returned no log_true_size: %+v", q)
	}
	full, err := LoadProgram(ProgLoad{Program: LongLog, Insns: 32, LogLevel: LogLevel2, LogSize: q.LogTrueSize})
	if err != nil {
		t.Fatal(err)
	}
	if !full.OK() || uint32(len(full.Log))+1 != q.LogTrueSize {
		t.Fatalf("exact-size load: ret %d, log %d bytes + NUL, want %d", full.Ret, len(full.Log), q.LogTrueSize)
	}
	short, err := LoadProgram(ProgLoad{Program: LongLog, Insns: 32, LogLevel: LogLevel2, LogSize: q.LogTrueSize - 1})
	if err != nil {
		t.Fatal(err)
	}
	if short.Errno != syscall.ENOSPC || short.LogTrueSize != q.LogTrueSize {
		t.Fatalf("one byte short: errno %v true size %d, want ENOSPC and %d", short.Errno, short.LogTrueSize, q.LogTrueSize)
	}
}

func TestRejectedProgramIsEACCES(t *testing.T) {
	kerneltest.Require(t)
	r, err := LoadProgram(ProgLoad{Program: Rejected, LogLevel: LogLevel1, LogSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if r.Errno != syscall.EACCES || len(r.Log) == 0 {
		t.Fatalf("rejected program: errno %v, log %q", r.Errno, r.Log)
	}
}

func TestBTFLoadWithSmallBufferIsENOSPC(t *testing.T) {
	kerneltest.Require(t)
	ok, err := LoadBTF(BTFLoad{Types: 4, LogLevel: LogLevel1, LogSize: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	if !ok.OK() {
		t.Fatalf("BTF load: %v", ok.Errno)
	}
	small, err := LoadBTF(BTFLoad{Types: 4, LogLevel: LogLevel1, LogSize: 128})
	if err != nil {
		t.Fatal(err)
	}
	if small.Errno != syscall.ENOSPC {
		t.Fatalf("BTF load with 128-byte log: errno %v, want ENOSPC (log true size %d)", small.Errno, small.LogTrueSize)
	}
}

func TestInstructionsCounts(t *testing.T) {
	b, err := Instructions(LongLog, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 10*8 {
		t.Fatalf("LongLog(10) is %d bytes, want 80", len(b))
	}
	if _, err := ParseProgram("nope"); err == nil {
		t.Fatal("ParseProgram accepted an unknown name")
	}
}

func TestImitatedLoadersRetryAsTheyShip(t *testing.T) {
	kerneltest.Require(t)
	// ~120 KB of level-2 log: over 64 KiB and 100 KiB, under 1 MiB.
	p := ProgLoad{Program: LongLog, Insns: 1500, Name: "vlog_imit", LogLevel: LogLevel2}
	cil, err := Imitate(CiliumEBPF, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(cil) != 2 || cil[0].Errno != syscall.ENOSPC || !cil[1].OK() {
		t.Fatalf("cilium/ebpf: %d attempts, first %v", len(cil), cil[0].Errno)
	}
	aya, err := Imitate(Aya, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(aya) != 3 || aya[0].Errno != syscall.ENOSPC || aya[1].Errno != syscall.ENOSPC || !aya[2].OK() {
		t.Fatalf("aya: %d attempts (10 KiB, 100 KiB, 1000 KiB expected)", len(aya))
	}
	lib, err := Imitate(Libbpf, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(lib) != 1 || !lib[0].OK() || lib[0].AttrSize != 128 {
		t.Fatalf("libbpf: %d attempts", len(lib))
	}
}

func TestHoldLoadWaitsInTheKernelUntilReleased(t *testing.T) {
	kerneltest.Require(t)
	h, err := HoldLoad(ProgLoad{Program: Valid, Name: "vlog_held"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-h.done:
		t.Fatalf("the held load returned before its page was supplied: %+v", res)
	default:
	}
	r, err := h.Release()
	if err != nil || !r.OK() {
		t.Fatalf("released load: %v %v", r.Errno, err)
	}
}
