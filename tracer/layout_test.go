package tracer_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/tracer"
)

// TestAttrLayoutMatchesTheRunningKernel checks bpf/attr.h, through the Go
// structs bpf2go made of it, against the running kernel's own union
// bpf_attr from its BTF: every field the kernel has within the prefix is at
// the same offset, with the same size and name. Kernels before 6.4 end
// before log_true_size; they must still agree on everything they have.
func TestAttrLayoutMatchesTheRunningKernel(t *testing.T) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		kerneltest.Unavailable(t, "kernel BTF: "+err.Error())
	}
	var attr *btf.Union
	if err := spec.TypeByName("bpf_attr", &attr); err != nil {
		t.Fatalf("union bpf_attr in kernel BTF: %v", err)
	}
	for _, c := range []struct {
		first  string // the kernel struct's first member
		goType reflect.Type
		least  string // a member every supported kernel has
	}{
		{"prog_type", reflect.TypeFor[tracer.ProgLoadAttr](), "log_buf"},
		{"btf", reflect.TypeFor[tracer.BTFLoadAttr](), "btf_log_level"},
	} {
		kernel, err := memberStruct(attr, c.first)
		if err != nil {
			t.Fatal(err)
		}
		checked := map[string]bool{}
		goFields := exportedFields(c.goType)
		for i, m := range flatten(kernel.Members, 0) {
			if i >= len(goFields) {
				break
			}
			f := goFields[i]
			size, err := btf.Sizeof(m.Type)
			if err != nil {
				t.Fatal(err)
			}
			if f.Name != goName(m.Name) || f.Offset != uintptr(m.Offset.Bytes()) || f.Type.Size() != uintptr(size) {
				t.Errorf("%s: Go field %s at %d (%d bytes), kernel member %s at %d (%d bytes)",
					c.goType, f.Name, f.Offset, f.Type.Size(), m.Name, m.Offset.Bytes(), size)
			}
			checked[m.Name] = true
		}
		if !checked[c.least] {
			t.Errorf("%s: the kernel's struct has no %s (members checked: %v)", c.goType, c.least, checked)
		}
		t.Logf("%s: %d of %d fields checked against the kernel", c.goType, len(checked), len(goFields))
	}
}

// memberStruct is the anonymous struct of u whose first member is first.
func memberStruct(u *btf.Union, first string) (*btf.Struct, error) {
	for _, m := range u.Members {
		if s, ok := m.Type.(*btf.Struct); ok && len(s.Members) > 0 && s.Members[0].Name == first {
			return s, nil
		}
	}
	return nil, errors.New("union bpf_attr has no struct starting with " + first)
}

// flatten lists members in order, an anonymous union as its first member
// (attach_prog_fd / attach_btf_obj_fd), with offsets from the struct's start.
func flatten(ms []btf.Member, base btf.Bits) []btf.Member {
	var out []btf.Member
	for _, m := range ms {
		m.Offset += base
		if u, ok := m.Type.(*btf.Union); ok && m.Name == "" && len(u.Members) > 0 {
			out = append(out, flatten(u.Members[:1], m.Offset)...)
			continue
		}
		out = append(out, m)
	}
	return out
}

func exportedFields(t reflect.Type) []reflect.StructField {
	var out []reflect.StructField
	for i := range t.NumField() {
		if f := t.Field(i); f.IsExported() {
			out = append(out, f)
		}
	}
	return out
}

// goName is bpf2go's name for a C member: prog_btf_fd -> ProgBtfFd.
func goName(c string) string {
	parts := strings.Split(c, "_")
	for i, p := range parts {
		if p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, "")
}
