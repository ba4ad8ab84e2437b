package tracer_test

// Real-kernel tests: each issues the syscall itself with the load generator,
// knows what the kernel answered, and checks that the tracer recorded
// exactly that. Expectations that differ by kernel version are explicit.
//
// VERIFIERLOG_TEST_ATTACH picks the attach mode (default auto) and
// VERIFIERLOG_TEST_VARIANT the program variant (default auto);
// VERIFIERLOG_EXPECT_AUTO and VERIFIERLOG_EXPECT_VARIANT, where set, are the
// mode and the variant auto must choose here.

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

// recordTimeout bounds every wait for a record; generous, since the suite
// also runs under software emulation.
const recordTimeout = 60 * time.Second

var (
	sharedOnce sync.Once
	sharedErr  error
	shared     *harness
)

func TestMain(m *testing.M) {
	if child := os.Getenv(childEnv); child != "" {
		os.Exit(runChild(child))
	}
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	os.Exit(code)
}

func testAttachMode(t testing.TB) tracer.AttachMode {
	m, err := tracer.ParseAttachMode(envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func testVariant(t testing.TB) tracer.Variant {
	v, err := tracer.ParseVariant(envOr("VERIFIERLOG_TEST_VARIANT", "auto"))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// testOptions are the tracer options of the mode and variant under test.
func testOptions(t testing.TB) tracer.Options {
	return tracer.Options{Attach: testAttachMode(t), Variant: testVariant(t)}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// harness is one tracer for the whole test binary, collecting the records of
// this process and of the child processes it starts (prog names with
// childProgPrefix).
type harness struct {
	tr     *tracer.Tracer
	cancel context.CancelFunc
	done   chan error

	mu     sync.Mutex
	cond   *sync.Cond
	events []tracer.LoadEvent
}

func startHarness(opts tracer.Options) (*harness, error) {
	// A short attach grace: the tests run with the exit hook's fast path
	// for non-loads (no load in flight) already on.
	opts.AttachGrace = time.Millisecond
	tr, err := tracer.New(opts)
	if err != nil {
		return nil, err
	}
	h := &harness{tr: tr, done: make(chan error, 1)}
	h.cond = sync.NewCond(&h.mu)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	pid := uint32(os.Getpid())
	go func() {
		h.done <- tr.Run(ctx, func(ev *tracer.LoadEvent) {
			if ev.PID != pid && !strings.HasPrefix(ev.ProgName.String(), childProgPrefix) {
				return
			}
			h.mu.Lock()
			h.events = append(h.events, *ev)
			h.cond.Broadcast()
			h.mu.Unlock()
		})
	}()
	return h, nil
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
	h.tr.Close()
}

// sharedHarness starts the shared tracer on first use.
func sharedHarness(t *testing.T) *harness {
	t.Helper()
	kerneltest.Require(t)
	sharedOnce.Do(func() { shared, sharedErr = startHarness(testOptions(t)) })
	if sharedErr != nil {
		t.Fatalf("start tracer: %v", sharedErr)
	}
	return shared
}

// matches reports whether ev is the record of the call r.
func matches(ev *tracer.LoadEvent, r loadgen.Result) bool {
	return ev.TID == uint32(r.TID) && ev.StartNs >= r.StartNs && ev.EndNs <= r.EndNs
}

// await returns the one record of the call r, failing if none comes or if
// there is more than one.
func (h *harness) await(t *testing.T, r loadgen.Result) tracer.LoadEvent {
	t.Helper()
	deadline := time.Now().Add(recordTimeout)
	timer := time.AfterFunc(recordTimeout, func() { h.mu.Lock(); h.cond.Broadcast(); h.mu.Unlock() })
	defer timer.Stop()
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		var found []tracer.LoadEvent
		for i := range h.events {
			if matches(&h.events[i], r) {
				found = append(found, h.events[i])
			}
		}
		switch {
		case len(found) == 1:
			return found[0]
		case len(found) > 1:
			t.Fatalf("%d records for one call (tid %d): %+v", len(found), r.TID, found)
		case time.Now().After(deadline):
			t.Fatalf("no record within %v of the call (tid %d, ret %d)", recordTimeout, r.TID, r.Ret)
		}
		h.cond.Wait()
	}
}

// sync issues a marker load from the calling goroutine's thread and waits
// for its record: every record of a call made before it is in by then.
func (h *harness) sync(t *testing.T) {
	t.Helper()
	r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_marker"})
	if err != nil {
		t.Fatal(err)
	}
	h.await(t, r)
}

// recordsOf returns the records of the call r seen so far.
func (h *harness) recordsOf(r loadgen.Result) []tracer.LoadEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []tracer.LoadEvent
	for i := range h.events {
		if matches(&h.events[i], r) {
			out = append(out, h.events[i])
		}
	}
	return out
}

func (h *harness) lost(t *testing.T) map[tracer.LostReason]uint64 {
	t.Helper()
	l, err := h.tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// kernelAtLeast compares uname -r with major.minor.
func kernelAtLeast(t testing.TB, major, minor int) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		t.Fatalf("cannot parse kernel release %q", rel)
	}
	maj, _ := strconv.Atoi(parts[0])
	min, _ := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return maj > major || (maj == major && min >= minor)
}

// hasLogTrueSize: the kernel writes log_true_size back (Linux 6.4+).
func hasLogTrueSize(t testing.TB) bool { return kernelAtLeast(t, 6, 4) }

func loadProg(t *testing.T, p loadgen.ProgLoad) loadgen.Result {
	t.Helper()
	r, err := loadgen.LoadProgram(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func loadBTF(t *testing.T, b loadgen.BTFLoad) loadgen.Result {
	t.Helper()
	r, err := loadgen.LoadBTF(b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func threadComm(t *testing.T, tid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", tid))
	if err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSpace(b))
}

// checkProgRecord checks the fields every PROG_LOAD record must copy
// exactly from the call, and returns the record.
func checkProgRecord(t *testing.T, h *harness, p loadgen.ProgLoad, r loadgen.Result) tracer.LoadEvent {
	t.Helper()
	ev := h.await(t, r)
	if ev.Command != tracer.CmdProgLoad {
		t.Errorf("command %v, want BPF_PROG_LOAD", ev.Command)
	}
	if ev.Ret != int64(r.Ret) {
		t.Errorf("ret %d, kernel returned %d", ev.Ret, r.Ret)
	}
	if got := ev.ErrnoName(); got != errnoName(r.Errno) {
		t.Errorf("errno %q, kernel returned %q", got, errnoName(r.Errno))
	}
	if ev.AttrSize != r.AttrSize {
		t.Errorf("attr size %d, passed %d", ev.AttrSize, r.AttrSize)
	}
	if ev.PID != uint32(os.Getpid()) || ev.TID != uint32(r.TID) {
		t.Errorf("pid/tid %d/%d, want %d/%d", ev.PID, ev.TID, os.Getpid(), r.TID)
	}
	if ev.UID != uint32(os.Getuid()) {
		t.Errorf("uid %d, want %d", ev.UID, os.Getuid())
	}
	if got, want := ev.Comm.String(), threadComm(t, r.TID); got != want {
		t.Errorf("comm %q, want %q", got, want)
	}
	if ev.CgroupID == 0 {
		t.Errorf("cgroup id 0")
	}
	if ev.StartNs == 0 || ev.EndNs < ev.StartNs {
		t.Errorf("times %d..%d", ev.StartNs, ev.EndNs)
	}
	if ev.AttachMode != h.tr.Mode() {
		t.Errorf("attach mode %q, tracer in %q", ev.AttachMode, h.tr.Mode())
	}
	if p.AttrPtr != 0 || p.NullAttr {
		return ev
	}
	wantType := p.ProgType
	if wantType == 0 {
		wantType = 1 // socket filter
	}
	if ev.ProgType != wantType || ev.InsnCnt != r.InsnCnt {
		t.Errorf("prog type %d insn_cnt %d, want %d and %d", ev.ProgType, ev.InsnCnt, wantType, r.InsnCnt)
	}
	if p.AttrSize == 0 || p.AttrSize >= 64 {
		if got := ev.ProgName.String(); got != p.Name {
			t.Errorf("prog name %q, want %q", got, p.Name)
		}
	}
	if ev.LogLevel != p.LogLevel || ev.LogSize != p.LogSize {
		t.Errorf("log level/size %d/%d, want %d/%d", ev.LogLevel, ev.LogSize, p.LogLevel, p.LogSize)
	}
	if wantBuf := !p.NoLogBuf && p.LogSize > 0; ev.HasLogBuf != wantBuf {
		t.Errorf("has log buf %v, want %v", ev.HasLogBuf, wantBuf)
	}
	return ev
}

func errnoName(e syscall.Errno) string {
	if e == 0 {
		return ""
	}
	return unix.ErrnoName(e)
}

// wantTrueSize checks that the record's log_true_size is known and equal to
// what the kernel wrote on kernels that write it, and unknown elsewhere.
func wantTrueSize(t *testing.T, ev tracer.LoadEvent, r loadgen.Result) {
	t.Helper()
	if !hasLogTrueSize(t) {
		if ev.LogTrueSizeKnown {
			t.Errorf("log_true_size known (%d) on a kernel that does not write it", ev.LogTrueSize)
		}
		return
	}
	if !ev.LogTrueSizeKnown || ev.LogTrueSize != r.LogTrueSize {
		t.Errorf("log_true_size %d (known %v), kernel wrote %d", ev.LogTrueSize, ev.LogTrueSizeKnown, r.LogTrueSize)
	}
}

func wantTrueSizeUnknown(t *testing.T, ev tracer.LoadEvent) {
	t.Helper()
	if ev.LogTrueSizeKnown {
		t.Errorf("log_true_size reported as known (%d), but the kernel did not write it", ev.LogTrueSize)
	}
}

// fullLogSize is the buffer size, NUL included, that holds the whole level-2
// log of p's program: the kernel's answer to a size query where it has one,
// else the length of the log in a large buffer + 1.
func fullLogSize(t *testing.T, p loadgen.ProgLoad) uint32 {
	t.Helper()
	p.LogSize, p.NoLogBuf = 1<<20, false
	r := loadProg(t, p)
	if !r.OK() {
		t.Fatalf("load with a 1 MiB log: %v", r.Errno)
	}
	measured := uint32(len(r.Log)) + 1
	if hasLogTrueSize(t) && r.LogTrueSize != measured {
		t.Fatalf("kernel log_true_size %d, measured log %d + NUL", r.LogTrueSize, len(r.Log))
	}
	return measured
}

func TestTrueSizeSupportMatchesKernelVersion(t *testing.T) {
	h := sharedHarness(t)
	if got, want := h.tr.LogTrueSizeSupported(), hasLogTrueSize(t); got != want {
		t.Fatalf("LogTrueSizeSupported %v on %s, want %v", got, h.tr.KernelRelease(), want)
	}
}

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

func TestPresetTrueSizeIsNotTakenForTheKernels(t *testing.T) {
	h := sharedHarness(t)
	// An invalid program type fails before the verifier: the kernel never
	// writes log_true_size, and the preset must not be reported.
	p := loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_preset", LogLevel: loadgen.LogLevel1, LogSize: 4096, TrueSizePreset: 4242, ProgType: 0x7fff}
	r := loadProg(t, p)
	// A kernel whose union bpf_attr ends before offset 140 (5.10) refuses
	// the non-zero tail before it looks at the attr: E2BIG.
	want := unix.EINVAL
	if !kernelAtLeast(t, 6, 1) {
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

func TestConcurrentLoadsAreAllRecordedWithNoneLost(t *testing.T) {
	h := sharedHarness(t)
	const threads, perThread = 8, 500
	before := h.lost(t)
	results := make([][]loadgen.Result, threads)
	var wg sync.WaitGroup
	for i := range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perThread {
				p := loadgen.ProgLoad{Program: loadgen.Valid, Name: fmt.Sprintf("vlog_c%d", i)}
				if j%2 == 1 {
					p = loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 8, Name: p.Name, LogLevel: loadgen.LogLevel2, LogSize: 128}
				}
				r, err := loadgen.LoadProgram(p)
				if err != nil {
					t.Error(err)
					return
				}
				results[i] = append(results[i], r)
			}
		}()
	}
	wg.Wait()
	for i := range results {
		for _, r := range results[i] {
			ev := h.await(t, r)
			if ev.Ret != int64(r.Ret) {
				t.Fatalf("thread %d: record ret %d, kernel %d", i, ev.Ret, r.Ret)
			}
		}
	}
	after := h.lost(t)
	for reason, n := range after {
		if n != before[reason] {
			t.Errorf("lost %s: %d during the storm", reason, n-before[reason])
		}
	}
}

func TestAutoChoosesFirstWorkingModeAndExplainsTheOthers(t *testing.T) {
	kerneltest.Require(t)
	tr, err := tracer.New(tracer.Options{Attach: tracer.AttachAuto, Variant: tracer.VariantAuto, RingBufferBytes: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	attempts := tr.Attempts()
	order := []tracer.AttachMode{tracer.AttachFentry, tracer.AttachKprobe, tracer.AttachTracepoint}
	for i, a := range attempts {
		if a.Mode != order[i] {
			t.Fatalf("attempt %d is %s, want %s (cheapest first)", i, a.Mode, order[i])
		}
		last := i == len(attempts)-1
		if last != (a.Err == nil) {
			t.Fatalf("attempt %d (%s): err %v; only the last attempt may succeed", i, a.Mode, a.Err)
		}
		if a.Err != nil && !strings.Contains(a.Err.Error(), string(a.Mode)) {
			t.Errorf("attempt %s: error does not name the mode: %v", a.Mode, a.Err)
		}
	}
	if tr.Mode() != attempts[len(attempts)-1].Mode {
		t.Errorf("mode %s, last attempt %s", tr.Mode(), attempts[len(attempts)-1].Mode)
	}
	if want := os.Getenv("VERIFIERLOG_EXPECT_AUTO"); want != "" && string(tr.Mode()) != want {
		t.Errorf("auto chose %s on %s, want %s (attempts: %v)", tr.Mode(), tr.KernelRelease(), want, attempts)
	}
	if want := os.Getenv("VERIFIERLOG_EXPECT_VARIANT"); want != "" && string(tr.Variant()) != want {
		t.Errorf("auto chose the %s programs on %s, want %s (the kernel lacks %v)", tr.Variant(), tr.KernelRelease(), want, tr.VariantLacks())
	}
	if (tr.Variant() == tracer.VariantCompat) != (len(tr.VariantLacks()) > 0) {
		t.Errorf("auto chose the %s programs, saying the kernel lacks %v: compat must be chosen exactly when something is lacking", tr.Variant(), tr.VariantLacks())
	}
}

func TestStopDetachesAndDeliversPendingRecords(t *testing.T) {
	kerneltest.Require(t)
	sharedHarness(t) // its programs are not this test's
	before, err := kerneltest.ProgramIDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	h, err := startHarness(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	during, err := kerneltest.ProgramIDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ours := map[uint32]bool{}
	for id := range during {
		if !before[id] {
			ours[id] = true
		}
	}
	if want := map[tracer.AttachMode]int{tracer.AttachFentry: 4, tracer.AttachKprobe: 4, tracer.AttachTracepoint: 2}[h.tr.Mode()]; len(ours) != want {
		t.Fatalf("%d programs loaded in %s mode, want %d", len(ours), h.tr.Mode(), want)
	}
	r := loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_pending"})
	h.stop() // right after the load: its record must still be delivered
	found := 0
	for i := range h.events {
		if matches(&h.events[i], r) {
			found++
		}
	}
	if found != 1 {
		t.Errorf("%d records of the load made just before stop, want 1", found)
	}
	if left := kerneltest.ProgramsGone(ours, 10*time.Second); len(left) != 0 {
		t.Errorf("programs %v still loaded after stop", left)
	}
}

func TestFullRingBufferCountsEveryDrop(t *testing.T) {
	kerneltest.Require(t)
	// One page holds about fifteen records; while the handler is blocked
	// the ring fills and every later reservation must be counted.
	opts := testOptions(t)
	opts.RingBufferBytes = 4096
	tr, err := tracer.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	release := make(chan struct{})
	var delivered []tracer.LoadEvent
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	pid := uint32(os.Getpid())
	blocked := false
	go func() {
		done <- tr.Run(ctx, func(ev *tracer.LoadEvent) {
			if !blocked {
				blocked = true
				<-release
			}
			if ev.PID == pid {
				delivered = append(delivered, *ev)
			}
		})
	}()
	const loads = 200
	var results []loadgen.Result
	for range loads {
		results = append(results, loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_full"}))
	}
	lost, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	close(release)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// An attempt the kernel answered EAGAIN (loadgen retries it, as libbpf
	// does) is a load of its own: it is delivered or dropped like the rest,
	// so the count to reach is every attempt, and the records to count are
	// every one of this test's, not only those of a result's last attempt.
	issued := uint64(0)
	for _, r := range results {
		issued += 1 + uint64(r.EAGAINRetries)
	}
	ours := uint64(0)
	for i := range delivered {
		if delivered[i].ProgName.String() == "vlog_full" {
			ours++
		}
	}
	full := lost[tracer.LostRingBufferFull]
	if full == 0 || ours == issued {
		t.Fatalf("a 4 KiB ring buffer took %d of %d loads with %d drops: it never filled", ours, issued, full)
	}
	for _, r := range results {
		n := 0
		for i := range delivered {
			if matches(&delivered[i], r) {
				n++
			}
		}
		if n > 1 {
			t.Fatalf("%d records for one call (tid %d)", n, r.TID)
		}
	}
	// Run this package alone (go test -p 1) so that no other process loads
	// programs meanwhile: then every load is either delivered or counted.
	if ours+full != issued {
		t.Fatalf("%d delivered + %d counted as ringbuf_full = %d, want the %d loads issued (%d of them EAGAIN retries)",
			ours, full, ours+full, issued, issued-loads)
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
		wantSource := "measured"
		if ev.LogTrueSizeKnown {
			wantSource = "kernel"
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

// TestSuspendAndResume: a suspended tracer sees no load and counts none
// lost; resumed, it sees the next load exactly once, as before; stopped, it
// cannot be resumed.
func TestSuspendAndResume(t *testing.T) {
	kerneltest.Require(t)
	h, err := startHarness(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	stop := sync.OnceFunc(h.stop)
	defer stop()
	before := h.await(t, loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_susp_a"}))
	lostBefore := h.lost(t)
	if err := h.tr.Suspend(); err != nil {
		t.Fatal(err)
	}
	unseen := loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_susp_b"})
	err = h.tr.Resume()
	if h.tr.Mode() == tracer.AttachFentry && !kernelAtLeast(t, 5, 11) {
		// Before 5.11 a tracing program attaches once: its target goes
		// with its first link.
		if err == nil || !strings.Contains(err.Error(), "5.11") {
			t.Fatalf("Resume in fentry mode before 5.11: %v, want the error that names the kernel's limit", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	after := h.await(t, loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_susp_c"}))
	// The three loads come from this goroutine one after another, so the
	// suspended one's record, had there been one, would be in before c's.
	if got := h.recordsOf(unseen); len(got) != 0 {
		t.Errorf("%d records of a load made while suspended, want none: %+v", len(got), got)
	}
	if before.ProgName.String() != "vlog_susp_a" || after.ProgName.String() != "vlog_susp_c" {
		t.Errorf("records named %q and %q, want vlog_susp_a and vlog_susp_c", before.ProgName, after.ProgName)
	}
	if lost := h.lost(t); !maps.Equal(lost, lostBefore) {
		t.Errorf("lost %v after suspend and resume, %v before", lost, lostBefore)
	}
	if n, err := h.tr.LoadsInFlight(); err != nil || n != 0 {
		t.Errorf("%d loads in flight after the last load (err %v), want 0", n, err)
	}
	stop()
	if err := h.tr.Resume(); err == nil {
		t.Error("Resume after Run returned and Close: no error")
	}
}
