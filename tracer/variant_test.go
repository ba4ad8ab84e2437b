package tracer

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

func fakeFeature(name string, err error) feature {
	return feature{name, func() error { return err }}
}

var (
	have    = func(name string) feature { return fakeFeature(name, nil) }
	lacking = func(name string) feature { return fakeFeature(name, fmt.Errorf("probe: %w", ebpf.ErrNotSupported)) }
)

func TestAutoVariantIsModernOnlyWithEveryFeature(t *testing.T) {
	floor := []feature{have("btf"), have("ringbuf")}
	for _, c := range []struct {
		modern []feature
		want   Variant
		lacks  []string
	}{
		{[]feature{have("task storage"), have("bpf_loop")}, VariantModern, nil},
		{[]feature{have("task storage"), lacking("bpf_loop")}, VariantCompat, []string{"bpf_loop"}},
		{[]feature{lacking("task storage"), lacking("bpf_loop")}, VariantCompat, []string{"task storage", "bpf_loop"}},
	} {
		got, err := chooseVariantFrom(VariantAuto, floor, c.modern, "")
		if err != nil {
			t.Fatal(err)
		}
		if got.variant != c.want || !slices.Equal(got.lacks, c.lacks) {
			t.Errorf("chose %s lacking %q, want %s lacking %q", got.variant, got.lacks, c.want, c.lacks)
		}
	}
}

func TestForcedVariants(t *testing.T) {
	floor := []feature{have("btf")}
	full := []feature{have("bpf_loop")}
	partial := []feature{lacking("bpf_loop")}
	if got, err := chooseVariantFrom(VariantCompat, floor, full, ""); err != nil || got.variant != VariantCompat || got.lacks != nil {
		t.Errorf("forced compat on a full kernel: %+v, %v", got, err)
	}
	if got, err := chooseVariantFrom(VariantModern, floor, full, ""); err != nil || got.variant != VariantModern {
		t.Errorf("forced modern on a full kernel: %+v, %v", got, err)
	}
	_, err := chooseVariantFrom(VariantModern, floor, partial, "")
	if err == nil || !strings.Contains(err.Error(), "needs bpf_loop") || !strings.Contains(err.Error(), "compat") {
		t.Errorf("forced modern where bpf_loop is missing: %v, want an error naming it and the way out", err)
	}
}

// TestBelowTheFloorNamesWhatIsMissing: a kernel without BTF or the ring
// buffer gets one error naming each missing feature and the oldest
// supported kernel, whichever variant was asked for.
func TestBelowTheFloorNamesWhatIsMissing(t *testing.T) {
	floor := []feature{lacking("kernel BTF"), have("bounded loops"), lacking("ring buffer")}
	for _, want := range []Variant{VariantAuto, VariantModern, VariantCompat} {
		_, err := chooseVariantFrom(want, floor, []feature{have("bpf_loop")}, "")
		if err == nil {
			t.Fatalf("%s: no error below the floor", want)
		}
		msg := err.Error()
		for _, part := range []string{"kernel BTF, ring buffer", OldestSupportedKernel, "cannot run"} {
			if !strings.Contains(msg, part) {
				t.Errorf("%s: %q does not say %q", want, msg, part)
			}
		}
		if strings.Contains(msg, "bounded loops") {
			t.Errorf("%s: %q names a feature the kernel has", want, msg)
		}
	}
}

// TestProbeRefusedIsNotAMissingFeature: EPERM from a probe says nothing
// about the kernel; the error says what the process lacks instead.
func TestProbeRefusedIsNotAMissingFeature(t *testing.T) {
	_, err := chooseVariantFrom(VariantAuto, []feature{fakeFeature("ring buffer", fmt.Errorf("map create: %w", unix.EPERM))}, nil, privileges())
	if err == nil || strings.Contains(err.Error(), "cannot run") {
		t.Fatalf("EPERM probe: %v, want a privilege error, not a missing feature", err)
	}
	if !strings.Contains(err.Error(), "CAP_BPF") && !strings.Contains(err.Error(), "seccomp") {
		t.Errorf("EPERM probe: %v names neither the capabilities nor seccomp", err)
	}
}

// TestUnsupportedWithoutCapabilitiesIsNotAMissingFeature: without CAP_BPF
// or CAP_PERFMON the verifier refuses programs it would accept with them,
// so "not supported" then blames the missing capability, not the kernel
// (the bounded-loops probe fails so on Linux 6.18 without CAP_PERFMON).
func TestUnsupportedWithoutCapabilitiesIsNotAMissingFeature(t *testing.T) {
	for _, c := range []struct {
		name          string
		floor, modern []feature
	}{
		{"floor", []feature{have("kernel BTF"), lacking("bounded loops (Linux 5.3)")}, []feature{have("bpf_loop")}},
		{"modern", []feature{have("kernel BTF")}, []feature{have("task storage"), lacking("bpf_loop (Linux 5.17)")}},
	} {
		for _, want := range []Variant{VariantAuto, VariantModern, VariantCompat} {
			_, err := chooseVariantFrom(want, c.floor, c.modern, "CAP_PERFMON")
			if err == nil {
				t.Fatalf("%s %s: no error", c.name, want)
			}
			msg := err.Error()
			if !strings.Contains(msg, "lacks CAP_PERFMON") || !strings.Contains(msg, "(Linux 5.") ||
				strings.Contains(msg, "cannot run") || strings.Contains(msg, "kernel ("+kernelRelease()) || strings.Contains(msg, "\n") {
				t.Errorf("%s %s: %q, want one line blaming the missing CAP_PERFMON, naming the refused probe, not the kernel", c.name, want, msg)
			}
		}
	}
}

func TestParseVariant(t *testing.T) {
	for _, s := range []string{"auto", "modern", "compat"} {
		if v, err := ParseVariant(s); err != nil || string(v) != s {
			t.Errorf("ParseVariant(%q) = %q, %v", s, v, err)
		}
	}
	if _, err := ParseVariant("legacy"); err == nil {
		t.Error("ParseVariant(legacy): no error")
	}
}

// TestBothVariantsWriteTheSameRecord: one decoder reads both variants'
// records, so their load_event must be the same size (one C struct, two
// builds).
func TestBothVariantsWriteTheSameRecord(t *testing.T) {
	for _, v := range []Variant{VariantModern, VariantCompat} {
		spec, err := loadSpec(v)
		if err != nil {
			t.Fatal(err)
		}
		typ, err := spec.Types.AnyTypeByName("load_event")
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		size, err := btf.Sizeof(typ)
		if err != nil {
			t.Fatal(err)
		}
		if size != recordSize {
			t.Errorf("%s programs write %d-byte records, the decoder reads %d", v, size, recordSize)
		}
		typ, err = spec.Types.AnyTypeByName("load_event_tail")
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if size, err = btf.Sizeof(typ); err != nil || size != tailRecordSize {
			t.Errorf("%s programs write %d-byte records with a log tail (%v), the decoder reads %d", v, size, err, tailRecordSize)
		}
	}
}

// TestRefusalNamesItsCause: EPERM from bpf(2) names the missing
// capabilities where some are missing; where none is, the seccomp filter
// the process runs under (a container runtime's default profile refusing
// bpf(2) without CAP_SYS_ADMIN), or without one an LSM or lockdown; ENOSYS
// under a filter is the filter too. Each is one line, and none blames the
// memlock rlimit.
func TestRefusalNamesItsCause(t *testing.T) {
	eperm := fmt.Errorf("probe BPF ring buffer maps (Linux 5.8): map create: %w", unix.EPERM)
	enosys := fmt.Errorf("probe BPF ring buffer maps (Linux 5.8): map create: %w", unix.ENOSYS)
	for _, c := range []struct {
		name       string
		err        error
		lack       string
		sc         seccompMode
		want, dont []string
	}{
		{"no capabilities, no filter", eperm, "CAP_BPF and CAP_PERFMON", seccompNone,
			[]string{"lacks CAP_BPF and CAP_PERFMON"}, []string{"seccomp"}},
		{"no capabilities, filtered", eperm, "CAP_BPF and CAP_PERFMON", seccompFiltered,
			[]string{"lacks CAP_BPF and CAP_PERFMON"}, nil},
		{"one capability fewer", eperm, "CAP_PERFMON", seccompFiltered,
			[]string{"lacks CAP_PERFMON"}, []string{"lacks CAP_BPF"}},
		{"default seccomp profile", eperm, "", seccompFiltered,
			[]string{"seccomp filter", "refused bpf(2)", "not a missing capability", "CAP_SYS_ADMIN", "deploy/seccomp/verifierlog-exporter.json"}, []string{"lacks"}},
		{"profile without bpf", enosys, "", seccompFiltered,
			[]string{"function not implemented", "seccomp filter", "refused bpf(2)"}, nil},
		{"profile without bpf, capabilities missing too", enosys, "CAP_BPF", seccompFiltered,
			[]string{"seccomp filter", "refused bpf(2)", "lacks CAP_BPF as well"}, nil},
		{"no filter", eperm, "", seccompNone,
			[]string{"no seccomp filter", "LSM", "lockdown"}, []string{"lacks"}},
		{"unknown", eperm, "", seccompUnknown,
			[]string{"seccomp profile or the container runtime refuses bpf(2)"}, nil},
	} {
		msg := explainRefusal(c.err, c.lack, c.sc).Error()
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q does not say %q", c.name, msg, w)
			}
		}
		for _, d := range append(c.dont, "memlock", "MEMLOCK", "\n") {
			if strings.Contains(msg, d) {
				t.Errorf("%s: %q says %q", c.name, msg, d)
			}
		}
		if !errors.Is(explainRefusal(c.err, c.lack, c.sc), c.err) {
			t.Errorf("%s: the explanation does not wrap the kernel's error", c.name)
		}
	}
	// Nothing to explain: other errors, and ENOSYS without a filter.
	for _, err := range []error{unix.EINVAL, enosys} {
		if got := explainRefusal(err, "", seccompNone); got != err {
			t.Errorf("explainRefusal(%v) = %v, want it unchanged", err, got)
		}
	}
}

func TestParseSeccomp(t *testing.T) {
	for status, want := range map[string]seccompMode{
		"Name:\texporter\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n": seccompFiltered,
		"Seccomp:\t1\n":                      seccompFiltered,
		"Seccomp:\t0\nSeccomp_filters:\t0\n": seccompNone,
		"Name:\texporter\n":                  seccompUnknown,
		"Seccomp:\tmaybe\n":                  seccompUnknown,
	} {
		if got := parseSeccomp(status); got != want {
			t.Errorf("parseSeccomp(%q) = %v, want %v", status, got, want)
		}
	}
	// This process's own mode is one of the known ones on Linux.
	if m := processSeccomp(); m == seccompUnknown {
		t.Errorf("/proc/self/status has no readable Seccomp field")
	}
}

// TestMemlockIsBlamedOnlyWhereItIsCharged: from Linux 5.11 BPF memory is
// charged to the memory cgroup, so an EPERM creating the maps there is not
// the memlock rlimit's, whatever cilium/ebpf's probe concluded.
func TestMemlockIsBlamedOnlyWhereItIsCharged(t *testing.T) {
	for release, want := range map[string]bool{
		"4.19.0-27-amd64":                    true,
		"5.10.0-30-amd64":                    true,
		"5.11.0":                             false,
		"5.15.167.4-microsoft-standard-WSL2": false,
		"6.18.0":                             false,
		"6.1.0-rc3":                          false,
		"unknown":                            true,
	} {
		if got := chargesMemlock(release); got != want {
			t.Errorf("chargesMemlock(%q) = %v, want %v", release, got, want)
		}
	}
}
