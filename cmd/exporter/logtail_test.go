package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/alecthomas/kingpin/v2"

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
