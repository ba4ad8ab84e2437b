package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

// TestTopLevelHelpShowsServeFlags: serve is the default command, so
// `exporter --help` lists what it accepts, and the flags every command has.
func TestTopLevelHelpShowsServeFlags(t *testing.T) {
	bin := buildExporter(t)
	out, err := exec.Command(bin, "--help").Output()
	if err != nil {
		t.Fatalf("exporter --help: %v", err)
	}
	for _, want := range []string{"--web.listen-address", "--web.config.file", "web.enable-pprof", "--attach", "--ring-buffer-bytes",
		"--log.level", "--log.format", "version", "trace", "recommend", "loadgen"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("exporter --help does not show %s:\n%s", want, out)
		}
	}
	// A command's own help is as kingpin makes it.
	out, err = exec.Command(bin, "trace", "--help").Output()
	if err != nil || !strings.Contains(string(out), "--output") || strings.Contains(string(out), "--web.listen-address") {
		t.Errorf("exporter trace --help: %v\n%s", err, out)
	}
}

// TestLogFlagsApplyToEveryCommand: --log.format and --log.level are the
// promslog flags, accepted before or after the command.
func TestLogFlagsApplyToEveryCommand(t *testing.T) {
	bin := buildExporter(t)
	for _, args := range [][]string{
		{"--log.format=json", "--web.listen-address=:99999"},
		{"recommend", "--log.format=json", "--from=http://127.0.0.1:1"},
		{"--log.format=json", "--log.level=error", "recommend", "--from=http://127.0.0.1:1"},
	} {
		e := runToExit(t, exec.Command(bin, args...))
		lines := strings.Split(strings.TrimSpace(e.stderr), "\n")
		var rec map[string]any
		if e.code != 1 || len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &rec) != nil || rec["level"] != "ERROR" || rec["msg"] == "" {
			t.Errorf("exporter %v: exit %d, stderr not one JSON ERROR record:\n%s", args, e.code, e.stderr)
		}
	}
	e := runToExit(t, exec.Command(bin, "--log.level=verbose", "trace"))
	if e.code != 2 || !strings.Contains(e.stderr, "log level verbose") {
		t.Errorf("--log.level=verbose: exit %d\n%s", e.code, e.stderr)
	}
}

// TestVersionFromAPlainGoBuild: a `go build` of this checkout, without
// -ldflags, reports the commit it was built from in --version and in
// verifierlog_exporter_build_info.
func TestVersionFromAPlainGoBuild(t *testing.T) {
	rev, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout (git rev-parse HEAD: %v): no revision to compare with", err)
	}
	revision := strings.TrimSpace(string(rev))
	bin := filepath.Join(t.TempDir(), "exporter")
	// -buildvcs=true: the stamping `go build` does by default, whatever
	// GOFLAGS this machine sets.
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("exporter --version: %v", err)
	}
	version := ""
	if f := strings.Fields(string(out)); len(f) > 2 && f[0] == "exporter," && f[1] == "version" {
		version = f[2]
	}
	if version == "" || version == "(devel)" || version == "unknown" || !strings.Contains(string(out), "revision: "+revision) {
		t.Errorf("exporter --version, built from %s:\n%s", revision, out)
	}

	t.Run("build_info", func(t *testing.T) {
		kerneltest.Require(t)
		s := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
		_, families := s.scrape()
		if ms := series(families, "verifierlog_exporter_build_info", map[string]string{"version": version, "revision": revision}); len(ms) != 1 {
			t.Errorf("no verifierlog_exporter_build_info{version=%q,revision=%q}: %v", version, revision, families["verifierlog_exporter_build_info"])
		}
		s.stop()
	})
}
