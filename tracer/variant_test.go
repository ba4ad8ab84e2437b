package tracer

import (
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
		got, err := chooseVariantFrom(VariantAuto, floor, c.modern)
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
	if got, err := chooseVariantFrom(VariantCompat, floor, full); err != nil || got.variant != VariantCompat || got.lacks != nil {
		t.Errorf("forced compat on a full kernel: %+v, %v", got, err)
	}
	if got, err := chooseVariantFrom(VariantModern, floor, full); err != nil || got.variant != VariantModern {
		t.Errorf("forced modern on a full kernel: %+v, %v", got, err)
	}
	_, err := chooseVariantFrom(VariantModern, floor, partial)
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
		_, err := chooseVariantFrom(want, floor, []feature{have("bpf_loop")})
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
	_, err := chooseVariantFrom(VariantAuto, []feature{fakeFeature("ring buffer", fmt.Errorf("map create: %w", unix.EPERM))}, nil)
	if err == nil || strings.Contains(err.Error(), "cannot run") {
		t.Fatalf("EPERM probe: %v, want a privilege error, not a missing feature", err)
	}
	if !strings.Contains(err.Error(), "CAP_BPF") && !strings.Contains(err.Error(), "seccomp") {
		t.Errorf("EPERM probe: %v names neither the capabilities nor seccomp", err)
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
	}
}
