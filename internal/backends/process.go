package backends

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that was free when it was asked
// for. Another process may take it before the caller binds it; the Start
// functions of this package retry with new ports when that happens.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr is FreePort as a "127.0.0.1:port" address.
func FreeAddr() (string, error) {
	p, err := FreePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// process is a back-end binary running under a test, its output going to a
// log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // its exit status, once done is closed
}

func startProcess(name, logPath string, bin string, args ...string) (*process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Dir(logPath)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Do not outlive a test binary that dies without running its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitReady polls ready until it returns nil, the process exits, or timeout
// passes.
func (p *process) waitReady(timeout time.Duration, ready func() error) error {
	err := WaitReady(timeout, p.done, ready)
	if errors.Is(err, ErrExited) {
		return fmt.Errorf("%s exited before it was ready (%v)", p.name, p.err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	return nil
}

// ErrExited: the process WaitReady watched ended before it was ready.
var ErrExited = errors.New("exited before it was ready")

// WaitReady polls ready every 50 ms until it returns nil, exited is closed
// (ErrExited), or timeout passes (the last error from ready). Every test
// that starts a server waits with it; exited may be nil.
func WaitReady(timeout time.Duration, exited <-chan struct{}, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return ErrExited
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM, waits for the process to exit (SIGKILL after a grace
// period) and returns an error if it did not exit cleanly.
func (p *process) stop() error {
	if p.exited() {
		return fmt.Errorf("%s had exited before the test ended (%v)", p.name, p.err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within 15s of SIGTERM; killed", p.name)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) && ee.Exited() && ee.ExitCode() != 0 {
		return fmt.Errorf("%s exited with %v after SIGTERM", p.name, p.err)
	}
	return nil
}

// logTail returns the last n bytes of the process's output.
func (p *process) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
		b = append([]byte("...\n"), b...)
	}
	return string(b)
}

// startWithRetry starts a back-end up to three times (startRetrying),
// stops it at t.Cleanup, and fails t if it cannot be started.
func startWithRetry(t testing.TB, try func(attempt int) (*process, error)) *process {
	t.Helper()
	p, err := startRetrying(try)
	if err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, p)
	return p
}

// stopAtCleanup stops p at t.Cleanup, failing t if it had exited or does
// not exit cleanly, and logs its output if t failed.
func stopAtCleanup(t testing.TB, p *process) {
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("%v; its output (%s):\n%s", err, p.logPath, p.logTail(4000))
		} else if t.Failed() {
			t.Logf("%s output (%s):\n%s", p.name, p.logPath, p.logTail(4000))
		}
	})
}

// startRetrying starts a back-end up to three times: a port chosen by
// FreePort may be taken by someone else before the back-end binds it.
func startRetrying(try func(attempt int) (*process, error)) (*process, error) {
	var errs []error
	for attempt := 1; attempt <= 3; attempt++ {
		p, err := try(attempt)
		if err == nil {
			return p, nil
		}
		if p != nil {
			_ = p.stop()
			err = fmt.Errorf("%w; its output (%s):\n%s", err, p.logPath, p.logTail(4000))
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
	}
	return nil, errors.Join(errs...)
}

// dialable reports whether something accepts TCP connections at addr.
func dialable(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}
