package kerneltest

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/tracer"
)

// Release is the running kernel's release, as uname -r prints it.
func Release() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// ParseRelease is tracer.ParseRelease: the tests read the version as the
// exporter does.
func ParseRelease(release string) (major, minor int, err error) {
	return tracer.ParseRelease(release)
}

// KernelAtLeast reports whether the running kernel is major.minor or newer.
// It fails t if the release cannot be read or parsed: the expectations that
// depend on it would be guesses.
func KernelAtLeast(t testing.TB, major, minor int) bool {
	t.Helper()
	rel, err := Release()
	if err != nil {
		t.Fatalf("uname: %v", err)
	}
	maj, min, err := ParseRelease(rel)
	if err != nil {
		t.Fatal(err)
	}
	return maj > major || (maj == major && min >= minor)
}
