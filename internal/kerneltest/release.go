package kerneltest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Release is the running kernel's release, as uname -r prints it.
func Release() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// ParseRelease returns the major and minor version of a kernel release
// such as "5.10.0-30-amd64" or "6.1.0-rc3": the digits before the first dot
// and those right after it. Whatever follows the minor version (patch
// level, -rc, distribution suffix) is ignored.
func ParseRelease(release string) (major, minor int, err error) {
	majorPart, rest, ok := strings.Cut(release, ".")
	minorPart := rest[:len(rest)-len(strings.TrimLeft(rest, "0123456789"))]
	if !ok || !allDigits(majorPart) || minorPart == "" {
		return 0, 0, fmt.Errorf("kernel release %q does not start with major.minor", release)
	}
	if major, err = strconv.Atoi(majorPart); err != nil {
		return 0, 0, fmt.Errorf("kernel release %q: %w", release, err)
	}
	if minor, err = strconv.Atoi(minorPart); err != nil {
		return 0, 0, fmt.Errorf("kernel release %q: %w", release, err)
	}
	return major, minor, nil
}

func allDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
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
