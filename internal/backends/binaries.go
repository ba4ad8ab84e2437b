package backends

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
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

// PrometheusBinary returns the path of the prometheus server binary,
// installing it first where it is missing (Install).
func PrometheusBinary() (string, error) {
	return installed(func() (string, error) { return findBinary("prometheus", "/usr/bin/prometheus") })
}

// PromtoolBinary returns the path of promtool, installing it first where it
// is missing (Install).
func PromtoolBinary() (string, error) {
	return installed(func() (string, error) { return findBinary("promtool", "/usr/bin/promtool") })
}

// CollectorBinary returns the path of the OpenTelemetry Collector that
// backends/install.sh built, building it first where it is missing
// (Install).
func CollectorBinary() (string, error) { return installed(collectorBinary) }

// installed returns what find finds, running Install once where it finds
// nothing, so that the tests run every test on a fresh machine.
func installed(find func() (string, error)) (string, error) {
	p, err := find()
	if !errors.Is(err, ErrNotInstalled) {
		return p, err
	}
	if ierr := Install(); ierr != nil {
		return "", fmt.Errorf("%w (%v)", err, ierr)
	}
	return find()
}

// Install runs backends/install.sh once per process (as root: it uses
// apt-get; the Collector build is cached in CacheDir, and the script logs
// how long each step took), its output in the test log's stead going to
// CacheDir/install.log.
var Install = sync.OnceValue(func() error {
	if os.Geteuid() != 0 {
		return errors.New("not root: run `bash backends/install.sh` as root to install the back-ends")
	}
	script, err := installScript()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(CacheDir(), "install.log")
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	fmt.Fprintf(os.Stderr, "backends: a back-end is missing: running %s (log: %s)\n", script, logPath)
	cmd := exec.Command("bash", script)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("bash %s: %v (see %s)", script, err, logPath)
	}
	return nil
})

// installScript finds backends/install.sh in the module the tests run in.
func installScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "backends", "install.sh"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("backends/install.sh: no go.mod above the working directory")
		}
		dir = parent
	}
}

func collectorBinary() (string, error) {
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
