package tracer_test

// The harness of the real-kernel tests: one tracer for the whole test
// binary and the helpers that issue a load and find its record. Each test
// issues the syscall itself with the load generator, knows what the kernel
// answered, and checks that the tracer recorded exactly that. Expectations
// that differ by kernel version are explicit.
//
// VERIFIERLOG_TEST_ATTACH picks the attach mode (default auto) and
// VERIFIERLOG_TEST_VARIANT the program variant (default auto);
// VERIFIERLOG_EXPECT_AUTO and VERIFIERLOG_EXPECT_VARIANT, where set, are the
// mode and the variant auto must choose here.

import (
	"bytes"
	"context"
	"fmt"
	"os"
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

// hasLogTrueSize: the kernel writes log_true_size back (Linux 6.4+).
func hasLogTrueSize(t testing.TB) bool { return kerneltest.KernelAtLeast(t, 6, 4) }

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
