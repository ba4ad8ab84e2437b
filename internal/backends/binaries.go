package backends

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// CollectorVersion is the OpenTelemetry Collector release that
// backends/install.sh builds.
const CollectorVersion = "0.165.0"

// ErrNotInstalled is wrapped by the errors of PrometheusBinary,
// PromtoolBinary and CollectorBinary when a binary cannot be found.
var ErrNotInstalled = errors.New("not installed: run backends/install.sh")

// CacheDir is where backends/install.sh puts what it builds:
// $VERIFIERLOG_BACKENDS, or /var/cache/verifierlog-backends.
func CacheDir() string {
	if d := os.Getenv("VERIFIERLOG_BACKENDS"); d != "" {
		return d
	}
	return "/var/cache/verifierlog-backends"
}

// PrometheusBinary returns the path of the prometheus server binary.
func PrometheusBinary() (string, error) { return findBinary("prometheus", "/usr/bin/prometheus") }

// PromtoolBinary returns the path of promtool.
func PromtoolBinary() (string, error) { return findBinary("promtool", "/usr/bin/promtool") }

// CollectorBinary returns the path of the OpenTelemetry Collector that
// backends/install.sh built: the one in CacheDir first (its pinned version),
// then an "otelcol" on PATH.
func CollectorBinary() (string, error) {
	cached := filepath.Join(CacheDir(), "otelcol-"+CollectorVersion, "otelcol")
	if isExecutable(cached) {
		return cached, nil
	}
	if p, err := exec.LookPath("otelcol"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("otelcol: neither %s nor otelcol on PATH: %w", cached, ErrNotInstalled)
}

func findBinary(name string, fallbacks ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, p := range fallbacks {
		if isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not on PATH: %w", name, ErrNotInstalled)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
