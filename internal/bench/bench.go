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
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
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
	// FloorExitOnly is one empty program on the exit hook alone: the least
	// any single-program design (one sys_exit_bpf program reading the
	// syscall's arguments from the saved registers) could cost.
	FloorExitOnly Setup = "one empty exit program"
	Exporter      Setup = "exporter"
	// ExporterCompat is the exporter with its compat program variant (a
	// thread-keyed hash for loads in flight, a bounded log scan), which
	// auto picks where the kernel lacks what the modern one needs.
	ExporterCompat Setup = "exporter, compat programs"
)

// SetupsFor lists the setups measured in mode, in the order a round starts
// with; each round rotates it. The one-program floor exists only for
// tracepoints, where the enter hook fires for every bpf(2) command.
func SetupsFor(mode tracer.AttachMode) []Setup {
	if mode == tracer.AttachTracepoint {
		return []Setup{NoTracer, Floor, FloorExitOnly, Exporter, ExporterCompat}
	}
	return []Setup{NoTracer, Floor, Exporter, ExporterCompat}
}

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
			// The kernel answers an occasional load with EAGAIN; that
			// attempt costs what it costs, like any other.
			if err == nil && !r.OK() && r.Errno != unix.EAGAIN {
				err = r.Errno
			}
			return err
		}},
	}
	return ops, func() { m.Close() }, nil
}

// Iterations per op in one slice (times BENCHMARKS.md's ns/op, the slice's
// length). The setups take turns slice by slice, so that the machine's
// drift, which on a shared VM moves a syscall's cost by up to a third over
// hundreds of milliseconds (BENCHMARKS.md), hits each setup alike; the time
// the kernel takes to attach and detach a setup (Syscalls reports it) sets
// how close together the slices can be.
var Iterations = map[string]int{
	"bpf(BPF_MAP_LOOKUP_ELEM)":             8_000,
	"getpid()":                             40_000,
	"bpf(BPF_PROG_LOAD), 2 insns, log off": 300,
}

// measure returns ns per call of op over n calls on one locked thread,
// pinned to the last CPU, with every other thread of this process (the
// in-process exporter's included) kept off that CPU: the figures are the
// syscall path's cost, the exporter's own CPU time is the storm's.
func measure(op Op, n int) (float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if restore, err := isolate(); err == nil {
		defer restore()
	}
	for range warmCalls(n) {
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

// warmCalls is how many untimed calls measure makes before it times n:
// the first calls after an attach run on cold caches.
func warmCalls(n int) int { return n / 10 }

// prepared is one setup of the node, loaded once per loading and attached
// for each slice, so that its programs stay where they landed in kernel
// memory for the whole loading.
type prepared interface {
	io.Closer
	attach() error
	detach() error
	// stats are the run counts and times of the setup's programs.
	stats() ([]tracer.ProgramStats, error)
}

type noTracer struct{}

func (noTracer) attach() error                         { return nil }
func (noTracer) detach() error                         { return nil }
func (noTracer) Close() error                          { return nil }
func (noTracer) stats() ([]tracer.ProgramStats, error) { return nil, nil }

// settle lets the setups reach their steady state before they are timed:
// the exporter's start (kernel BTF parsing, SDK setup) leaves garbage whose
// collection would otherwise run, on a sibling CPU, during the first
// measurements, and its attach grace must pass.
func settle() {
	runtime.GC()
	time.Sleep(100 * time.Millisecond)
}

// isolate pins the calling thread to the last CPU it may run on and every
// other thread of the process to the rest, and returns what undoes it. With
// one CPU it pins nothing.
func isolate() (restore func(), err error) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		return nil, err
	}
	if all.Count() < 2 {
		return func() {}, nil
	}
	last := 0
	for cpu := range 1024 {
		if all.IsSet(cpu) {
			last = cpu
		}
	}
	var mine, rest unix.CPUSet
	mine.Set(last)
	rest = all
	rest.Clear(last)
	self := unix.Gettid()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var others []int
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil && tid != self {
			if unix.SchedSetaffinity(tid, &rest) == nil {
				others = append(others, tid)
			}
		}
	}
	if err := unix.SchedSetaffinity(0, &mine); err != nil {
		return nil, err
	}
	return func() {
		unix.SchedSetaffinity(0, &all)
		for _, tid := range others {
			unix.SchedSetaffinity(tid, &all)
		}
	}, nil
}

// prepare loads setup s in attach mode mode, detached.
func prepare(s Setup, mode tracer.AttachMode) (prepared, error) {
	switch s {
	case NoTracer:
		return noTracer{}, nil
	case Floor:
		return loadFloorSetup(mode, false)
	case FloorExitOnly:
		return loadFloorSetup(mode, true)
	case Exporter:
		return startExporter(mode, tracer.VariantAuto)
	case ExporterCompat:
		return startExporter(mode, tracer.VariantCompat)
	}
	return nil, fmt.Errorf("unknown setup %q", s)
}

// prepareAll prepares every setup of mode, closing them all on failure.
func prepareAll(mode tracer.AttachMode) (map[Setup]prepared, func(), error) {
	all := map[Setup]prepared{}
	closeAll := func() {
		for _, p := range all {
			p.Close()
		}
	}
	for _, s := range SetupsFor(mode) {
		p, err := prepare(s, mode)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("%s: %w", s, err)
		}
		all[s] = p
	}
	return all, closeAll, nil
}

type closers []io.Closer

func (c closers) Close() error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		errs = append(errs, c[i].Close())
	}
	return errors.Join(errs...)
}

// floorSetup is the empty programs and, while attached, their links.
type floorSetup struct {
	hooks []floorHook
	links closers
}

type floorHook struct {
	prog   *ebpf.Program
	what   string // e.g. "tracepoint/syscalls/sys_exit_bpf"
	attach func(*ebpf.Program) (link.Link, error)
}

func (f *floorSetup) attach() error {
	for _, h := range f.hooks {
		l, err := h.attach(h.prog)
		if err != nil {
			f.detach()
			return fmt.Errorf("attach floor program on %s: %w", h.what, err)
		}
		f.links = append(f.links, l)
	}
	return nil
}

func (f *floorSetup) detach() error {
	err := f.links.Close()
	f.links = nil
	return err
}

func (f *floorSetup) Close() error {
	errs := []error{f.detach()}
	for _, h := range f.hooks {
		errs = append(errs, h.prog.Close())
	}
	return errors.Join(errs...)
}

func (f *floorSetup) stats() ([]tracer.ProgramStats, error) {
	var out []tracer.ProgramStats
	for _, h := range f.hooks {
		s, err := tracer.ReadProgramStats("floor "+h.what, h.prog)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func loadFloorSetup(mode tracer.AttachMode, exitOnly bool) (*floorSetup, error) {
	if exitOnly && mode != tracer.AttachTracepoint {
		return nil, fmt.Errorf("floor: one exit program only in tracepoint mode, not %q", mode)
	}
	spec, err := loadFloor()
	if err != nil {
		return nil, err
	}
	// Load only this mode's programs: the others may not load here.
	var exit, enter *ebpf.Program
	var exitHook, enterHook string
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
		exitHook, enterHook = "tracepoint/syscalls/sys_exit_bpf", "tracepoint/syscalls/sys_enter_bpf"
		attachExit = func(p *ebpf.Program) (link.Link, error) { return link.Tracepoint("syscalls", "sys_exit_bpf", p, nil) }
		attachEnter = func(p *ebpf.Program) (link.Link, error) { return link.Tracepoint("syscalls", "sys_enter_bpf", p, nil) }
	case tracer.AttachFentry:
		err = load("floor_fexit_prog_load", "floor_fentry_prog_load")
		exitHook, enterHook = "fexit/bpf_prog_load", "fentry/bpf_prog_load"
		tracing := func(p *ebpf.Program) (link.Link, error) { return link.AttachTracing(link.TracingOptions{Program: p}) }
		attachExit, attachEnter = tracing, tracing
	case tracer.AttachKprobe:
		err = load("floor_kretprobe_prog_load", "floor_kprobe_prog_load")
		exitHook, enterHook = "kretprobe/bpf_prog_load", "kprobe/bpf_prog_load"
		attachExit = func(p *ebpf.Program) (link.Link, error) { return link.Kretprobe("bpf_prog_load", p, nil) }
		attachEnter = func(p *ebpf.Program) (link.Link, error) { return link.Kprobe("bpf_prog_load", p, nil) }
	default:
		return nil, fmt.Errorf("floor: no mode %q", mode)
	}
	if err != nil {
		return nil, err
	}
	f := &floorSetup{hooks: []floorHook{{exit, exitHook, attachExit}, {enter, enterHook, attachEnter}}}
	if exitOnly {
		enter.Close()
		f.hooks = f.hooks[:1]
	}
	return f, nil
}

// exporterSetup is the tracer and the metrics pipeline, as `exporter`
// serve runs them (Prometheus registry, no OTLP), consuming every record
// for the whole run; between its slices the tracer is suspended.
type exporterSetup struct {
	tr     *tracer.Tracer
	tel    *otel.Telemetry
	cancel context.CancelFunc
	done   chan error
}

func (e *exporterSetup) stats() ([]tracer.ProgramStats, error) { return e.tr.ProgramStats() }
func (e *exporterSetup) attach() error                         { return e.tr.Resume() }
func (e *exporterSetup) detach() error                         { return e.tr.Suspend() }

func startExporter(mode tracer.AttachMode, variant tracer.Variant) (*exporterSetup, error) {
	// The steady state: a long-running exporter is past its attach grace,
	// so the tracepoint exit hook takes its fast path for non-loads.
	tr, err := tracer.New(tracer.Options{Attach: mode, Variant: variant, AttachGrace: time.Nanosecond})
	if err != nil {
		return nil, err
	}
	if err := tr.Suspend(); err != nil {
		tr.Close()
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

// Result is one op's figures over every round of every loading.
type Result struct {
	Op string
	// NsPerOp is each setup's median over all rounds.
	NsPerOp map[Setup]float64
	// Rounds are every round's figures, for the spread.
	Rounds map[Setup][]float64
	// ExporterOverFloor is, for each loading of the setups, the median over
	// its rounds of the exporter's figure minus the floor's in the same
	// round. Where a program's code and data land in kernel memory is
	// fixed for a loading and moves the cost of a call by tens of ns, so
	// the spread of these says how far the ratio can be trusted.
	ExporterOverFloor []float64
	// FloorOverNoTracer is the median over all rounds of the floor's figure
	// minus no tracer's in the same round.
	FloorOverNoTracer float64
}

// Added is what setup s adds to the op over no tracer (medians).
func (r Result) Added(s Setup) float64 { return r.NsPerOp[s] - r.NsPerOp[NoTracer] }

// Ratio is the exporter's added cost over the floor's in figures (such as
// NsPerOp), 0 where the floor adds nothing.
func Ratio(figures map[Setup]float64) float64 {
	floor := figures[Floor] - figures[NoTracer]
	if floor <= 0 {
		return 0
	}
	return (figures[Exporter] - figures[NoTracer]) / floor
}

// PairedRatio is the exporter's added cost over the floor's from the
// paired differences: 1 + mean(ExporterOverFloor) / FloorOverNoTracer,
// with a 95% confidence interval over the loadings (normal approximation;
// lo == hi == ratio with fewer than two). ok is false where the floor adds
// nothing.
func (r Result) PairedRatio() (ratio, lo, hi float64, ok bool) {
	if r.FloorOverNoTracer <= 0 || len(r.ExporterOverFloor) == 0 {
		return 0, 0, 0, false
	}
	n := float64(len(r.ExporterOverFloor))
	var sum, sq float64
	for _, d := range r.ExporterOverFloor {
		sum += d
	}
	mean := sum / n
	for _, d := range r.ExporterOverFloor {
		sq += (d - mean) * (d - mean)
	}
	half := 0.0
	if n > 1 {
		half = 1.96 * math.Sqrt(sq/(n-1)) / math.Sqrt(n)
	}
	ratio = 1 + mean/r.FloorOverNoTracer
	return ratio, ratio - half/r.FloorOverNoTracer, ratio + half/r.FloorOverNoTracer, true
}

// Syscalls loads every setup of mode loads times; each time it measures
// rounds rounds, in each of which every setup is attached in turn, in an
// order shuffled each round, for one slice of every op's calls. switching
// is the median time to attach and then detach a setup with programs.
func Syscalls(mode tracer.AttachMode, loads, rounds int, progress io.Writer) (results []Result, switching time.Duration, err error) {
	ops, closeOps, err := Ops()
	if err != nil {
		return nil, 0, err
	}
	defer closeOps()
	setups := SetupsFor(mode)
	results = make([]Result, len(ops))
	for i, op := range ops {
		results[i] = Result{Op: op.Name, NsPerOp: map[Setup]float64{}, Rounds: map[Setup][]float64{}}
	}
	var switches []float64
	// A fresh order each round: with a rotation, each setup would always
	// follow the same one, and what one setup leaves behind (cold caches, a
	// kernel's deferred work) would always land on the same next one.
	order := rand.New(rand.NewPCG(1, 2))
	for load := range loads {
		first := len(results[0].Rounds[NoTracer])
		if err := loadAndMeasure(mode, rounds, ops, setups, order, results, &switches); err != nil {
			return nil, 0, err
		}
		for i := range results {
			exp, floor := results[i].Rounds[Exporter][first:], results[i].Rounds[Floor][first:]
			results[i].ExporterOverFloor = append(results[i].ExporterOverFloor, median(differences(exp, floor)))
		}
		if progress != nil {
			fmt.Fprintf(progress, "loading %d/%d: %d rounds done\n", load+1, loads, rounds)
		}
	}
	for i := range results {
		for s, v := range results[i].Rounds {
			results[i].NsPerOp[s] = median(v)
		}
		results[i].FloorOverNoTracer = median(differences(results[i].Rounds[Floor], results[i].Rounds[NoTracer]))
	}
	return results, time.Duration(median(switches)), nil
}

// loadAndMeasure prepares the setups, appends rounds rounds of slices to
// results and the attach plus detach time (ns) of each setup with programs
// to switches, and closes the setups.
func loadAndMeasure(mode tracer.AttachMode, rounds int, ops []Op, setups []Setup, order *rand.Rand, results []Result, switches *[]float64) error {
	all, closeAll, err := prepareAll(mode)
	if err != nil {
		return err
	}
	defer closeAll()
	settle()
	for range rounds {
		for _, k := range order.Perm(len(setups)) {
			s := setups[k]
			ns, switching, err := slice(all[s], ops)
			if err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
			if s != NoTracer {
				*switches = append(*switches, float64(switching))
			}
			for i := range ops {
				results[i].Rounds[s] = append(results[i].Rounds[s], ns[i])
			}
		}
	}
	return nil
}

func differences(a, b []float64) []float64 {
	d := make([]float64, len(a))
	for i := range a {
		d[i] = a[i] - b[i]
	}
	return d
}

// slice attaches p, times one slice of each op, and detaches p; switching
// is how long the attach and the detach took together.
func slice(p prepared, ops []Op) (ns []float64, switching time.Duration, err error) {
	start := time.Now()
	if err := p.attach(); err != nil {
		return nil, 0, err
	}
	switching = time.Since(start)
	ns = make([]float64, len(ops))
	for i, op := range ops {
		if ns[i], err = measure(op, Iterations[op.Name]); err != nil {
			p.detach()
			return nil, 0, err
		}
	}
	start = time.Now()
	err = p.detach()
	return ns, switching + time.Since(start), err
}

// ProgramTime is the time the kernel spent in one setup's BPF programs per
// call of one op, from the kernel's own BPF run-time statistics.
type ProgramTime struct {
	Op    string
	Setup Setup
	// Runs is program runs per call (2 for a bpf(2) call with both hooks).
	Runs float64
	// Ns is ns in the programs per call. It includes the stats' own
	// clock reads, alike for every program: compare setups, not absolute
	// figures.
	Ns float64
}

// ProgramTimes enables the kernel's BPF run-time statistics and measures,
// for every setup with programs, the program runs and time per call of each
// op: the median over loads loadings of the setups. Unlike ns/op, these
// figures barely move with the machine's noise: they say what the
// exporter's programs cost over empty ones.
func ProgramTimes(mode tracer.AttachMode, loads int) ([]ProgramTime, error) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF stats: %w", err)
	}
	defer stats.Close()
	ops, closeOps, err := Ops()
	if err != nil {
		return nil, err
	}
	defer closeOps()
	type key struct {
		op    string
		setup Setup
	}
	runs, ns := map[key][]float64{}, map[key][]float64{}
	for range loads {
		if err := loadAndTimePrograms(mode, ops, func(pt ProgramTime) {
			k := key{pt.Op, pt.Setup}
			runs[k], ns[k] = append(runs[k], pt.Runs), append(ns[k], pt.Ns)
		}); err != nil {
			return nil, err
		}
	}
	var out []ProgramTime
	for _, s := range SetupsFor(mode) {
		for _, op := range ops {
			if k := (key{op.Name, s}); len(ns[k]) > 0 {
				out = append(out, ProgramTime{Op: op.Name, Setup: s, Runs: median(runs[k]), Ns: median(ns[k])})
			}
		}
	}
	return out, nil
}

// loadAndTimePrograms prepares the setups and hands each setup's program
// time for each op to add.
func loadAndTimePrograms(mode tracer.AttachMode, ops []Op, add func(ProgramTime)) error {
	all, closeAll, err := prepareAll(mode)
	if err != nil {
		return err
	}
	defer closeAll()
	settle()
	for _, s := range SetupsFor(mode) {
		if s == NoTracer {
			continue
		}
		c := all[s]
		if err := c.attach(); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		for _, op := range ops {
			n := 5 * Iterations[op.Name]
			before, err := c.stats()
			if err == nil {
				_, err = measure(op, n)
			}
			var after []tracer.ProgramStats
			if err == nil {
				after, err = c.stats()
			}
			if err != nil {
				c.detach()
				return err
			}
			pt := ProgramTime{Op: op.Name, Setup: s}
			calls := float64(n + warmCalls(n))
			for i := range after {
				pt.Runs += float64(after[i].RunCount-before[i].RunCount) / calls
				pt.Ns += float64(after[i].RunTime-before[i].RunTime) / calls
			}
			add(pt)
		}
		if err := c.detach(); err != nil {
			return fmt.Errorf("detach %s: %w", s, err)
		}
	}
	return nil
}

// Quantile is the q-quantile of v (0 <= q <= 1), linearly interpolated.
func Quantile(v []float64, q float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	pos := q * float64(len(s)-1)
	i := int(pos)
	if i+1 >= len(s) {
		return s[len(s)-1]
	}
	return s[i] + (pos-float64(i))*(s[i+1]-s[i])
}

func median(v []float64) float64 { return Quantile(v, 0.5) }
