package tracer_test

// Below the floor: where the programs cannot run, tracer.New fails with one
// error that names what is missing. Each case runs in a child process (the
// test binary, re-executed) that takes something away from itself.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/tracer"
)

// childTracerWithoutBTF hides the kernel's BTF behind an empty tmpfs in its
// own mount namespace and prints tracer.New's error.
func childTracerWithoutBTF() error {
	if err := unix.Mount("tmpfs", "/sys/kernel/btf", "tmpfs", 0, ""); err != nil {
		return fmt.Errorf("hide /sys/kernel/btf: %w", err)
	}
	return childTracerError()
}

// childTracerWithoutCapabilities drops every capability from every thread
// (it stays uid 0) and prints tracer.New's error.
func childTracerWithoutCapabilities() error {
	if err := cap.NewSet().SetProc(); err != nil {
		return fmt.Errorf("drop capabilities: %w", err)
	}
	return childTracerError()
}

func childTracerError() error {
	tr, err := tracer.New(tracer.Options{Attach: tracer.AttachMode(envOr("VERIFIERLOG_TEST_ATTACH", "auto")), Variant: tracer.Variant(envOr("VERIFIERLOG_TEST_VARIANT", "auto"))})
	if err == nil {
		tr.Close()
		return errors.New("tracer.New succeeded")
	}
	fmt.Println(err)
	return nil
}

// runFloorChild runs the child mode and returns the error it printed.
func runFloorChild(t *testing.T, mode string, attr *syscall.SysProcAttr) string {
	t.Helper()
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	cmd.SysProcAttr = attr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("child %s: %v: %s", mode, err, ee.Stderr)
		}
		t.Fatalf("child %s: %v", mode, err)
	}
	return strings.TrimSpace(string(out))
}

func TestKernelWithoutBTFIsRefusedWithOneLine(t *testing.T) {
	kerneltest.Require(t)
	msg := runFloorChild(t, "nobtf", &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS})
	for _, want := range []string{"cannot run", "kernel BTF", tracer.OldestSupportedKernel} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") || strings.Contains(msg, "ring buffer") {
		t.Errorf("error %q: want one line naming only what is missing", msg)
	}
}

func TestMissingCapabilitiesAreNamed(t *testing.T) {
	kerneltest.Require(t)
	msg := runFloorChild(t, "nocaps", nil)
	if !strings.Contains(msg, "lacks CAP_BPF and CAP_PERFMON") || strings.Contains(msg, "\n") {
		t.Errorf("error %q: want one line saying the process lacks CAP_BPF and CAP_PERFMON", msg)
	}
	if strings.Contains(msg, "MEMLOCK") {
		t.Errorf("error %q blames the memlock rlimit", msg)
	}
}
