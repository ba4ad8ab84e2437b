// Package kerneltest is the one place that decides whether a test that needs
// the real kernel (root, BPF, tracefs) may run here. Where it cannot, the
// test is skipped with the reason, except under CI=true, where a skipped
// kernel test is a failure.
package kerneltest

import (
	"errors"
	"os"
	"testing"

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

// Unavailable skips t with reason, or fails it under CI.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("kernel test cannot run, and CI=true makes that a failure: %s", reason)
	}
	t.Skipf("kernel test skipped: %s", reason)
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
