// Package bench measures what the exporter costs the node, side by side
// with the physical limit of its hooks: the same syscalls with no tracer,
// with empty programs on the same hooks (the floor, bpf/floor.c), and with
// the exporter's own programs and user-space pipeline, in alternating
// rounds so that drift hits every configuration alike. cmd/bench runs it
// and prints BENCHMARKS.md's tables.
package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/otel"
	"github.com/verifierlog/exporter/tracer"
)

// Setup is one configuration of the node.
type Setup string

const (
	NoTracer Setup = "no tracer"
	Floor    Setup = "empty programs (floor)"
	Exporter Setup = "exporter"
)

// Setups in the order a round starts with; each round rotates it.
var Setups = []Setup{NoTracer, Floor, Exporter}

// Op is one operation whose cost is measured.
type Op struct {
	Name string
	run  func() error
}

// Ops returns the measured operations: a bpf(2) call that is not a load
// (a map lookup, the hot path of agents like Cilium), an unrelated syscall,
// and a small program load. close frees the map.
func Ops() (ops []Op, close func(), err error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, nil, fmt.Errorf("create map: %w", err)
	}
	key, value := new(uint32), new(uint64)
	attr := make([]byte, 32) // map_fd, pad, key, value, flags
	binary.NativeEndian.PutUint32(attr[0:], uint32(m.FD()))
	binary.NativeEndian.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(key))))
	binary.NativeEndian.PutUint64(attr[16:], uint64(uintptr(unsafe.Pointer(value))))
	const bpfMapLookupElem = 1
	ops = []Op{
		{"bpf(BPF_MAP_LOOKUP_ELEM)", func() error {
			_, _, errno := unix.Syscall(unix.SYS_BPF, bpfMapLookupElem, uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
			runtime.KeepAlive(key)
			runtime.KeepAlive(value)
			if errno != 0 {
				return errno
			}
			return nil
		}},
		{"getpid()", func() error {
			unix.Syscall(unix.SYS_GETPID, 0, 0, 0)
			return nil
		}},
		{"bpf(BPF_PROG_LOAD), 2 insns, log off", func() error {
			r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlbench"})
			// The kernel answers EAGAIN to about one load in 20,000 here;
			// that attempt costs what it costs, like any other.
			if err == nil && !r.OK() && r.Errno != unix.EAGAIN {
				err = r.Errno
			}
			return err
		}},
	}
	return ops, func() { m.Close() }, nil
}

// Iterations per op and round: enough for stable medians, few enough
// that a run of every setup and op stays near a minute.
var Iterations = map[string]int{
	"bpf(BPF_MAP_LOOKUP_ELEM)":             200_000,
	"getpid()":                             400_000,
	"bpf(BPF_PROG_LOAD), 2 insns, log off": 3_000,
}

// measure returns ns per call of op over n calls on one locked thread.
func measure(op Op, n int) (float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for range n / 20 { // warm
		if err := op.run(); err != nil {
			return 0, fmt.Errorf("%s: %w", op.Name, err)
		}
	}
	start := time.Now()
	for range n {
		if err := op.run(); err != nil {
			return 0, fmt.Errorf("%s: %w", op.Name, err)
		}
	}
	return float64(time.Since(start).Nanoseconds()) / float64(n), nil
}

// attach brings the node into setup s in attach mode mode.
func attach(s Setup, mode tracer.AttachMode) (io.Closer, error) {
	switch s {
	case NoTracer:
		return io.NopCloser(nil), nil
	case Floor:
		return attachFloor(mode)
	case Exporter:
		return attachExporter(mode)
	}
	return nil, fmt.Errorf("unknown setup %q", s)
}

type closers []io.Closer

func (c closers) Close() error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		errs = append(errs, c[i].Close())
	}
	return errors.Join(errs...)
}

func attachFloor(mode tracer.AttachMode) (io.Closer, error) {
	spec, err := loadFloor()
	if err != nil {
		return nil, err
	}
	// Load only this mode's programs: the others may not load here.
	var exit, enter *ebpf.Program
	var attachExit, attachEnter func(*ebpf.Program) (link.Link, error)
	load := func(exitName, enterName string) error {
		var p struct {
			Exit  *ebpf.Program `ebpf:"exit"`
			Enter *ebpf.Program `ebpf:"enter"`
		}
		spec.Programs["exit"], spec.Programs["enter"] = spec.Programs[exitName], spec.Programs[enterName]
		delete(spec.Programs, exitName)
		delete(spec.Programs, enterName)
		if err := spec.LoadAndAssign(&p, nil); err != nil {
			return fmt.Errorf("load floor programs: %w", err)
		}
		exit, enter = p.Exit, p.Enter
		return nil
	}
	switch mode {
	case tracer.AttachTracepoint:
		err = load("floor_exit_bpf", "floor_enter_bpf")
		attachExit = func(p *ebpf.Program) (link.Link, error) { return link.Tracepoint("syscalls", "sys_exit_bpf", p, nil) }
		attachEnter = func(p *ebpf.Program) (link.Link, error) { return link.Tracepoint("syscalls", "sys_enter_bpf", p, nil) }
	case tracer.AttachFentry:
		err = load("floor_fexit_prog_load", "floor_fentry_prog_load")
		tracing := func(p *ebpf.Program) (link.Link, error) { return link.AttachTracing(link.TracingOptions{Program: p}) }
		attachExit, attachEnter = tracing, tracing
	case tracer.AttachKprobe:
		err = load("floor_kretprobe_prog_load", "floor_kprobe_prog_load")
		attachExit = func(p *ebpf.Program) (link.Link, error) { return link.Kretprobe("bpf_prog_load", p, nil) }
		attachEnter = func(p *ebpf.Program) (link.Link, error) { return link.Kprobe("bpf_prog_load", p, nil) }
	default:
		return nil, fmt.Errorf("floor: no mode %q", mode)
	}
	if err != nil {
		return nil, err
	}
	cs := closers{exit, enter}
	for _, a := range []struct {
		p      *ebpf.Program
		attach func(*ebpf.Program) (link.Link, error)
	}{{exit, attachExit}, {enter, attachEnter}} {
		l, err := a.attach(a.p)
		if err != nil {
			cs.Close()
			return nil, fmt.Errorf("attach floor program: %w", err)
		}
		cs = append(cs, l)
	}
	return cs, nil
}

// exporterSetup is the tracer and the metrics pipeline, as `exporter`
// serve runs them (Prometheus registry, no OTLP).
type exporterSetup struct {
	tr     *tracer.Tracer
	tel    *otel.Telemetry
	cancel context.CancelFunc
	done   chan error
}

func attachExporter(mode tracer.AttachMode) (io.Closer, error) {
	tr, err := tracer.New(tracer.Options{Attach: mode})
	if err != nil {
		return nil, err
	}
	tel, err := otel.Setup(context.Background(), otel.ReadBuildInfo("bench"))
	if err != nil {
		tr.Close()
		return nil, err
	}
	pipe, err := otel.New(otel.Config{MeterProvider: tel.MeterProvider, Recorder: tel.Recorder, Clock: tr.Clock(), Source: tr})
	if err != nil {
		tr.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &exporterSetup{tr: tr, tel: tel, cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- tr.Run(ctx, pipe.Handle) }()
	return e, nil
}

func (e *exporterSetup) Close() error {
	e.cancel()
	err := <-e.done
	return errors.Join(err, e.tel.Shutdown(context.Background()), e.tr.Close())
}

// Result is the median ns/op of each setup for one op.
type Result struct {
	Op      string
	NsPerOp map[Setup]float64
	// Rounds are every round's figures, for the spread.
	Rounds map[Setup][]float64
}

// Added is what setup s adds to the op over no tracer.
func (r Result) Added(s Setup) float64 { return r.NsPerOp[s] - r.NsPerOp[NoTracer] }

// Ratio is the exporter's added cost over the floor's.
func (r Result) Ratio() float64 {
	floor := r.Added(Floor)
	if floor <= 0 {
		return 0
	}
	return r.Added(Exporter) / floor
}

// Syscalls measures every op in every setup for rounds rounds, rotating
// the setups' order each round, and returns the medians.
func Syscalls(mode tracer.AttachMode, rounds int, progress io.Writer) ([]Result, error) {
	ops, closeOps, err := Ops()
	if err != nil {
		return nil, err
	}
	defer closeOps()
	results := make([]Result, len(ops))
	for i, op := range ops {
		results[i] = Result{Op: op.Name, NsPerOp: map[Setup]float64{}, Rounds: map[Setup][]float64{}}
	}
	for round := range rounds {
		for k := range Setups {
			s := Setups[(k+round)%len(Setups)]
			c, err := attach(s, mode)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s, err)
			}
			for i, op := range ops {
				ns, err := measure(op, Iterations[op.Name])
				if err != nil {
					c.Close()
					return nil, err
				}
				results[i].Rounds[s] = append(results[i].Rounds[s], ns)
			}
			if err := c.Close(); err != nil {
				return nil, fmt.Errorf("detach %s: %w", s, err)
			}
		}
		fmt.Fprintf(progress, "round %d/%d done\n", round+1, rounds)
	}
	for i := range results {
		for s, v := range results[i].Rounds {
			results[i].NsPerOp[s] = median(v)
		}
	}
	return results, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
