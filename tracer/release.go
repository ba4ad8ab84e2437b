package tracer

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

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

// chargesMemlock reports whether a kernel of this release charges BPF
// memory to RLIMIT_MEMLOCK: before 5.11, which charges the memory cgroup
// instead; true where the release does not parse.
func chargesMemlock(release string) bool {
	major, minor, err := ParseRelease(release)
	return err != nil || major < 5 || major == 5 && minor < 11
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
