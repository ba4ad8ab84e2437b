package tracer_test

// Hostile and odd loads: log levels the kernel rejects, a
// read-only log buffer, a load from another pid namespace, and thousands of
// threads killed in the middle of their loads. Some run in a child process:
// the test binary itself, re-executed with childEnv set.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

const (
	// childEnv names the child mode to run instead of the tests.
	childEnv = "VERIFIERLOG_TEST_CHILD"
	// childProgPrefix starts the prog names of children's loads, so that
	// the harness keeps their records.
	childProgPrefix = "vlogx_"
)

// runChild runs one child mode and returns the exit code.
func runChild(mode string) int {
	var err error
	switch mode {
	case "pidns-load":
		err = childPIDNamespaceLoad()
	case "threads":
		err = childThreadStorm()
	case "nobtf":
		err = childTracerWithoutBTF()
	case "nocaps":
		err = childTracerWithoutCapabilities()
	default:
		err = fmt.Errorf("unknown child mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// childReport is what the pid-namespace child saw of its own load.
type childReport struct {
	PID   int    `json:"pid"` // getpid() inside the namespace
	Ret   int    `json:"ret"`
	Errno string `json:"errno"`
}

func childPIDNamespaceLoad() error {
	r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: childProgPrefix + "pidns"})
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(childReport{PID: os.Getpid(), Ret: r.Ret, Errno: errnoName(r.Errno)})
}

// threadSlot is one storm thread's account in the shared file: its TID,
// the bpf(2) calls it began (counted just before the syscall) and those
// that returned (counted just after).
type threadSlot struct {
	TID, Started, Completed uint64
}

const threadSlotSize = int(unsafe.Sizeof(threadSlot{}))

// childThreadStorm starts VERIFIERLOG_TEST_THREADS threads that load in a
// loop, accounting in the shared file VERIFIERLOG_TEST_SHM, prints "ready"
// once every thread has begun, and loads until it is killed.
func childThreadStorm() error {
	n, err := strconv.Atoi(os.Getenv("VERIFIERLOG_TEST_THREADS"))
	if err != nil {
		return err
	}
	f, err := os.OpenFile(os.Getenv("VERIFIERLOG_TEST_SHM"), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, n*threadSlotSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	slots := unsafe.Slice((*threadSlot)(unsafe.Pointer(&mem[0])), n)
	var ready sync.WaitGroup
	ready.Add(n)
	release := make(chan struct{})
	for i := range slots {
		go func(s *threadSlot) {
			runtime.LockOSThread() // never unlocked: the thread dies with the process
			atomic.StoreUint64(&s.TID, uint64(unix.Gettid()))
			ready.Done()
			<-release
			p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 1000, Name: childProgPrefix + "thr",
				BeforeSyscall: func() { atomic.AddUint64(&s.Started, 1) },
				AfterSyscall:  func() { atomic.AddUint64(&s.Completed, 1) },
			}
			for {
				if _, err := loadgen.LoadProgram(p); err != nil {
					panic(err)
				}
			}
		}(&slots[i])
	}
	ready.Wait()
	close(release)
	fmt.Println("ready")
	select {}
}

func TestRejectedLogLevelsAreRecordedAsPassed(t *testing.T) {
	h := sharedHarness(t)
	for _, c := range []struct {
		level uint32
		size  uint32
		why   string
	}{
		{16, 256, "an unknown level bit"},
		{1 << 31, 256, "the top bit"},
		{0, 256, "a buffer without a level"},
	} {
		p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 8, Name: "vlog_badlevel", LogLevel: c.level, LogSize: c.size}
		r := loadProg(t, p)
		if r.Errno != unix.EINVAL {
			t.Errorf("%s (level %#x): kernel answered %v, want EINVAL", c.why, c.level, r.Errno)
			continue
		}
		ev := checkProgRecord(t, h, p, r)
		if ev.Truncated() || ev.LogUsedSize != 0 {
			t.Errorf("%s: truncated %v, log used %d: an EINVAL before the verifier has no log", c.why, ev.Truncated(), ev.LogUsedSize)
		}
		wantTrueSizeUnknown(t, ev)
	}
}

func TestReadOnlyLogBufferIsEFAULTWithTheKernelsTrueSize(t *testing.T) {
	h := sharedHarness(t)
	addr, unmap, err := loadgen.ReadOnlyPages(1)
	if err != nil {
		t.Fatal(err)
	}
	defer unmap()
	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 8, Name: "vlog_rolog", LogLevel: loadgen.LogLevel2, LogSize: uint32(os.Getpagesize()), LogBufAddr: addr}
	r := loadProg(t, p)
	if r.Errno != unix.EFAULT {
		t.Fatalf("log_buf in read-only memory: kernel answered %v, want EFAULT", r.Errno)
	}
	ev := checkProgRecord(t, h, p, r)
	if ev.Truncated() || ev.LogUsedSize != 0 {
		t.Errorf("truncated %v, log used %d: the log could not be written", ev.Truncated(), ev.LogUsedSize)
	}
	// 6.4+ writes log_true_size back even when the log copy faulted.
	wantTrueSize(t, ev, r)
}

func TestLoadFromAnotherPIDNamespaceCarriesHostPIDs(t *testing.T) {
	h := sharedHarness(t)
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=pidns-load")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child in a new pid namespace: %v", err)
	}
	var rep childReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("child report %q: %v", out, err)
	}
	if rep.PID != 1 {
		t.Fatalf("child saw pid %d, want 1 in its own pid namespace", rep.PID)
	}
	h.sync(t)
	var recs []tracer.LoadEvent
	h.mu.Lock()
	for _, ev := range h.events {
		if ev.PID == uint32(cmd.Process.Pid) {
			recs = append(recs, ev)
		}
	}
	h.mu.Unlock()
	if len(recs) != 1 {
		t.Fatalf("%d records with the child's host pid %d, want 1", len(recs), cmd.Process.Pid)
	}
	ev := recs[0]
	if ev.ProgName.String() != childProgPrefix+"pidns" || ev.Ret != int64(rep.Ret) || ev.ErrnoName() != rep.Errno {
		t.Errorf("record name %q ret %d errno %q; child's load ret %d errno %q", ev.ProgName, ev.Ret, ev.ErrnoName(), rep.Ret, rep.Errno)
	}
	if ev.TID < ev.PID {
		t.Errorf("tid %d below the pid %d: not a host thread id", ev.TID, ev.PID)
	}
}

func TestThousandsOfThreadsKilledMidLoadLeaveNothingBehind(t *testing.T) {
	h := sharedHarness(t)
	threads := 2000
	if v := os.Getenv("VERIFIERLOG_TEST_KILL_THREADS"); v != "" {
		var err error
		if threads, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	shm := t.TempDir() + "/slots"
	if err := os.WriteFile(shm, make([]byte, threads*threadSlotSize), 0o600); err != nil {
		t.Fatal(err)
	}
	before := h.lost(t)
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=threads", fmt.Sprintf("VERIFIERLOG_TEST_THREADS=%d", threads), "VERIFIERLOG_TEST_SHM="+shm)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	childPID := uint32(cmd.Process.Pid)
	childRecords := func() int {
		h.mu.Lock()
		defer h.mu.Unlock()
		n := 0
		for i := range h.events {
			if h.events[i].PID == childPID {
				n++
			}
		}
		return n
	}
	// Kill once every thread has loaded about once: most are then in the
	// middle of a load.
	for deadline := time.Now().Add(recordTimeout); childRecords() < threads && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	h.sync(t) // every exit hook of the child ran before it died

	b, err := os.ReadFile(shm)
	if err != nil {
		t.Fatal(err)
	}
	perTID := map[uint32]uint64{}
	h.mu.Lock()
	for i := range h.events {
		if ev := &h.events[i]; ev.PID == childPID {
			perTID[ev.TID]++
			if ev.ProgName.String() != childProgPrefix+"thr" {
				t.Errorf("child record with prog name %q", ev.ProgName)
			}
		}
	}
	h.mu.Unlock()
	var inCall, total, unrecorded uint64
	seen := map[uint32]bool{}
	ne := binary.NativeEndian
	for i := range threads {
		s := threadSlot{ne.Uint64(b[i*threadSlotSize:]), ne.Uint64(b[i*threadSlotSize+8:]), ne.Uint64(b[i*threadSlotSize+16:])}
		tid := uint32(s.TID)
		seen[tid] = true
		n := perTID[tid]
		total += n
		// A thread killed in a load still returned from it, through the
		// exit hook: its record is there, its Completed not.
		if n > s.Started || s.Started > s.Completed+1 {
			t.Errorf("thread %d: %d records for %d calls begun, %d returned", tid, n, s.Started, s.Completed)
		}
		if n < s.Completed {
			unrecorded += s.Completed - n
		}
		if s.Started > s.Completed && n == s.Started {
			inCall++
		}
	}
	for tid, n := range perTID {
		if !seen[tid] {
			t.Errorf("%d records from tid %d, not one of the child's load threads", n, tid)
		}
	}
	after := h.lost(t)
	var counted uint64
	for reason, n := range after {
		if d := n - before[reason]; d > 0 {
			counted += d
			t.Logf("lost %s: %d", reason, d)
		}
	}
	t.Logf("%d threads, %d records; %d threads were killed inside bpf(2), and have its record", threads, total, inCall)
	// What is not recorded is counted.
	if unrecorded > counted {
		t.Errorf("%d calls returned without a record, only %d counted as lost", unrecorded, counted)
	}
	// Every enter hook met its exit: nothing stays in flight.
	var inFlight uint64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if inFlight, err = h.tr.LoadsInFlight(); err != nil || inFlight == 0 {
			break
		}
	}
	// An entry left behind is an exit hook that never ran: the kernel must
	// have counted the kretprobe it missed.
	if missed := after[tracer.LostKretprobeMissed] - before[tracer.LostKretprobeMissed]; err != nil || inFlight > missed {
		t.Errorf("loads in flight after the child died: %d, kretprobes missed: %d (%v)", inFlight, missed, err)
	}
}

// TestLoadBegunBeforeAttachIsCountedNotRecorded holds a load inside the
// kernel (userfaultfd) while a new tracer attaches, then lets it finish:
// that tracer has no record of it; in tracepoint mode it counts it as
// inflight_missing while its attach grace lasts. fentry and kprobe mode
// never see it: fexit and kretprobe do not fire for a call entered before
// they were attached.
func TestLoadBegunBeforeAttachIsCountedNotRecorded(t *testing.T) {
	kerneltest.Require(t)
	for _, grace := range []time.Duration{0, time.Nanosecond} {
		held, err := loadgen.HoldLoad(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_held"})
		if err != nil {
			t.Fatal(err)
		}
		opts := testOptions(t)
		opts.AttachGrace = grace
		tr, err := tracer.New(opts)
		if err != nil {
			held.Release()
			t.Fatal(err)
		}
		counting, err := tr.CountsLoadsBegunBeforeAttach()
		for deadline := time.Now().Add(10 * time.Second); err == nil && grace > 0 && counting && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			counting, err = tr.CountsLoadsBegunBeforeAttach()
		}
		if err != nil {
			t.Fatal(err)
		}
		if wantCounting := tr.Mode() == tracer.AttachTracepoint && grace == 0; counting != wantCounting {
			t.Fatalf("%s mode, grace %v: counting loads begun before attach %v, want %v", tr.Mode(), grace, counting, wantCounting)
		}
		var mu sync.Mutex
		var events []tracer.LoadEvent
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- tr.Run(ctx, func(ev *tracer.LoadEvent) {
				mu.Lock()
				events = append(events, *ev)
				mu.Unlock()
			})
		}()
		r, err := held.Release()
		if err != nil || !r.OK() {
			t.Fatalf("held load: %v %v", r.Errno, err)
		}
		marker, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_marker"})
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(recordTimeout); ; time.Sleep(10 * time.Millisecond) {
			mu.Lock()
			seen := slices.ContainsFunc(events, func(ev tracer.LoadEvent) bool { return matches(&ev, marker) })
			mu.Unlock()
			if seen {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no record of the marker load")
			}
		}
		lost, err := tr.Lost()
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		for _, ev := range events {
			if matches(&ev, r) {
				t.Errorf("grace %v: a record of the load that began before attach: %+v", grace, ev)
			}
		}
		mu.Unlock()
		want := uint64(0)
		if counting {
			want = 1
		}
		if lost[tracer.LostNoInflight] != want {
			t.Errorf("grace %v (still counting: %v): inflight_missing %d, want %d", grace, counting, lost[tracer.LostNoInflight], want)
		}
		cancel()
		<-done
		tr.Close()
	}
}
