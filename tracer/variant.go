package tracer

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Variant names a build of the BPF programs (bpf/verifierlog.c). Both write
// the same records; they differ in what they need of the kernel.
type Variant string

const (
	// VariantAuto picks the best variant the kernel's features allow.
	VariantAuto Variant = "auto"
	// VariantModern keeps in-flight loads in BPF task storage, reads the
	// syscall's registers with bpf_task_pt_regs and scans logs in
	// bpf_loop: task storage, bpf_get_current_task_btf, bpf_task_pt_regs
	// and bpf_loop (all in mainline by Linux 5.17, or backported).
	VariantModern Variant = "modern"
	// VariantCompat keeps in-flight loads in a hash map keyed by thread,
	// finds the syscall's registers on the task's kernel stack and scans
	// logs in a bounded loop: BTF, the ring buffer and bounded loops
	// (Linux 5.10).
	VariantCompat Variant = "compat"
)

// OldestSupportedKernel is what the compat variant needs at least, for
// messages.
const OldestSupportedKernel = "Linux 5.10 with BTF (CONFIG_DEBUG_INFO_BTF=y)"

// ParseVariant accepts auto, modern or compat.
func ParseVariant(s string) (Variant, error) {
	switch v := Variant(s); v {
	case VariantAuto, VariantModern, VariantCompat:
		return v, nil
	}
	return "", fmt.Errorf("unknown program variant %q: want auto, modern or compat", s)
}

// feature is one thing a variant needs of the kernel, and how to find out.
type feature struct {
	name  string
	probe func() error
}

func helperFeature(name string, fn asm.BuiltinFunc) feature {
	return feature{name, func() error { return features.HaveProgramHelper(ebpf.Kprobe, fn) }}
}

var (
	// floorFeatures are what every variant needs.
	floorFeatures = []feature{
		{"kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)", func() error {
			_, err := btf.LoadKernelSpec()
			return err
		}},
		{"BPF ring buffer maps (Linux 5.8)", func() error { return features.HaveMapType(ebpf.RingBuf) }},
		{"bounded loops (Linux 5.3)", features.HaveBoundedLoops},
	}
	// modernFeatures are what VariantModern needs beyond the floor.
	modernFeatures = []feature{
		{"BPF task storage (Linux 5.11)", func() error { return features.HaveMapType(ebpf.TaskStorage) }},
		helperFeature("bpf_get_current_task_btf (Linux 5.11)", asm.FnGetCurrentTaskBtf),
		helperFeature("bpf_task_pt_regs (Linux 5.15)", asm.FnTaskPtRegs),
		helperFeature("bpf_loop (Linux 5.17)", asm.FnLoop),
	}
)

// missing probes fs and returns the names of the features the kernel lacks.
// An error other than "not supported" (no privileges, seccomp) ends the
// probing: it says nothing about the kernel.
func missing(fs []feature) ([]string, error) {
	var out []string
	for _, f := range fs {
		err := f.probe()
		switch {
		case err == nil:
		case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, btf.ErrNotFound):
			out = append(out, f.name)
		default:
			return nil, fmt.Errorf("probe %s: %w", f.name, explainPrivilegeError(err))
		}
	}
	return out, nil
}

// choice is the variant in use and why.
type choice struct {
	variant Variant
	// lacks is what the kernel lacks of the modern variant (auto chose
	// compat), or nil.
	lacks []string
}

// chooseVariant checks the floor and picks the variant: want, or the best
// one the kernel's features allow for VariantAuto. The probes' results are
// cached for the process.
func chooseVariant(want Variant) (choice, error) {
	return chooseVariantFrom(want, floorFeatures, modernFeatures, privileges())
}

// chooseVariantFrom is chooseVariant with the features and what the process
// lacks (privileges) given. A probe the kernel refuses as unsupported
// tells of the kernel only where the process has the capabilities: the
// verifier also answers EINVAL to a program it would accept with them (on
// Linux 6.18, the bounded-loops probe without CAP_PERFMON).
func chooseVariantFrom(want Variant, floorFeatures, modernFeatures []feature, lack string) (choice, error) {
	floor, err := missing(floorFeatures)
	if err != nil {
		return choice{}, err
	}
	if len(floor) > 0 && lack != "" {
		return choice{}, lackingCapabilities(lack, floor)
	}
	if len(floor) > 0 {
		return choice{}, fmt.Errorf("this kernel (%s) cannot run the exporter: it lacks %s; the oldest supported kernel is %s",
			kernelRelease(), strings.Join(floor, ", "), OldestSupportedKernel)
	}
	lacks, err := missing(modernFeatures)
	if err != nil {
		return choice{}, err
	}
	if len(lacks) > 0 && lack != "" {
		return choice{}, lackingCapabilities(lack, lacks)
	}
	switch want {
	case VariantCompat:
		return choice{variant: VariantCompat}, nil
	case VariantModern:
		if len(lacks) > 0 {
			return choice{}, fmt.Errorf("program variant modern needs %s, which this kernel (%s) lacks; use --bpf-variant=compat or auto",
				strings.Join(lacks, ", "), kernelRelease())
		}
		return choice{variant: VariantModern}, nil
	}
	if len(lacks) > 0 {
		return choice{variant: VariantCompat, lacks: lacks}, nil
	}
	return choice{variant: VariantModern}, nil
}

// lackingCapabilities is the error where probes failed and the process
// lacks capabilities: those are what to fix first.
func lackingCapabilities(lack string, refused []string) error {
	return fmt.Errorf("the process lacks %s, and without it the kernel refused the probes for %s, which says nothing of the kernel; run as root, or with CAP_BPF and CAP_PERFMON (plus CAP_SYS_ADMIN where tracefs must be mounted)",
		lack, strings.Join(refused, ", "))
}

// loadSpec returns the variant's programs, not yet loaded.
func loadSpec(v Variant) (*ebpf.CollectionSpec, error) {
	if v == VariantCompat {
		return loadVerifierlogCompat()
	}
	return loadVerifierlog()
}

// Kernel functions the fentry and kprobe modes hook. bpf_btf_load is
// inlined on some kernels; btf_new_fd, which it calls, is not.
const (
	progLoadFunc = "bpf_prog_load"
	btfLoadFunc  = "btf_new_fd"
)

// argSlots is how many 8-byte argument slots fn takes in the running
// kernel (a bpfptr_t takes two), from its BTF prototype; 0 if BTF does not
// describe it. The hooks read arguments and the fexit return value by slot.
func argSlots(fn string) (uint32, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return 0, err
	}
	types, err := spec.AnyTypesByName(fn)
	if errors.Is(err, btf.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	for _, t := range types {
		f, ok := t.(*btf.Func)
		if !ok {
			continue
		}
		proto, ok := f.Type.(*btf.FuncProto)
		if !ok {
			return 0, fmt.Errorf("%s: BTF type %T is not a function prototype", fn, f.Type)
		}
		slots := 0
		for _, p := range proto.Params {
			size, err := btf.Sizeof(p.Type)
			if err != nil {
				return 0, fmt.Errorf("%s: argument %s: %w", fn, p.Name, err)
			}
			slots += (size + 7) / 8
		}
		return uint32(slots), nil
	}
	return 0, nil
}

// privileges names what the process lacks to load and attach the
// programs, computed once.
var privileges = sync.OnceValue(func() string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return ""
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	const capBPF, capPerfmon, capSysAdmin = 39, 38, 21
	var lack []string
	if !has(capBPF) && !has(capSysAdmin) {
		lack = append(lack, "CAP_BPF")
	}
	if !has(capPerfmon) && !has(capSysAdmin) {
		lack = append(lack, "CAP_PERFMON")
	}
	return strings.Join(lack, " and ")
})

// explainPrivilegeError says which capabilities are missing where the
// kernel answered EPERM, or, where none is, what else refused the call: the
// seccomp filter the process runs under (which may also answer ENOSYS), or
// without one an LSM or lockdown.
func explainPrivilegeError(err error) error {
	return explainRefusal(err, privileges(), processSeccomp())
}

// seccompMode is what /proc/self/status says of the process's seccomp
// state.
type seccompMode int

const (
	seccompUnknown  seccompMode = iota // not readable (not Linux /proc, or a sandbox hiding it)
	seccompNone                        // Seccomp: 0
	seccompFiltered                    // Seccomp: 1 (strict) or 2 (filter)
)

var processSeccomp = sync.OnceValue(func() seccompMode {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return seccompUnknown
	}
	return parseSeccomp(string(b))
})

// parseSeccomp reads the Seccomp field of a /proc/PID/status.
func parseSeccomp(status string) seccompMode {
	for _, line := range strings.Split(status, "\n") {
		v, ok := strings.CutPrefix(line, "Seccomp:")
		if !ok {
			continue
		}
		switch strings.TrimSpace(v) {
		case "0":
			return seccompNone
		case "1", "2":
			return seccompFiltered
		}
		return seccompUnknown
	}
	return seccompUnknown
}

// explainRefusal is explainPrivilegeError with what the process lacks (as
// privileges names it, "" for nothing) and its seccomp mode given.
func explainRefusal(err error, lack string, sc seccompMode) error {
	// A seccomp profile that does not list bpf(2) makes it fail with its
	// default errno, ENOSYS in podman's and CRI-O's profiles; a kernel
	// without bpf(2) has no BTF either, and fails the floor before this.
	filteredOut := sc == seccompFiltered && errors.Is(err, unix.ENOSYS)
	if !errors.Is(err, unix.EPERM) && !filteredOut {
		return err
	}
	if lack != "" && !filteredOut {
		return fmt.Errorf("%w: the process lacks %s (run as root, or with CAP_BPF and CAP_PERFMON, plus CAP_SYS_ADMIN where tracefs must be mounted)", err, lack)
	}
	switch sc {
	case seccompFiltered:
		why := "not a missing capability: the process has CAP_BPF and CAP_PERFMON"
		if lack != "" {
			why = "the process lacks " + lack + " as well"
		}
		return fmt.Errorf("%w: the seccomp filter this process runs under refused bpf(2) (%s); a container runtime's default seccomp profile may allow bpf(2) and perf_event_open(2) only with CAP_SYS_ADMIN: run with a profile that allows them to CAP_BPF and CAP_PERFMON (deploy/seccomp/verifierlog-exporter.json)", err, why)
	case seccompNone:
		return fmt.Errorf("%w, although the process has CAP_BPF and CAP_PERFMON and no seccomp filter: an LSM (SELinux, AppArmor, a BPF LSM program) or kernel lockdown refuses bpf(2)", err)
	}
	return fmt.Errorf("%w, although the process has CAP_BPF and CAP_PERFMON: a seccomp profile or the container runtime refuses bpf(2)", err)
}
