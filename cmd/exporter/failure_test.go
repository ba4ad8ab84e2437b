package main

// Failing the way an SRE can act on: a listener or web config
// that cannot work ends serve at start with one ERROR line and exit 1,
// before anything is attached; a later failure of an HTTP server or of the
// tracer ends it the orderly way (detach, flush, exit non-zero); and
// without privileges, one line says which capabilities are missing.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/promslog"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/tracer"
)

// hangGuard bounds how long a test waits for an exporter that should exit
// by itself. It is not a timing assertion: an exporter that does not exit
// on its own never does, and the machine may be slow.
const hangGuard = 60 * time.Second

// exited is how a process ended: its exit code and its stderr.
type exited struct {
	code   int
	stderr string
}

// runToExit runs cmd and waits for it to exit by itself; the test fails if
// it is still running after hangGuard.
func runToExit(t *testing.T, cmd *exec.Cmd) exited {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return exited{code: cmd.ProcessState.ExitCode(), stderr: stderr.String()}
	case <-time.After(hangGuard):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%v still running after %v, which it should have ended by itself:\n%s", cmd.Args, hangGuard, stderr.String())
	}
	return exited{}
}

// errorLines are the lines of a logfmt log at level ERROR.
func errorLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=ERROR") {
			out = append(out, l)
		}
	}
	return out
}

// wantOneError checks that e is exit 1 with exactly one ERROR line, and
// that it contains every one of want.
func wantOneError(t *testing.T, e exited, want ...string) string {
	t.Helper()
	lines := errorLines(e.stderr)
	if e.code != 1 || len(lines) != 1 {
		t.Fatalf("exit %d with %d ERROR lines, want exit 1 and one:\n%s", e.code, len(lines), e.stderr)
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Errorf("the ERROR line does not say %q:\n%s", w, lines[0])
		}
	}
	return lines[0]
}

// TestServeExitsAtStartWhenItCannotListen: the listeners and the web config
// are checked before the tracer attaches, so none of these needs root: the
// exporter must not get as far as attaching.
func TestServeExitsAtStartWhenItCannotListen(t *testing.T) {
	bin := buildExporter(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"address in use", []string{"--web.listen-address=" + taken.Addr().String()}, []string{taken.Addr().String(), "address already in use"}},
		{"one of two addresses in use", []string{"--web.listen-address=" + freeAddr(t), "--web.listen-address=" + taken.Addr().String()}, []string{"address already in use"}},
		{"invalid port", []string{"--web.listen-address=:99999"}, []string{"99999", "invalid port"}},
		{"missing web config", []string{"--web.listen-address=" + freeAddr(t), "--web.config.file=/nonexistent/web.yml"}, []string{"--web.config.file=/nonexistent/web.yml", "no such file"}},
		{"invalid web config", []string{"--web.listen-address=" + freeAddr(t), "--web.config.file=" + writeFile(t, "web.yml", "tls_server_config:\n  cert_file: /nonexistent.pem\n")}, []string{"--web.config.file="}},
		{"systemd socket without one", []string{"--web.systemd-socket"}, []string{"--web.systemd-socket", "LISTEN_FDS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, append(tc.args, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))...)
			cmd.Env = append(os.Environ(), "LISTEN_PID=", "LISTEN_FDS=")
			e := runToExit(t, cmd)
			wantOneError(t, e, tc.want...)
			if strings.Contains(e.stderr, "msg=attached") || strings.Contains(e.stderr, "Listening on") {
				t.Errorf("it attached or listened before failing:\n%s", e.stderr)
			}
			if n := strings.Count(strings.TrimSpace(e.stderr), "\n") + 1; n != 1 {
				t.Errorf("%d lines on stderr, want the one ERROR line:\n%s", n, e.stderr)
			}
		})
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestServeEndsWhenAnHTTPServerFails passes the exporter a listening
// socket the way systemd does, and once it serves, shuts that socket down
// from this process: the exporter's accept fails for good. It must not
// trace on unscraped: detach, flush, exit 1 with one ERROR line.
func TestServeEndsWhenAnHTTPServerFails(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// LISTEN_PID must be the exporter's own pid: sh sets it to its own,
	// then execs the exporter in its place.
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, bin, "--web.systemd-socket", "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	cmd.ExtraFiles = []*os.File{f} // fd 3, SD_LISTEN_FDS_START
	s := &runningServer{t: t, addr: l.Addr().String(), base: "http://" + l.Addr().String(), done: make(chan struct{}), client: http.DefaultClient}
	s.startCmd(cmd)
	progs, err := kerneltest.ProgramIDs(s.cmd.Process.Pid)
	if err != nil || len(progs) == 0 {
		t.Fatalf("no programs held: %v", err)
	}

	if err := unix.Shutdown(int(f.Fd()), unix.SHUT_RDWR); err != nil {
		t.Fatal(err)
	}
	code := s.waitExit()
	e := exited{code: code, stderr: s.log()}
	wantOneError(t, e, "http server on "+l.Addr().String())
	if !strings.Contains(e.stderr, "msg=detached") {
		t.Errorf("no detach in the log:\n%s", e.stderr)
	}
	if left := kerneltest.ProgramsGone(progs, 10*time.Second); len(left) != 0 {
		t.Errorf("programs %v still loaded after the exporter exited", left)
	}
}

// waitExit waits for the server to exit by itself and returns its exit
// code; the test fails if it is still running after hangGuard.
func (s *runningServer) waitExit() int {
	s.t.Helper()
	exited := make(chan error, 1)
	go func() {
		<-s.done
		exited <- s.cmd.Wait()
	}()
	select {
	case <-exited:
		return s.cmd.ProcessState.ExitCode()
	case <-time.After(hangGuard):
		s.t.Fatalf("exporter still running %v after its failure:\n%s", hangGuard, s.log())
	}
	return -1
}

// syncBuffer is a log destination the test reads while the logger writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// parseServe is the serve command as main builds it, with args parsed.
func parseServe(t *testing.T, args ...string) *serveCommand {
	t.Helper()
	app := kingpin.New("exporter", "")
	c := newServeCommand(app)
	if _, err := app.Parse(append([]string{"serve"}, args...)); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestServeEndsWhenTheTracerFails runs serve in this process with a tracer
// whose Run fails while attached (as a ring-buffer read error would): serve
// must return that error, detach and stop serving, without a signal.
func TestServeEndsWhenTheTracerFails(t *testing.T) {
	kerneltest.Require(t)
	addr := freeAddr(t)
	c := parseServe(t, "--web.listen-address="+addr, "--no-drop-capabilities", "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
	before, err := kerneltest.ProgramIDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	running := make(chan struct{})
	fail := make(chan struct{})
	c.runTracer = func(ctx context.Context, _ *tracer.Tracer, _ func(*tracer.LoadEvent)) error {
		close(running)
		select {
		case <-fail:
			return errors.New("read ring buffer: injected failure")
		case <-ctx.Done():
			return nil
		}
	}
	var log syncBuffer
	logger := promslog.New(&promslog.Config{Writer: &log})
	returned := make(chan error, 1)
	go func() { returned <- c.run(context.Background(), logger, buildInfo()) }()

	select {
	case <-running:
	case err := <-returned:
		t.Fatalf("serve returned before running the tracer: %v\n%s", err, log.String())
	case <-time.After(hangGuard):
		t.Fatalf("the tracer never ran:\n%s", log.String())
	}
	s := &runningServer{t: t, addr: addr, base: "http://" + addr, client: http.DefaultClient}
	if err := backends.WaitReady(hangGuard, nil, func() error { _, err := s.get("/healthz"); return err }); err != nil {
		t.Fatalf("not serving: %v\n%s", err, log.String())
	}
	now, err := kerneltest.ProgramIDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	progs := map[uint32]bool{}
	for id := range now {
		if !before[id] {
			progs[id] = true
		}
	}
	if len(progs) == 0 {
		t.Fatal("serve holds no programs while attached")
	}

	close(fail)
	select {
	case err := <-returned:
		if err == nil || !strings.Contains(err.Error(), "tracer: read ring buffer: injected failure") {
			t.Errorf("serve returned %v, want the tracer's failure", err)
		}
	case <-time.After(hangGuard):
		t.Fatalf("serve still running %v after its tracer failed:\n%s", hangGuard, log.String())
	}
	if left := kerneltest.ProgramsGone(progs, 10*time.Second); len(left) != 0 {
		t.Errorf("programs %v still loaded after serve returned", left)
	}
	if !strings.Contains(log.String(), "msg=detached") {
		t.Errorf("no detach in the log:\n%s", log.String())
	}
	if _, err := s.get("/healthz"); err == nil {
		t.Errorf("still serving after serve returned")
	}
}

// TestWithoutCapabilitiesOneErrorNamesThem runs serve and trace with no
// capability, as uid 0 (a container whose capabilities were dropped) and
// as an ordinary user: each exits 1 with one line naming CAP_BPF and
// CAP_PERFMON, and nothing about the memlock rlimit, which is not what is
// missing.
func TestWithoutCapabilitiesOneErrorNamesThem(t *testing.T) {
	kerneltest.Require(t)
	if os.Geteuid() != 0 {
		kerneltest.Unavailable(t, "needs root to start the exporter as another user and without capabilities")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		kerneltest.MissingTool(t, "setpriv", "apt-get install util-linux")
	}
	// An ordinary user must be able to run the binary: the build
	// directory is private.
	dir, err := os.MkdirTemp("", "verifierlog-nocaps")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "exporter")
	b, err := os.ReadFile(buildExporter(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	noCaps := []string{"--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"}
	for _, who := range []struct {
		name string
		priv []string
	}{
		{"uid 0", noCaps},
		{"uid 65534", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups"}, noCaps...)},
	} {
		for _, cmd := range []struct {
			name string
			args []string
		}{
			{"serve", []string{"--web.listen-address=127.0.0.1:0"}},
			{"trace", []string{"trace"}},
			{"recommend", []string{"recommend", "--duration=1s"}},
		} {
			args := cmd.args
			t.Run(fmt.Sprintf("%s %s", who.name, cmd.name), func(t *testing.T) {
				argv := append(append(append([]string{}, who.priv...), "--", bin), args...)
				argv = append(argv, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
				e := runToExit(t, exec.Command(setpriv, argv...))
				line := wantOneError(t, e, "CAP_BPF", "CAP_PERFMON", "operation not permitted")
				if strings.Contains(strings.ToLower(e.stderr), "memlock") {
					t.Errorf("the log mentions memlock, which is not what is missing:\n%s", e.stderr)
				}
				t.Log(line)
			})
		}
	}
}
