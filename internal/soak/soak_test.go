package soak

import (
	"bytes"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

// TestShortSoakPasses runs the soak for 16 s against the real exporter and
// kernel: every verdict passes, the retry chains really were chains, and
// the summary shows the samples, the loaders and the verdicts.
func TestShortSoakPasses(t *testing.T) {
	kerneltest.Require(t)
	bin, err := BuildExporter(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	attach := os.Getenv("VERIFIERLOG_TEST_ATTACH")
	if attach == "" {
		attach = "auto"
	}
	res, err := Run(Config{Exporter: bin, Attach: attach, Threads: runtime.NumCPU(), Duration: 16 * time.Second, Interval: time.Second, OTel: "console"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res.WriteSummary(&out)
	t.Logf("summary:\n%s", out.String())

	for _, v := range res.Verdicts {
		if !v.OK {
			t.Errorf("%s: %s", v.Name, v.Detail)
		}
	}
	// Chains: cilium/ebpf retries once, aya twice, BTF once, libbpf on its
	// big load; plain and rejected loads are single attempts.
	for _, l := range res.Loaders {
		retries := l.Issued > l.Loads
		switch l.Loader {
		case CommCilium, CommAya, CommBTF, CommLibbpf:
			if l.Loads == 0 || !retries {
				t.Errorf("%s: %d loads in %d attempts, want retry chains", l.Loader, l.Loads, l.Issued)
			}
		default:
			if l.Loads == 0 {
				t.Errorf("%s: no loads", l.Loader)
			}
		}
	}
	if n := len(res.Samples); n < 10 {
		t.Errorf("%d samples, want one a second", n)
	}
	summary := out.String()
	for _, want := range append([]string{"RSS MiB", "goroutines", "soak: PASS"}, Comms...) {
		if !strings.Contains(summary, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	for _, v := range res.Verdicts {
		if !strings.Contains(summary, v.Name+": "+v.Detail) {
			t.Errorf("summary lacks the verdict %q", v.Name)
		}
	}
}
