package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
)

// spansTo is the environment that pushes spans to col over gRPC, batched
// every 100 ms, plus extra.
func spansTo(col *backends.Collector, extra ...string) []string {
	return append([]string{"OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + col.GRPCEndpoint(), "OTEL_BSP_SCHEDULE_DELAY=100"}, extra...)
}

// TestHostileNamesAreSanitisedInLabelsAndSpans loads under a comm and a
// prog name full of terminal escapes and invalid UTF-8 (no NUL in the
// name): the loader label and the span attributes carry them with every
// such byte replaced by U+FFFD.
func TestHostileNamesAreSanitisedInLabelsAndSpans(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	col := backends.StartCollector(t)
	s := startServer(t, bin, spansTo(col), "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))

	const comm, wantComm = "\x1b[2Jx\xffy\x07", "\uFFFD[2Jx\uFFFDy\uFFFD"
	var name [16]byte
	copy(name[:], "n\x1b]0;pwn\x07\xc3(zzzzz") // all 16 bytes used: no NUL
	const wantName = "n\uFFFD]0;pwn\uFFFD\uFFFD(zzzzz"
	// The kernel refuses such a prog_name (EINVAL) before the verifier
	// runs: the record still carries it.
	r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, RawName: &name, Comm: comm, LogLevel: 1, LogSize: 4096})
	if err != nil || r.Errno != syscall.EINVAL {
		t.Fatalf("hostile load: %v %v, want EINVAL", r.Errno, err)
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		_, families := s.scrape()
		ms := series(families, "bpf_prog_loads_total", map[string]string{"loader": wantComm, "result": "EINVAL"})
		if len(ms) == 1 && ms[0].GetCounter().GetValue() == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no bpf_prog_loads_total{loader=%q,result=EINVAL} = 1", wantComm)
		}
		time.Sleep(100 * time.Millisecond)
	}
	body, _ := s.get("/metrics")
	if strings.ContainsAny(body, "\x1b\x07") || !utf8.ValidString(body) {
		t.Errorf("/metrics carries a control byte or invalid UTF-8")
	}

	spans := col.WaitForSpans(t, func(sp []backends.Span) bool {
		for _, s := range sp {
			if s.Name == "bpf.load" && s.Attributes["bpf.prog.name"] == wantName {
				return true
			}
		}
		return false
	}, 60*time.Second)
	for _, sp := range spans {
		if sp.Attributes["bpf.prog.name"] != wantName {
			continue
		}
		if got := sp.Attributes["process.executable.name"]; got != wantComm {
			t.Errorf("span %s: process.executable.name %q, want %q", sp.Name, got, wantComm)
		}
	}
	s.stop()
}
