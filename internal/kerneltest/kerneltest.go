// Package kerneltest is the one place that decides whether a test that needs
// the real kernel (root, BPF, tracefs) may run here, and which kernel it runs
// on (Release, KernelAtLeast), so that tests whose expectations differ by
// version all read the version the same way.
//
// A test that cannot run says why, with one of two verdicts that must not be
// mixed up: Unavailable (through Require) when the kernel or the privileges
// do not allow it, and MissingTool when a program the test runs (promtool,
// kubectl, systemd-analyze, ...) is not installed. Both skip the test, except
// under CI=true, where either is a failure.
package kerneltest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// InCI reports whether the tests run under CI (CI=true), where kernel tests
// are mandatory.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require skips t (fails it under CI) unless the process can load BPF
// programs.
func Require(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		Unavailable(t, err.Error())
	}
}

// Unavailable skips t because the kernel or the privileges do not allow
// it, with reason, or fails it under CI.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("kernel test cannot run, and CI=true makes that a failure: %s", reason)
	}
	t.Skipf("kernel test skipped (no kernel support or privileges here): %s", reason)
}

// MissingTool skips t because a program it runs is not installed (not a
// limit of the kernel), saying how to get it, or fails it under CI.
func MissingTool(t testing.TB, tool, install string) {
	t.Helper()
	if InCI() {
		t.Fatalf("test needs %s, which is missing, and CI=true makes that a failure; %s", tool, install)
	}
	t.Skipf("skipped, missing tool (not a kernel limit): %s; %s", tool, install)
}

// Available says why BPF tests cannot run here, or nil if they can.
func Available() error {
	if os.Geteuid() != 0 {
		var caps unix.CapUserData
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			return err
		}
		caps = data[1]
		const capBPF, capPerfmon = 39, 38
		if caps.Effective&(1<<(capBPF-32)) == 0 || caps.Effective&(1<<(capPerfmon-32)) == 0 {
			return errors.New("not root and lacking CAP_BPF and CAP_PERFMON")
		}
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return errors.New("the kernel has no BTF (/sys/kernel/btf/vmlinux)")
	}
	return nil
}

// ProgramIDs returns the IDs of the BPF programs that process pid holds
// file descriptors to, read from /proc/PID/fdinfo. Tests use it to find the
// programs a tracer loaded without racing other tests' tracers.
func ProgramIDs(pid int) (map[uint32]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	ids := map[uint32]bool{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
				if id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
					ids[uint32(id)] = true
				}
			}
		}
	}
	return ids, nil
}

// ProgramsGone waits up to timeout for the kernel to free the programs ids
// (the kernel may free a detached program's ID asynchronously) and returns
// the ones still loaded.
func ProgramsGone(ids map[uint32]bool, timeout time.Duration) []uint32 {
	deadline := time.Now().Add(timeout)
	for {
		var left []uint32
		for id := range ids {
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
			if err == nil {
				p.Close()
				left = append(left, id)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}
