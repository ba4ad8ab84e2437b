package deploy

import (
	"bufio"
	"debug/elf"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
)

// moduleRoot is the repository root, the parent of deploy/ (go test runs a
// package's tests in its directory).
func moduleRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root %s: %v", root, err)
	}
	return root
}

// The image's build line, read from build-image.sh, run once per test
// binary: the runtime tests use exactly the binary the image would hold.
var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// buildVersion is passed as build-image.sh's VERSION; the scrape test checks
// it reaches verifierlog_exporter_build_info.
const buildVersion = "deploytest"

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// exporterBinary builds the exporter as the image gets it (build-image.sh's
// go build line, run by sh from the module root for this machine's
// architecture, with the output redirected to a temporary directory) and
// returns its path.
func exporterBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		run, out := imageBuildLine(t)
		if buildDir, buildErr = os.MkdirTemp("", "verifierlog-deploy-"); buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "exporter")
		line := strings.Replace(run, "-o "+out, `-o "$OUT"`, 1)
		cmd := exec.Command("sh", "-c", line)
		cmd.Dir = moduleRoot(t)
		cmd.Env = append(os.Environ(), "OUT="+buildBin, "VERSION="+buildVersion, "arch="+runtime.GOARCH)
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("sh -c %q: %v\n%s", line, err, b)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// checkStatic fails t unless path is an ELF executable without an
// interpreter or shared-library dependencies (what distroless/static and
// scratch can run).
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s is not static: it has a %v program header", path, p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", path, libs)
	}
}

// server is an exporter (serve) started by a test.
type server struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	mu   sync.Mutex
	log  strings.Builder
	done chan struct{}
}

// startExporter runs argv (the exporter, or a wrapper that execs it) with
// --web.listen-address on a free loopback port appended, and waits until
// /healthz answers 200. The process is stopped with SIGTERM at cleanup.
func startExporter(t *testing.T, env []string, argv ...string) *server {
	t.Helper()
	addr, err := backends.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, addr: addr, done: make(chan struct{})}
	// Without the new-series hold, so that a load shows at once.
	argv = append(argv, "--web.listen-address="+addr, "--metrics.new-series-hold=0")
	s.cmd = exec.Command(argv[0], argv[1:]...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stdout = s.cmd.Stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			s.mu.Lock()
			s.log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
		}
		_ = s.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
			t.Errorf("exporter did not exit within 20s of SIGTERM:\n%s", s.output())
		}
		if t.Failed() {
			t.Logf("exporter output:\n%s", s.output())
		}
	})
	var health string
	if err := backends.WaitReady(60*time.Second, s.done, func() error {
		body, err := s.get("/healthz")
		health = body
		return err
	}); err != nil {
		t.Fatalf("exporter not serving /healthz: %v\n%s", err, s.output())
	}
	t.Logf("exporter at %s: %s", addr, strings.TrimSpace(health))
	return s
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

func (s *server) get(path string) (string, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + s.addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), nil
}

// scrape parses /metrics into metric families.
func (s *server) scrape() (map[string]*dto.MetricFamily, error) {
	body, err := s.get("/metrics")
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(strings.NewReader(body))
}

// waitScrape scrapes every 100ms until ok holds, and fails t after timeout.
func (s *server) waitScrape(ok func(map[string]*dto.MetricFamily) bool, timeout time.Duration) map[string]*dto.MetricFamily {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		fams, err := s.scrape()
		if err == nil && ok(fams) {
			return fams
		}
		if time.Now().After(deadline) {
			var names []string
			for n := range fams {
				names = append(names, n)
			}
			s.t.Fatalf("scrape not as expected within %v (last error %v); families: %v", timeout, err, names)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loadgen runs `exporter loadgen args...` and fails t if it fails.
func loadgen(t *testing.T, bin string, args ...string) {
	t.Helper()
	out, err := exec.Command(bin, append([]string{"loadgen"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("exporter loadgen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testComm is the loader name (thread comm, at most 15 bytes) of this test
// binary's loads, so that loads of other processes on the host (other
// tracers' tests) cannot be mistaken for ours.
func testComm(tag string) string {
	c := fmt.Sprintf("vld%s%d", tag, os.Getpid())
	if len(c) > 15 {
		c = c[:15]
	}
	return c
}

// sample returns the value of the series of family name whose labels
// include want (summing a counter's or gauge's value, or a histogram's
// count, over all matching series), and whether any matched.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	var sum float64
	found := false
metrics:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue metrics
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, found
}

// procStatus returns the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	st := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st
}

// Capability numbers (linux/capability.h) of the capabilities the
// deployments name.
var capNumbers = map[string]uint{
	"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "KILL": 5,
	"SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13,
	"IPC_LOCK": 14, "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_PTRACE": 19,
	"SYS_ADMIN": 21, "SYS_RESOURCE": 24, "SYSLOG": 34, "PERFMON": 38, "BPF": 39,
}

func capMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	var m uint64
	for _, c := range caps {
		n, ok := capNumbers[strings.TrimPrefix(strings.ToUpper(c), "CAP_")]
		if !ok {
			t.Fatalf("unknown capability %q", c)
		}
		m |= 1 << n
	}
	return m
}

// sandbox describes how a deployment runs the exporter: the uid, the
// capabilities it holds (as bounding, permitted and effective set; for a
// non-root uid also as ambient set, which is how it keeps them across
// exec), no_new_privs, and a read-only view of /, /sys and tracefs.
type sandbox struct {
	uid  int
	caps []string
	env  []string
	args []string
}

// start runs the exporter in s: in a private mount namespace (so that the
// read-only remounts touch nothing outside it) through setpriv(1). It
// checks that the exporter, started with exactly the capabilities of s,
// attached with them and then kept only CAP_BPF and CAP_PERFMON, under its
// uid, with no_new_privs.
func (s sandbox) start(t *testing.T, bin string) *server {
	t.Helper()
	for _, tool := range []string{"unshare", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			kerneltest.MissingTool(t, tool, "apt-get install util-linux")
		}
	}
	var lower []string
	for _, c := range s.caps {
		lower = append(lower, "+"+strings.ToLower(strings.TrimPrefix(strings.ToUpper(c), "CAP_")))
	}
	set := "-all," + strings.Join(lower, ",")
	priv := []string{"setpriv", "--no-new-privs", "--bounding-set=" + set}
	if s.uid != 0 {
		priv = append(priv, fmt.Sprintf("--reuid=%d", s.uid), fmt.Sprintf("--regid=%d", s.uid), "--clear-groups",
			"--inh-caps="+set, "--ambient-caps="+set)
	} else {
		// uid 0 gets its permitted and effective sets from the bounding set
		// at exec, as in a container whose capabilities are dropped to these.
		priv = append(priv, "--inh-caps=-all", "--ambient-caps=-all")
	}
	// remount,bind,ro changes the flags of this namespace's copy of each
	// mount only; the host's mounts stay as they are.
	script := `set -e
mount -o remount,bind,ro /
mount -o remount,bind,ro /sys
if mountpoint -q /sys/kernel/tracing; then mount -o remount,bind,ro /sys/kernel/tracing; fi
exec "$@"`
	argv := append([]string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"}, priv...)
	argv = append(argv, "--", bin)
	argv = append(argv, s.args...)
	srv := startExporter(t, s.env, argv...)

	// Started and attached, the exporter has dropped every capability
	// but CAP_BPF and CAP_PERFMON (cmd/exporter/caps.go); the bounding set
	// shrinks too only where CAP_SETPCAP allowed it.
	st := procStatus(t, srv.cmd.Process.Pid)
	given := capMask(t, s.caps)
	kept := given & capMask(t, []string{"BPF", "PERFMON"})
	bounding := given
	if given&capMask(t, []string{"SETPCAP"}) != 0 {
		bounding = kept
	}
	for k, want := range map[string]uint64{"CapEff": kept, "CapPrm": kept, "CapBnd": bounding} {
		got, err := strconv.ParseUint(st[k], 16, 64)
		if err != nil || got != want {
			t.Fatalf("sandbox: %s = %s, want %016x (given %v, after the drop)", k, st[k], want, s.caps)
		}
	}
	if st["NoNewPrivs"] != "1" {
		t.Fatalf("sandbox: NoNewPrivs = %q", st["NoNewPrivs"])
	}
	if uid := strings.Fields(st["Uid"]); len(uid) == 0 || uid[0] != strconv.Itoa(s.uid) {
		t.Fatalf("sandbox: Uid = %q, want %d", st["Uid"], s.uid)
	}
	if !strings.Contains(string(mustRead(t, fmt.Sprintf("/proc/%d/mountinfo", srv.cmd.Process.Pid))), " / ro,") {
		t.Fatalf("sandbox: / is not read-only for the exporter")
	}
	return srv
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkCountsLoads issues an undersized load under a comm of its own and
// waits until srv counts it.
func checkCountsLoads(t *testing.T, srv *server, bin, tag string) {
	t.Helper()
	comm := testComm(tag)
	loadgen(t, bin, "--program", "long", "--log-level", "2", "--log-size", "256", "--comm", comm)
	srv.waitScrape(func(f map[string]*dto.MetricFamily) bool {
		n, _ := sample(f, "bpf_prog_loads_total", map[string]string{"loader": comm, "result": "ENOSPC"})
		u, _ := sample(f, "bpf_verifier_log_undersized_total", map[string]string{"loader": comm})
		return n >= 1 && u >= 1
	}, 15*time.Second)
}
