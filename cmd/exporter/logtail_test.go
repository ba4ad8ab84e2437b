package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

// TestLogTailBytesFlag: every command that traces takes --log-tail-bytes,
// 0 by default, up to tracer.MaxLogTailBytes, and passes it to the
// tracer; above it the parse fails with an error naming the flag.
func TestLogTailBytesFlag(t *testing.T) {
	for _, command := range []string{"serve", "trace", "recommend"} {
		for _, c := range []struct {
			arg  string
			want uint32
			err  bool
		}{{"", 0, false}, {"--log-tail-bytes=512", 512, false}, {"--log-tail-bytes=4096", 4096, false}, {"--log-tail-bytes=4097", 0, true}} {
			app := kingpin.New("exporter", "")
			app.Terminate(nil)
			flags := map[string]*tracerFlags{
				"serve":     newServeCommand(app).tracer,
				"trace":     newTraceCommand(app).tracer,
				"recommend": newRecommendCommand(app).tracer,
			}
			args := []string{command}
			if c.arg != "" {
				args = append(args, c.arg)
			}
			_, err := app.Parse(args)
			if c.err {
				if err == nil || !strings.Contains(err.Error(), "--log-tail-bytes") || !strings.Contains(err.Error(), "4096") {
					t.Errorf("%v: err %v, want one naming the flag and its limit", args, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%v: %v", args, err)
				continue
			}
			if got := flags[command].options().LogTailBytes; got != c.want {
				t.Errorf("%v: LogTailBytes %d, want %d", args, got, c.want)
			}
		}
	}
}

// TestLogTailBytesAboveTheLimitIsOneLine: the built binary refuses
// --log-tail-bytes above the limit with exit code 2 and one line.
func TestLogTailBytesAboveTheLimitIsOneLine(t *testing.T) {
	bin := buildExporter(t)
	for _, args := range [][]string{{"--log-tail-bytes=4097"}, {"trace", "--log-tail-bytes=65536"}, {"recommend", "--log-tail-bytes", "5000"}} {
		e := runToExit(t, exec.Command(bin, args...))
		lines := strings.Split(strings.TrimSpace(e.stderr), "\n")
		if e.code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "--log-tail-bytes") || !strings.Contains(lines[0], "at most 4096") {
			t.Errorf("exporter %v: exit %d, stderr:\n%s", args, e.code, e.stderr)
		}
	}
}

// TestTableShowsTheVerdictOfFailedLoads: a failed load with a log tail
// gets the verifier's complaint on a line of its own, indented under the
// row, which keeps the header's width; a success with a tail and a
// failure without one get no such line.
func TestTableShowsTheVerdictOfFailedLoads(t *testing.T) {
	var buf bytes.Buffer
	tw := newTableWriter(&buf, tracer.WallClockWithOffset(0))
	if err := tw.header(); err != nil {
		t.Fatal(err)
	}
	summary := "processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n"
	rejected := tracer.LoadEvent{Command: tracer.CmdProgLoad, ProgType: 1, LogLevel: 1, LogSize: 4096, HasLogBuf: true, Ret: -13, PID: 1, TID: 1,
		LogTail: []byte("0: (95) exit\nR0 !read_ok\x1b[31m\n" + summary)}
	copy(rejected.Comm[:], "libbpf")
	ok := rejected
	ok.Ret, ok.LogTail = 5, []byte(summary)
	noTail := rejected
	noTail.LogTail = nil
	for _, ev := range []*tracer.LoadEvent{&rejected, &ok, &noTail} {
		if err := tw.row(ev); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines, want header, row, verdict, row, row:\n%s", len(lines), buf.String())
	}
	width := len([]rune(lines[0]))
	for _, i := range []int{1, 3, 4} {
		if len([]rune(lines[i])) != width || !strings.Contains(lines[i], "libbpf") {
			t.Errorf("line %d is not a row of the header's width %d:\n%s", i, width, buf.String())
		}
	}
	if want := strings.Repeat(" ", 13) + "verifier: R0 !read_ok\ufffd[31m"; lines[2] != want {
		t.Errorf("verdict line %q, want %q", lines[2], want)
	}
	if strings.Index(lines[0], "COMM") != 13 {
		t.Errorf("the verdict is not under COMM: %q", lines[0])
	}
}

// TestLogTailEndToEnd runs the built exporter with --log-tail-bytes 512 on
// the real kernel: trace's JSON record of a rejected load carries the last
// 512 bytes of the log the load itself got back; serve's
// bpf_verifier_processed_insns holds the count of a successful load's
// summary; and the attempt span a real Collector receives for a rejected
// load has the bpf.verifier.log event with that load's log and the
// summary's counters.
func TestLogTailEndToEnd(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	const n = 512

	t.Run("trace", func(t *testing.T) {
		rt := startTrace(t, bin, "trace", "--output", "json", "--log-tail-bytes", fmt.Sprint(n), "--attach", envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
		// Level 2 with 64 instructions: a log longer than the tail.
		rejected, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Rejected, Insns: 64, Name: "vlog_tail_rej", LogLevel: 2, LogSize: 64 << 10})
		if err != nil || rejected.Errno != syscall.EACCES {
			t.Fatalf("rejected load: %v %v", rejected.Errno, err)
		}
		off, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_tail_off"})
		if err != nil || !off.OK() {
			t.Fatalf("load without a log: %v %v", off.Errno, err)
		}
		got := rt.await("vlog_tail_rej", "vlog_tail_off")
		rt.stop()
		if len(rejected.Log) <= n {
			t.Fatalf("the rejected load's log is %d bytes, not longer than the tail", len(rejected.Log))
		}
		want := tracer.SanitizeLogTail(rejected.Log[len(rejected.Log)-n:])
		if r := got["vlog_tail_rej"]; r.LogTail != want || r.Errno != "EACCES" {
			t.Errorf("rejected load's record: errno %q, log_tail\n%q\nwant the log's last %d bytes\n%q", r.Errno, r.LogTail, n, want)
		}
		if r := got["vlog_tail_off"]; r.LogTail != "" {
			t.Errorf("load without a log has log_tail %q", r.LogTail)
		}
	})

	t.Run("serve", func(t *testing.T) {
		s := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"), "--log-tail-bytes="+fmt.Sprint(n))
		ok, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_tail_ok", LogLevel: 1, LogSize: 4096})
		if err != nil || !ok.OK() {
			t.Fatalf("load: %v %v", ok.Errno, err)
		}
		stats, parsed := tracer.ParseVerifierStats(ok.Log)
		if !parsed || stats.ProcessedInsns == 0 {
			t.Fatalf("the load's own log has no summary: %q", ok.Log)
		}
		labels := map[string]string{"command": "BPF_PROG_LOAD", "loader": thisComm(t)}
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, families := s.scrape()
			if ms := series(families, "bpf_verifier_processed_insns", labels); len(ms) == 1 && ms[0].GetHistogram().GetSampleCount() > 0 {
				h := ms[0].GetHistogram()
				if h.GetSampleCount() != 1 || h.GetSampleSum() != float64(stats.ProcessedInsns) {
					t.Errorf("bpf_verifier_processed_insns count %d sum %v, want 1 and %d (the load's own log: %q)",
						h.GetSampleCount(), h.GetSampleSum(), stats.ProcessedInsns, ok.Log)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no bpf_verifier_processed_insns%v after 30s:\n%s", labels, s.log())
			}
			time.Sleep(200 * time.Millisecond)
		}
		s.stop()
	})

	t.Run("span", func(t *testing.T) {
		col := backends.StartCollector(t)
		s := startServer(t, bin, []string{"OTEL_TRACES_EXPORTER=otlp", "OTEL_METRICS_EXPORTER=none",
			"OTEL_EXPORTER_OTLP_PROTOCOL=grpc", "OTEL_EXPORTER_OTLP_ENDPOINT=http://" + col.GRPCEndpoint(), "OTEL_BSP_SCHEDULE_DELAY=100"},
			"--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"), "--log-tail-bytes="+fmt.Sprint(n))
		rejected, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Rejected, Name: "vlog_tail_span", LogLevel: 1, LogSize: 4096})
		if err != nil || rejected.Errno != syscall.EACCES {
			t.Fatalf("rejected load: %v %v", rejected.Errno, err)
		}
		stats, parsed := tracer.ParseVerifierStats(rejected.Log)
		if !parsed {
			t.Fatalf("the load's own log has no summary: %q", rejected.Log)
		}
		spans := col.WaitForSpans(t, func(sp []backends.Span) bool {
			for _, s := range sp {
				if s.Name == "BPF_PROG_LOAD" && s.Attributes["bpf.prog.name"] == "vlog_tail_span" {
					return true
				}
			}
			return false
		}, 60*time.Second)
		for _, sp := range spans {
			if sp.Name != "BPF_PROG_LOAD" || sp.Attributes["bpf.prog.name"] != "vlog_tail_span" {
				continue
			}
			if len(sp.Events) != 1 || sp.Events[0].Name != "bpf.verifier.log" || sp.Events[0].Attributes["bpf.verifier.log.tail"] != tracer.SanitizeLogTail(rejected.Log) {
				t.Errorf("attempt span events %+v, want bpf.verifier.log with the load's own log %q", sp.Events, rejected.Log)
			}
			for k, v := range map[string]uint64{"bpf.verifier.processed_insns": stats.ProcessedInsns, "bpf.verifier.total_states": stats.TotalStates,
				"bpf.verifier.peak_states": stats.PeakStates} {
				if sp.Attributes[k] != int64(v) {
					t.Errorf("attempt span %s = %v, want %d", k, sp.Attributes[k], v)
				}
			}
		}
		s.stop()
	})
}
