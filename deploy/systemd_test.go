package deploy

// The systemd unit: its hardening directives, systemd-analyze verify, and
// its exposure score.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

// unitDirectives parses a unit file into key -> values (in order).
func unitDirectives(t *testing.T) map[string][]string {
	t.Helper()
	d := map[string][]string{}
	for _, line := range strings.Split(string(mustRead(t, unitFile)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not key=value", unitFile, line)
		}
		d[k] = append(d[k], v)
	}
	return d
}

func unitCaps(t *testing.T, d map[string][]string, key string) []string {
	t.Helper()
	var caps []string
	for _, v := range d[key] {
		caps = append(caps, strings.Fields(v)...)
	}
	sort.Strings(caps)
	return caps
}

func TestSystemdUnit(t *testing.T) {
	d := unitDirectives(t)
	one := func(k string) string {
		if len(d[k]) != 1 {
			t.Errorf("%s: want one %s=, have %v", unitFile, k, d[k])
			return ""
		}
		return d[k][0]
	}
	if got := one("ExecStart"); got != fmt.Sprintf("/usr/local/bin/exporter --web.listen-address=:%d", metricsPort) {
		t.Errorf("ExecStart=%s", got)
	}
	ambient, bounding := unitCaps(t, d, "AmbientCapabilities"), unitCaps(t, d, "CapabilityBoundingSet")
	if !slices.Equal(ambient, bounding) {
		t.Errorf("AmbientCapabilities %v and CapabilityBoundingSet %v differ", ambient, bounding)
	}
	for _, c := range []string{"CAP_BPF", "CAP_PERFMON"} {
		if !slices.Contains(ambient, c) {
			t.Errorf("AmbientCapabilities lacks %s", c)
		}
	}
	for _, c := range ambient {
		if !slices.Contains([]string{"CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH", "CAP_SYS_ADMIN"}, c) {
			t.Errorf("AmbientCapabilities has %s", c)
		}
	}
	for k, v := range map[string]string{
		"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
		"PrivateTmp": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallArchitectures": "native",
		"LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
	} {
		if got := one(k); got != v {
			t.Errorf("%s=%s, want %s", k, got, v)
		}
	}
	for _, k := range []string{"PrivateUsers", "PrivateNetwork"} {
		if len(d[k]) > 0 {
			t.Errorf("%s= breaks the exporter (see the unit's comments)", k)
		}
	}

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		kerneltest.MissingTool(t, "systemd-analyze", "apt-get install systemd")
	}
	// verify checks that ExecStart's binary exists: point a copy of the unit
	// at the binary build-image.sh's build line makes for the image.
	bin := exporterBinary(t)
	unit := strings.Replace(string(mustRead(t, unitFile)), "ExecStart=/usr/local/bin/exporter ", "ExecStart="+bin+" ", 1)
	path := filepath.Join(t.TempDir(), filepath.Base(unitFile))
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The exposure score (0 best, 10 worst) must stay at "OK": 2.0 or less.
	out, err = exec.Command(sa, "security", "--offline=yes", "--threshold=20", path).CombinedOutput()
	score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+ \S+)`).FindSubmatch(out)
	if err != nil || score == nil {
		t.Errorf("systemd-analyze security --offline=yes --threshold=20: %v\n%s", err, out)
	} else {
		t.Logf("systemd-analyze security: exposure %s", score[1])
	}
}
