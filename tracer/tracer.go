// Package tracer owns the kernel side of the exporter: it loads the
// bpf2go-generated programs of bpf/verifierlog.c, attaches them in one of
// the attach modes (falling back in auto mode), reads the ring buffer of
// load records and decodes each into a LoadEvent. It knows nothing of
// metrics or spans; otel/ builds those from LoadEvents.
package tracer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// DefaultRingBufferBytes holds about 8,400 records (240 bytes and the ring
// buffer's 8-byte header each): 1.4 s of BENCHMARKS.md's load storm with
// user space stalled, where the reader drains it every 20 ms. Its data
// pages are mapped twice into the process, so it counts twice in RSS.
const DefaultRingBufferBytes = 2 << 20

// DefaultAttachGrace outlasts all but pathological verifier runs.
const DefaultAttachGrace = 30 * time.Second

// FlushInterval is the longest a record waits in the ring buffer: the BPF
// side wakes the reader only once an eighth of the buffer is full, and the
// reader polls this often in between, so that a wakeup of user space is not
// on every load's path.
const FlushInterval = 20 * time.Millisecond

// Options configure New.
type Options struct {
	// Attach is the mode to use; "" means AttachAuto.
	Attach AttachMode
	// Variant is the program variant to load; "" means VariantAuto, the
	// best the kernel's features allow.
	Variant Variant
	// RingBufferBytes is the ring buffer's size, rounded up to a power of
	// two pages; 0 means DefaultRingBufferBytes.
	RingBufferBytes int
	// AttachGrace is how long after attach a load that began before it is
	// still counted when it ends (LostNoInflight); 0 means
	// DefaultAttachGrace. Only tracepoint mode needs it: past it, the exit
	// hook of a bpf(2) call leaves after one memory load while no load is
	// in flight.
	AttachGrace time.Duration
	// LogScanMax bounds the bytes of a caller's log buffer the exit hook
	// scans for the log's end; 0 (and anything above it) means
	// MaxLogScanBytes. Tests lower it to reach the cap with small logs.
	LogScanMax int
	// LogTailBytes, if not 0, makes every record of a load whose log the
	// kernel left in the caller's buffer carry the last LogTailBytes bytes
	// of that log (LoadEvent.LogTail): a success with a log, the verifier's
	// EACCES, and on Linux 6.4+ an EINVAL the verifier logged and the
	// ENOSPC of a rotating log. Every record then takes MaxLogTailBytes
	// more in the ring buffer, whatever LogTailBytes is. At most
	// MaxLogTailBytes; 0, the default, leaves the records as they are.
	LogTailBytes uint32
}

// MaxLogTailBytes is the most of a log's end a record carries
// (bpf/verifierlog.c, LOG_TAIL_MAX).
const MaxLogTailBytes = 4096

// MaxLogScanBytes is the most of a caller's log buffer that is scanned to
// measure a log (bpf/verifierlog.c, LOG_SCAN_MAX): libbpf's and aya's
// largest buffer (16 MiB - 1) is read whole. Past it, the need is reported
// as at least this.
const MaxLogScanBytes = 16 << 20

// Tracer is attached to the kernel from New until Close.
type Tracer struct {
	mode     AttachMode
	variant  choice
	attempts []Attempt
	release  string
	clock    WallClock
	dec      decoder

	maps   tracerMaps
	hooks  *attached
	reader *ringbuf.Reader

	detachOnce sync.Once
	detachErr  error
	graceTimer *time.Timer

	events       atomic.Uint64
	decodeErrors atomic.Uint64
	scanFaults   atomic.Uint64
}

// New loads the programs and attaches them. In auto mode it tries fentry,
// kprobe and tracepoint in turn; Attempts says why each one tried before the
// chosen mode failed.
func New(opts Options) (*Tracer, error) {
	mode := opts.Attach
	if mode == "" {
		mode = AttachAuto
	}
	if _, err := ParseAttachMode(string(mode)); err != nil {
		return nil, err
	}
	want := opts.Variant
	if want == "" {
		want = VariantAuto
	}
	if _, err := ParseVariant(string(want)); err != nil {
		return nil, err
	}
	if opts.LogTailBytes > MaxLogTailBytes {
		return nil, fmt.Errorf("log tail of %d bytes: at most %d", opts.LogTailBytes, MaxLogTailBytes)
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; raising it
	// needs CAP_SYS_RESOURCE. Where it cannot be raised, the maps may still
	// fit, and if they do not, their creation says so. The error alone does
	// not tell: cilium/ebpf decides the kernel charges the rlimit when its
	// probe map cannot be created under a zero rlimit, which is also what a
	// seccomp filter or missing CAP_BPF look like.
	memlockErr := rlimit.RemoveMemlock()
	chosen, err := chooseVariant(want)
	if err != nil {
		return nil, err
	}

	t := &Tracer{release: kernelRelease(), clock: NewWallClock(), variant: chosen}
	// Probe before attaching, so that the probe is not itself a record.
	t.dec.trueSizeSupported = probeLogTrueSize()

	spec, err := loadSpec(chosen.variant)
	if err != nil {
		return nil, err
	}
	if err := configure(spec, opts, t.dec.trueSizeSupported); err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&t.maps, nil); err != nil {
		if memlockErr != nil && errors.Is(err, unix.EPERM) && chargesMemlock(t.release) {
			return nil, fmt.Errorf("create maps: %w: on this kernel BPF memory counts against RLIMIT_MEMLOCK, which could not be raised (%v); raise it (ulimit -l unlimited, LimitMEMLOCK=infinity) or grant CAP_SYS_RESOURCE", err, memlockErr)
		}
		return nil, fmt.Errorf("create maps (%s programs): %w", chosen.variant, explainPrivilegeError(err))
	}
	collOpts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"events":   t.maps.Events,
		"inflight": t.maps.Inflight,
		"lost":     t.maps.Lost,
	}}

	modes := []AttachMode{mode}
	if mode == AttachAuto {
		modes = autoOrder
	}
	for _, m := range modes {
		hooks, err := loadAndAttach(m, spec, collOpts)
		t.attempts = append(t.attempts, Attempt{Mode: m, Err: err})
		if err == nil {
			t.mode, t.hooks = m, hooks
			break
		}
	}
	if t.hooks == nil {
		t.maps.Close()
		return nil, fmt.Errorf("no attach mode worked: %s", describeAttempts(t.attempts))
	}
	t.dec.mode = t.mode
	if v := t.hooks.AttachGrace; t.mode == AttachTracepoint && v != nil {
		grace := opts.AttachGrace
		if grace <= 0 {
			grace = DefaultAttachGrace
		}
		t.graceTimer = time.AfterFunc(grace, func() {
			// Fails only where maps cannot be memory-mapped (before 5.5):
			// the exit hook then keeps reading every command, as before.
			_ = v.Set(uint32(0))
		})
	}

	t.reader, err = ringbuf.NewReader(t.maps.Events)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	return t, nil
}

// Mode is the attach mode in use.
func (t *Tracer) Mode() AttachMode { return t.mode }

// Variant is the program variant in use.
func (t *Tracer) Variant() Variant { return t.variant.variant }

// VariantLacks names what the kernel lacks of the modern variant where
// auto chose compat for that reason; nil otherwise.
func (t *Tracer) VariantLacks() []string { return t.variant.lacks }

// Attempts lists the modes tried, in order; the last one is the one in use.
func (t *Tracer) Attempts() []Attempt { return t.attempts }

// Notes say where the chosen mode runs with less than it asked for (e.g.
// the kernel's default kretprobe maxactive), for the log.
func (t *Tracer) Notes() []string { return t.hooks.notes }

// KernelRelease is uname -r.
func (t *Tracer) KernelRelease() string { return t.release }

// LogTrueSizeSupported reports whether the kernel writes log_true_size back
// (Linux 6.4+), as probed at start.
func (t *Tracer) LogTrueSizeSupported() bool { return t.dec.trueSizeSupported }

// Clock converts the records' kernel timestamps to wall-clock time.
func (t *Tracer) Clock() WallClock { return t.clock }

// Events is the number of records decoded so far.
func (t *Tracer) Events() uint64 { return t.events.Load() }

// LogScanFaults is the number of records whose log fit but could not be
// read back to measure it (LoadEvent.LogScanFault).
func (t *Tracer) LogScanFaults() uint64 { return t.scanFaults.Load() }

// Run calls handle for every load record until ctx is done. Then it
// detaches the hooks, hands over what the ring buffer still holds, and
// returns. handle runs on Run's goroutine; ev is reused, so copy what you
// keep. Run must not be called twice.
func (t *Tracer) Run(ctx context.Context, handle func(ev *LoadEvent)) error {
	stop := context.AfterFunc(ctx, func() {
		_ = t.detach()
		_ = t.reader.Flush()
	})
	defer stop()

	var rec ringbuf.Record
	var ev LoadEvent
	for {
		t.reader.SetDeadline(time.Now().Add(FlushInterval))
		err := t.reader.ReadInto(&rec)
		switch {
		case err == nil:
		case errors.Is(err, ringbuf.ErrFlushed):
			if ctx.Err() != nil {
				return nil
			}
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("read ring buffer: %w", err)
		}
		if err := t.dec.decode(rec.RawSample, &ev); err != nil {
			t.decodeErrors.Add(1)
			continue
		}
		t.events.Add(1)
		if ev.LogScanFault {
			t.scanFaults.Add(1)
		}
		handle(&ev)
	}
}

func (t *Tracer) detach() error {
	t.detachOnce.Do(func() {
		if t.graceTimer != nil {
			t.graceTimer.Stop()
		}
		if t.hooks != nil {
			t.detachErr = t.hooks.detach()
		}
	})
	return t.detachErr
}

// Suspend detaches the hooks and keeps the programs, maps and ring buffer;
// Resume attaches them again. Loads that run in between are not seen, and
// loads in flight across either call may be counted lost. They exist for
// internal/bench, which alternates the exporter with other setups of the
// node slice by slice, so that the machine's drift hits all alike, while
// its programs stay where they landed in kernel memory.
func (t *Tracer) Suspend() error { return t.hooks.unlink() }

// Resume re-attaches what Suspend detached; after Run has returned or
// Close, it fails: the programs are closed.
func (t *Tracer) Resume() error { return t.hooks.link() }

// Close detaches the hooks (if Run has not) and frees everything.
func (t *Tracer) Close() error {
	errs := []error{t.detach()}
	if t.reader != nil {
		errs = append(errs, t.reader.Close())
	}
	errs = append(errs, t.maps.Close())
	return errors.Join(errs...)
}

// tracerMaps are the maps Go reads, shared by every mode's programs.
type tracerMaps struct {
	Events   *ebpf.Map `ebpf:"events"`
	Inflight *ebpf.Map `ebpf:"inflight"`
	Lost     *ebpf.Map `ebpf:"lost"`
}

func (m *tracerMaps) Close() error {
	return errors.Join(m.Events.Close(), m.Inflight.Close(), m.Lost.Close())
}

// configure sets what the programs read as constants: the ring buffer's
// size and wake-up threshold, the hooked functions' argument slots in this
// kernel, the log scan's cap, and the log tail's size; rotating: the kernel
// writes log_true_size back and keeps a rotating log's tail (6.4+).
func configure(spec *ebpf.CollectionSpec, opts Options, rotating bool) error {
	ringSize := ringBufferSize(opts.RingBufferBytes)
	spec.Maps["events"].MaxEntries = ringSize
	scanMax := opts.LogScanMax
	if scanMax <= 0 || scanMax > MaxLogScanBytes {
		scanMax = MaxLogScanBytes
	}
	progSlots, err := argSlots(progLoadFunc)
	if err != nil {
		return fmt.Errorf("read %s's prototype from kernel BTF: %w", progLoadFunc, err)
	}
	btfSlots, err := argSlots(btfLoadFunc)
	if err != nil {
		return fmt.Errorf("read %s's prototype from kernel BTF: %w", btfLoadFunc, err)
	}
	for name, v := range map[string]any{
		"wakeup_bytes":        uint64(ringSize / 8),
		"log_scan_max":        uint32(scanMax),
		"prog_load_arg_slots": progSlots,
		"btf_load_arg_slots":  btfSlots,
		"log_tail_bytes":      min(opts.LogTailBytes, MaxLogTailBytes),
		"log_rotating":        boolUint32(rotating),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

func boolUint32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// ringBufferSize rounds n up to a power of two of at least one page.
func ringBufferSize(n int) uint32 {
	if n <= 0 {
		n = DefaultRingBufferBytes
	}
	size := os.Getpagesize()
	for size < n {
		size <<= 1
	}
	return uint32(size)
}

// probeLogTrueSize asks the kernel for a log size with a size query (NULL
// buffer, size 0, level 1): kernels that write log_true_size (6.4+) answer
// with it; older ones reject the query with EINVAL.
func probeLogTrueSize() bool {
	// r0 = 0; exit. Every register and offset byte is zero, so these bytes
	// mean the same in either byte order.
	insns := [16]byte{0: 0xb7, 8: 0x95}
	license := [4]byte{'G', 'P', 'L'}
	attr := ProgLoadAttr{
		ProgType: uint32(ebpf.SocketFilter),
		InsnCnt:  2,
		Insns:    uint64(uintptr(unsafe.Pointer(&insns[0]))),
		License:  uint64(uintptr(unsafe.Pointer(&license[0]))),
		LogLevel: LogLevel1,
	}
	copy(attr.ProgName[:], "vlog_probe")
	var fd uintptr
	var errno unix.Errno
	for range 5 { // a pending signal makes the verifier answer EAGAIN
		fd, _, errno = unix.Syscall(unix.SYS_BPF, uintptr(CmdProgLoad), uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno != unix.EAGAIN {
			break
		}
	}
	runtime.KeepAlive(&insns)
	runtime.KeepAlive(&license)
	if errno != 0 {
		return false
	}
	unix.Close(int(fd))
	return attr.LogTrueSize > 0
}

// ProgramStats is the kernel's account of one attached program's runs.
type ProgramStats struct {
	Hook     string // e.g. "tracepoint/syscalls/sys_exit_bpf"
	RunCount uint64
	// RunTime is the time spent in the program. The kernel counts it only
	// while BPF stats are enabled (ebpf.EnableStats, sysctl
	// kernel.bpf_stats_enabled), which itself costs every run two clock
	// reads.
	RunTime time.Duration
	// Misses are runs the kernel skipped because a BPF program was
	// already running on that CPU.
	Misses uint64
}

// ProgramStats returns the run counts and times of the attached programs,
// in attach order.
func (t *Tracer) ProgramStats() ([]ProgramStats, error) {
	if t.hooks == nil {
		return nil, errors.New("tracer not attached")
	}
	out := make([]ProgramStats, 0, len(t.hooks.hooks))
	for _, h := range t.hooks.hooks {
		s, err := ReadProgramStats(h.what, h.prog)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// ReadProgramStats reads the kernel's account of program p attached to
// hook (shared with the benchmark's empty floor programs).
func ReadProgramStats(hook string, p *ebpf.Program) (ProgramStats, error) {
	s, err := p.Stats()
	if err != nil {
		return ProgramStats{}, fmt.Errorf("stats of %s: %w", hook, err)
	}
	return ProgramStats{Hook: hook, RunCount: s.RunCount, RunTime: s.Runtime, Misses: s.RecursionMisses}, nil
}
