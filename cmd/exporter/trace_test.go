package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

var (
	buildOnce sync.Once
	buildDir  string
	builtBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// buildExporter builds the exporter binary once per test run.
func buildExporter(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "verifierlog-exporter-test"); buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "exporter")
		out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// runningTrace is `exporter trace --output json` started by a test.
type runningTrace struct {
	t          *testing.T
	cmd        *exec.Cmd
	records    chan tracer.Record
	stderrDone chan struct{}
	mu         sync.Mutex
	stderr     strings.Builder
}

// startTrace runs argv (the exporter, or a wrapper that execs it) and
// waits until it has attached.
func startTrace(t *testing.T, argv ...string) *runningTrace {
	t.Helper()
	rt := &runningTrace{t: t, cmd: exec.Command(argv[0], argv[1:]...), records: make(chan tracer.Record), stderrDone: make(chan struct{})}
	stdout, err := rt.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := rt.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.cmd.Process.Kill() })

	attached := make(chan struct{})
	go func() {
		defer close(rt.stderrDone)
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			rt.mu.Lock()
			rt.stderr.WriteString(sc.Text() + "\n")
			rt.mu.Unlock()
			if !signalled && strings.Contains(sc.Text(), "msg=attached") {
				close(attached)
				signalled = true
			}
		}
	}()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var r tracer.Record
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Errorf("not a JSON record: %q: %v", sc.Text(), err)
				continue
			}
			rt.records <- r
		}
		close(rt.records)
	}()
	select {
	case <-attached:
	case <-rt.stderrDone:
		t.Fatalf("exporter exited before attaching:\n%s", rt.log())
	case <-time.After(60 * time.Second):
		t.Fatalf("exporter did not attach:\n%s", rt.log())
	}
	return rt
}

func (rt *runningTrace) log() string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.stderr.String()
}

// await returns this process's records whose prog_name is in names.
func (rt *runningTrace) await(names ...string) map[string]tracer.Record {
	rt.t.Helper()
	return rt.awaitPID(os.Getpid(), names...)
}

// awaitPID returns process pid's records whose prog_name is in names.
func (rt *runningTrace) awaitPID(pid int, names ...string) map[string]tracer.Record {
	rt.t.Helper()
	got := map[string]tracer.Record{}
	deadline := time.After(60 * time.Second)
	for len(got) < len(names) {
		select {
		case r, open := <-rt.records:
			if !open {
				rt.t.Fatalf("exporter output ended early:\n%s", rt.log())
			}
			if r.PID == uint32(pid) && slices.Contains(names, r.ProgName) {
				got[r.ProgName] = r
			}
		case <-deadline:
			rt.t.Fatalf("records seen: %v", got)
		}
	}
	return got
}

// stop sends SIGINT and checks for a clean exit.
func (rt *runningTrace) stop() {
	rt.t.Helper()
	if err := rt.cmd.Process.Signal(syscall.SIGINT); err != nil {
		rt.t.Fatal(err)
	}
	for range rt.records {
	}
	<-rt.stderrDone // os/exec: all reads must end before Wait
	if err := rt.cmd.Wait(); err != nil {
		rt.t.Fatalf("exporter exited with %v after SIGINT:\n%s", err, rt.log())
	}
	if !strings.Contains(rt.log(), "msg=detached") {
		rt.t.Errorf("no detach message:\n%s", rt.log())
	}
}

// TestTraceJSONPrintsEachLoadAndDetachesOnSIGINT runs the built binary the
// way a user does, issues loads whose outcome it knows, and checks the JSON
// lines against the kernel's answers.
func TestTraceJSONPrintsEachLoadAndDetachesOnSIGINT(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	rt := startTrace(t, bin, "trace", "--output", "json", "--attach", envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	progs, err := kerneltest.ProgramIDs(rt.cmd.Process.Pid)
	if err != nil || len(progs) == 0 {
		t.Fatalf("exporter holds no BPF programs while attached: %v", err)
	}

	small, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_e2e_small", LogLevel: 2, LogSize: 256})
	if err != nil || small.Errno != syscall.ENOSPC {
		t.Fatalf("small-buffer load: %v %v", small.Errno, err)
	}
	ok, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_e2e_ok", LogLevel: 1, LogSize: 4096})
	if err != nil || !ok.OK() {
		t.Fatalf("load: %v %v", ok.Errno, err)
	}
	got := rt.await("vlog_e2e_small", "vlog_e2e_ok")
	s := got["vlog_e2e_small"]
	if s.Command != "BPF_PROG_LOAD" || s.Errno != "ENOSPC" || !s.Truncated || s.LogMode != "rotating" ||
		s.LogSize != 256 || s.TID != uint32(small.TID) || s.Ret != int64(small.Ret) {
		t.Errorf("small-buffer record: %+v", s)
	}
	if kernelWritesTrueSize() && (s.LogTrueSize == nil || *s.LogTrueSize != small.LogTrueSize || s.LogNeedSource != "kernel") {
		t.Errorf("small-buffer record true size %v source %q, kernel wrote %d", s.LogTrueSize, s.LogNeedSource, small.LogTrueSize)
	}
	if _, err := time.Parse(time.RFC3339Nano, s.Time); err != nil || !strings.HasSuffix(s.Time, "Z") {
		t.Errorf("time %q is not RFC 3339 UTC: %v", s.Time, err)
	}
	o := got["vlog_e2e_ok"]
	if o.Errno != "" || o.Truncated || o.Ret != int64(ok.Ret) || o.ProgType != "socket_filter" {
		t.Errorf("ok record: %+v", o)
	}

	rt.stop()
	if left := kerneltest.ProgramsGone(progs, 10*time.Second); len(left) != 0 {
		t.Errorf("programs %v still loaded after the exporter exited", left)
	}
}

// TestTraceMountsTracefsWhenMissing runs the exporter in a mount namespace
// without tracefs: in tracepoint mode it must mount it and trace.
func TestTraceMountsTracefsWhenMissing(t *testing.T) {
	kerneltest.Require(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		kerneltest.MissingTool(t, "unshare", "apt-get install util-linux")
	}
	bin := buildExporter(t)
	script := `umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null
grep -q ' tracefs ' /proc/self/mounts && { echo "tracefs still mounted" >&2; exit 99; }
exec "$0" trace --output json --attach tracepoint`
	rt := startTrace(t, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, bin)
	r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_e2e_tfs"})
	if err != nil || !r.OK() {
		t.Fatalf("load: %v %v", r.Errno, err)
	}
	if rec := rt.await("vlog_e2e_tfs")["vlog_e2e_tfs"]; rec.Ret != int64(r.Ret) || rec.AttachMode != "tracepoint" {
		t.Errorf("record %+v", rec)
	}
	rt.stop()
}

func kernelWritesTrueSize() bool {
	r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, LogLevel: 1, NoLogBuf: true})
	return err == nil && r.OK() && r.LogTrueSize > 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func TestTableRowsAreAlignedAndHuman(t *testing.T) {
	var buf bytes.Buffer
	tw := newTableWriter(&buf, tracer.WallClockWithOffset(0))
	if err := tw.header(); err != nil {
		t.Fatal(err)
	}
	ev := tracer.LoadEvent{Command: tracer.CmdProgLoad, ProgType: 1, LogLevel: 2, LogSize: 65536, HasLogBuf: true,
		LogTrueSize: 70000, LogTrueSizeKnown: true, Ret: -28, PID: 1, TID: 2, StartNs: 0, EndNs: 1500000}
	copy(ev.Comm[:], "cilium-agent")
	copy(ev.ProgName[:], "tail_call_xdp")
	if err := tw.row(&ev); err != nil {
		t.Fatal(err)
	}
	btf := tracer.LoadEvent{Command: tracer.CmdBTFLoad, LogLevel: 1, Ret: 5}
	if err := tw.row(&btf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines:\n%s", len(lines), buf.String())
	}
	width := len([]rune(lines[0]))
	for _, l := range lines[1:] {
		if len([]rune(l)) != width {
			t.Errorf("line width %d, header %d:\n%s", len([]rune(l)), width, buf.String())
		}
	}
	for _, want := range []string{"64KiB", "68.4KiB", "ENOSPC", "yes", "rotating", "socket_filter", "cilium-agent", "1.5ms"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row lacks %q: %s", want, lines[1])
		}
	}
	if !strings.Contains(lines[2], "query") || !strings.Contains(lines[2], " ? ") || !strings.Contains(lines[2], "BTF") {
		t.Errorf("BTF query row: %s", lines[2])
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0B", 128: "128B", 1000000: "976.6KiB", 65536: "64KiB",
		16 << 20: "16MiB", 16777215: "16.0MiB", 10 * 1024: "10KiB", 5153: "5153B", 640 << 10: "640KiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestTracePrintsItsHeaderBeforeAnyLoad: an idle `exporter trace` shows its
// table header at once, so that it does not look dead.
func TestTracePrintsItsHeaderBeforeAnyLoad(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	cmd := exec.Command(bin, "trace", "--attach", envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Scan()
		first <- sc.Text()
		for sc.Scan() {
		}
	}()
	// This test issues no load: the header must come by itself.
	select {
	case line := <-first:
		if f := strings.Fields(line); len(f) < 3 || f[0] != "TIME" || f[1] != "COMM" {
			t.Errorf("first line %q, want the header\n%s", line, stderr.String())
		}
	case <-time.After(hangGuard):
		t.Fatalf("no header %v after start, without loads:\n%s", hangGuard, stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit %v after SIGINT:\n%s", err, stderr.String())
	}
}

// TestLoadgenNamesItsThreads: `exporter loadgen` loads under its own comm,
// so that its loads are not counted as the exporter's; --comm overrides
// it. It prints ? where the kernel wrote no log_true_size.
func TestLoadgenNamesItsThreads(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	rt := startTrace(t, bin, "trace", "--output", "json", "--attach", envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	for _, tc := range []struct{ name, comm string }{{"vlog_lg_dflt", ""}, {"vlog_lg_comm", "vlog-mine"}} {
		args := []string{"loadgen", "--name", tc.name}
		want := defaultLoadgenComm
		if tc.comm != "" {
			args, want = append(args, "--comm", tc.comm), tc.comm
		}
		cmd := exec.Command(bin, args...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("exporter %v: %v\n%s", args, err, out)
		}
		if r := rt.awaitPID(cmd.Process.Pid, tc.name)[tc.name]; r.Comm != want {
			t.Errorf("exporter %v: comm %q, want %q", args, r.Comm, want)
		}
	}
	rt.stop()

	// attr size 128 has no room for log_true_size: nothing to print but ?.
	out, err := exec.Command(bin, "loadgen", "--attr-size", "128", "--program", "long", "--log-level", "2", "--log-size", "256").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "result=ENOSPC") || !strings.Contains(string(out), "log_true_size=? ") {
		t.Errorf("attr size 128: %v\n%s", err, out)
	}
	if kernelWritesTrueSize() {
		out, err := exec.Command(bin, "loadgen", "--program", "long", "--log-level", "2", "--log-size", "256").CombinedOutput()
		if err != nil || !regexp.MustCompile(`log_true_size=[1-9][0-9]* `).Match(out) {
			t.Errorf("attr size 144 on a kernel that writes log_true_size: %v\n%s", err, out)
		}
	}
}
