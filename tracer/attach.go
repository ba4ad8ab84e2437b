package tracer

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// AttachMode names a set of kernel hooks.
type AttachMode string

const (
	// AttachAuto tries the cheapest hooks first: fentry, kprobe, tracepoint.
	AttachAuto AttachMode = "auto"
	// AttachFentry: fentry + fexit on bpf_prog_load and btf_new_fd (BTF
	// trampolines, most distribution kernels >= 5.5). Touches only loads.
	AttachFentry AttachMode = "fentry"
	// AttachKprobe: kprobe + kretprobe on the same functions
	// (CONFIG_KPROBES). Touches only loads.
	AttachKprobe AttachMode = "kprobe"
	// AttachTracepoint: syscalls/sys_enter_bpf + sys_exit_bpf. Works on
	// every kernel with syscall tracepoints, but fires on every bpf(2) call
	// and puts every task on the slower syscall path while attached.
	AttachTracepoint AttachMode = "tracepoint"
)

// autoOrder is the order AttachAuto tries, cheapest first.
var autoOrder = []AttachMode{AttachFentry, AttachKprobe, AttachTracepoint}

// ParseAttachMode accepts auto, fentry, kprobe or tracepoint.
func ParseAttachMode(s string) (AttachMode, error) {
	switch m := AttachMode(s); m {
	case AttachAuto, AttachFentry, AttachKprobe, AttachTracepoint:
		return m, nil
	}
	return "", fmt.Errorf("unknown attach mode %q: want auto, fentry, kprobe or tracepoint", s)
}

// Attempt is one attach mode tried, and why it failed (Err nil: chosen).
type Attempt struct {
	Mode AttachMode
	Err  error
}

// KretprobeMaxActive is how many loads at once the kprobe mode's
// kretprobes follow. Setting it needs the tracefs kprobe_events interface
// (writable tracefs); where that fails, the kernel's default applies.
// Linux caps it at 4096.
const KretprobeMaxActive = 4096

// attached holds one mode's programs and links, links in attach order.
type attached struct {
	mode  AttachMode
	hooks []hook // nil once detached
	links []link.Link
	controls
	// notes say where the mode runs with less than it asked for.
	notes []string
	// linkedBefore: the hooks were attached once (Suspend and Resume).
	linkedBefore bool
}

// controls are the programs' global variables Go reads or sets while they
// run (bpf/verifierlog.c, .bss and .data.control), the same in every mode.
type controls struct {
	// AttachGrace is count_loads_begun_before_attach: read by the
	// tracepoint exit hook only, cleared after Options.AttachGrace.
	AttachGrace *ebpf.Variable `ebpf:"count_loads_begun_before_attach"`
	// LoadsInFlight is read by tests.
	LoadsInFlight *ebpf.Variable `ebpf:"loads_in_flight"`
	// Detaching tells the exit hooks that the enter hooks are going.
	Detaching *ebpf.Variable `ebpf:"detaching"`
}

// detach closes the links in reverse order (enter hooks before exit hooks,
// so that loads in flight still reach an exit hook) and the programs.
func (a *attached) detach() error {
	errs := []error{a.unlink()}
	for _, h := range a.hooks {
		errs = append(errs, h.prog.Close())
	}
	a.hooks = nil
	return errors.Join(errs...)
}

// unlink closes the links in reverse order and keeps the programs.
func (a *attached) unlink() error {
	var errs []error
	if a.Detaching != nil {
		// Fails only where maps cannot be memory-mapped (before 5.5): the
		// loads begun while detaching are then counted as inflight_missing.
		_ = a.Detaching.Set(uint32(1))
	}
	for i := len(a.links) - 1; i >= 0; i-- {
		errs = append(errs, a.links[i].Close())
	}
	a.links = nil
	return errors.Join(errs...)
}

// link attaches the hooks in order, exit hooks first: a load that began
// before its enter hook was attached is then counted (no in-flight entry)
// instead of leaving a stale entry.
func (a *attached) link() error {
	if a.hooks == nil {
		return errors.New("tracer: hooks already detached and their programs closed")
	}
	if a.Detaching != nil {
		_ = a.Detaching.Set(uint32(0))
	}
	for _, h := range a.hooks {
		l, err := h.attach(h.prog)
		if err != nil {
			_ = a.unlink()
			if a.linkedBefore && a.mode == AttachFentry && errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("%s: attach %s again: %w (a detached fentry program cannot be attached again before Linux 5.11)", a.mode, h.what, err)
			}
			return fmt.Errorf("%s: attach %s: %w", a.mode, h.what, explainAttachError(a.mode, err))
		}
		a.links = append(a.links, l)
	}
	a.linkedBefore = true
	return nil
}

type hook struct {
	prog   *ebpf.Program
	what   string // e.g. "tracepoint/syscalls/sys_exit_bpf"
	attach func(*ebpf.Program) (link.Link, error)
}

// attachHooks loads nothing: it attaches the loaded programs of hooks.
func attachHooks(mode AttachMode, hooks []hook, c controls) (*attached, error) {
	a := &attached{mode: mode, hooks: hooks, controls: c}
	if err := a.link(); err != nil {
		_ = a.detach()
		return nil, err
	}
	return a, nil
}

func loadAndAttach(mode AttachMode, spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) (*attached, error) {
	switch mode {
	case AttachFentry:
		var p struct {
			FexitProgLoad  *ebpf.Program `ebpf:"fexit_prog_load"`
			FentryProgLoad *ebpf.Program `ebpf:"fentry_prog_load"`
			FexitBTFLoad   *ebpf.Program `ebpf:"fexit_btf_load"`
			FentryBTFLoad  *ebpf.Program `ebpf:"fentry_btf_load"`
			controls
		}
		if err := spec.LoadAndAssign(&p, opts); err != nil {
			return nil, fmt.Errorf("fentry: load programs: %w", explainAttachError(mode, err))
		}
		tracing := func(p *ebpf.Program) (link.Link, error) {
			return link.AttachTracing(link.TracingOptions{Program: p})
		}
		return attachHooks(mode, []hook{
			{p.FexitProgLoad, "fexit/" + progLoadFunc, tracing},
			{p.FentryProgLoad, "fentry/" + progLoadFunc, tracing},
			{p.FexitBTFLoad, "fexit/" + btfLoadFunc, tracing},
			{p.FentryBTFLoad, "fentry/" + btfLoadFunc, tracing},
		}, p.controls)
	case AttachKprobe:
		var p struct {
			KretprobeProgLoad *ebpf.Program `ebpf:"kretprobe_prog_load"`
			KprobeProgLoad    *ebpf.Program `ebpf:"kprobe_prog_load"`
			KretprobeBTFLoad  *ebpf.Program `ebpf:"kretprobe_btf_load"`
			KprobeBTFLoad     *ebpf.Program `ebpf:"kprobe_btf_load"`
			controls
		}
		if err := spec.LoadAndAssign(&p, opts); err != nil {
			return nil, fmt.Errorf("kprobe: load programs: %w", explainAttachError(mode, err))
		}
		kprobe := func(fn string) func(*ebpf.Program) (link.Link, error) {
			return func(p *ebpf.Program) (link.Link, error) { return link.Kprobe(fn, p, nil) }
		}
		// kprobe_events, which RetprobeMaxActive needs, is in tracefs.
		_ = ensureTracefs()
		var notes []string
		kretprobe := func(fn string) func(*ebpf.Program) (link.Link, error) {
			return func(p *ebpf.Program) (link.Link, error) {
				// The kernel's default of max(10, 2 x CPUs) concurrent
				// instances would drop the exits of loads beyond it.
				l, err := link.Kretprobe(fn, p, &link.KprobeOptions{RetprobeMaxActive: KretprobeMaxActive})
				if err == nil {
					return l, nil
				}
				notes = append(notes, fmt.Sprintf("kretprobe on %s: the kernel's default maxactive (max(10, 2 x CPUs) loads at once), not %d: %v; exits beyond it are counted as %s where the kernel reports them (6.8+)",
					fn, KretprobeMaxActive, err, LostKretprobeMissed))
				return link.Kretprobe(fn, p, nil)
			}
		}
		a, err := attachHooks(mode, []hook{
			{p.KretprobeProgLoad, "kretprobe/" + progLoadFunc, kretprobe(progLoadFunc)},
			{p.KprobeProgLoad, "kprobe/" + progLoadFunc, kprobe(progLoadFunc)},
			{p.KretprobeBTFLoad, "kretprobe/" + btfLoadFunc, kretprobe(btfLoadFunc)},
			{p.KprobeBTFLoad, "kprobe/" + btfLoadFunc, kprobe(btfLoadFunc)},
		}, p.controls)
		if err != nil {
			return nil, err
		}
		a.notes = notes
		return a, nil
	case AttachTracepoint:
		if err := ensureTracefs(); err != nil {
			return nil, fmt.Errorf("tracepoint: %w", err)
		}
		var p struct {
			Exit  *ebpf.Program `ebpf:"tracepoint_exit_bpf"`
			Enter *ebpf.Program `ebpf:"tracepoint_enter_bpf"`
			controls
		}
		if err := spec.LoadAndAssign(&p, opts); err != nil {
			return nil, fmt.Errorf("tracepoint: load programs: %w", err)
		}
		tp := func(name string) func(*ebpf.Program) (link.Link, error) {
			return func(p *ebpf.Program) (link.Link, error) { return link.Tracepoint("syscalls", name, p, nil) }
		}
		return attachHooks(mode, []hook{
			{p.Exit, "tracepoint/syscalls/sys_exit_bpf", tp("sys_exit_bpf")},
			{p.Enter, "tracepoint/syscalls/sys_enter_bpf", tp("sys_enter_bpf")},
		}, p.controls)
	}
	return nil, fmt.Errorf("unknown attach mode %q", mode)
}

// explainAttachError adds what to do to the kernel's terse answers.
func explainAttachError(mode AttachMode, err error) error {
	switch {
	case mode == AttachFentry && errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w (the kernel refuses BPF trampolines here: lockdown, missing CONFIG_FUNCTION_TRACER, or no CAP_SYS_ADMIN; use --attach=kprobe or --attach=tracepoint)", err)
	case mode == AttachFentry && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT)):
		return fmt.Errorf("%w (no BTF trampolines for %s/%s on this kernel; use --attach=kprobe or --attach=tracepoint)", err, progLoadFunc, btfLoadFunc)
	case mode == AttachKprobe && (errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT)):
		return fmt.Errorf("%w (the kernel has no kprobes or cannot probe %s/%s: CONFIG_KPROBES off or the function inlined; use --attach=tracepoint)", err, progLoadFunc, btfLoadFunc)
	}
	return err
}

const tracefsPath = "/sys/kernel/tracing"

// ensureTracefs makes sure tracefs is mounted where the tracepoint API
// looks for it, mounting it if it is not.
func ensureTracefs() error {
	for _, p := range []string{tracefsPath, "/sys/kernel/debug/tracing"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.TRACEFS_MAGIC {
			return nil
		}
	}
	if err := unix.Mount("tracefs", tracefsPath, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted at %s and mounting it failed (%v); mount it with `mount -t tracefs tracefs %s` or run with --attach=fentry", tracefsPath, err, tracefsPath)
	}
	return nil
}

// describeAttempts is one line per mode tried, for errors and logs.
func describeAttempts(attempts []Attempt) string {
	var b strings.Builder
	for i, a := range attempts {
		if i > 0 {
			b.WriteString("; ")
		}
		if a.Err == nil {
			fmt.Fprintf(&b, "%s: ok", a.Mode)
		} else {
			fmt.Fprintf(&b, "%v", a.Err)
		}
	}
	return b.String()
}
