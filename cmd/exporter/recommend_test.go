package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/sizing"
)

// TestRecommendationsForImitatedLoaders runs libbpf-, cilium/ebpf- and
// aya-style loads of a program whose log is known, and checks what
// /recommendations and `exporter recommend --from` say of each.
func TestRecommendationsForImitatedLoaders(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	s := startServer(t, bin, nil, "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"), "--default=team=262144")

	p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 1500, Name: "vlog_rec", LogLevel: loadgen.LogLevel2}
	attempts := map[string][]loadgen.Result{}
	for loader, comm := range map[loadgen.Loader]string{loadgen.Libbpf: "libbpf-imit", loadgen.CiliumEBPF: "cilium-imit", loadgen.Aya: "aya-imit"} {
		p.Comm = comm
		rs, err := loadgen.Imitate(loader, p)
		if err != nil {
			t.Fatal(err)
		}
		if !rs[len(rs)-1].OK() {
			t.Fatalf("%s: last attempt %v", loader, rs[len(rs)-1].Errno)
		}
		attempts[comm] = rs
	}
	// The log every loader eventually got is the need: length + NUL.
	last := attempts["aya-imit"][len(attempts["aya-imit"])-1]
	need := uint32(len(last.Log)) + 1

	var rec sizing.Recommendations
	byLoader := map[string]sizing.LoaderReport{}
	deadline := time.Now().Add(60 * time.Second)
	for len(byLoader) < 3 {
		body, err := s.get("/recommendations")
		if err != nil {
			t.Fatal(err)
		}
		rec = sizing.Recommendations{}
		if err := json.Unmarshal([]byte(body), &rec); err != nil {
			t.Fatalf("/recommendations is not JSON: %v\n%s", err, body)
		}
		byLoader = map[string]sizing.LoaderReport{}
		for _, l := range rec.Loaders {
			if strings.HasSuffix(l.Loader, "-imit") && l.Loads == 1 {
				byLoader[l.Loader] = l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("recommendations: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}

	wantRec := uint64(128)
	for wantRec < uint64(need) {
		wantRec <<= 1
	}
	for comm, l := range byLoader {
		if l.NeedsKnown != 1 || l.NeedMaxBytes != need || l.Recommended["1"] != wantRec || l.Recommended["0.99"] != wantRec {
			t.Errorf("%s: needs %d max %d recommended %v; want the need %d and %d", comm, l.NeedsKnown, l.NeedMaxBytes, l.Recommended, need, wantRec)
		}
		if want := uint64(len(attempts[comm]) - 1); l.Truncated != want {
			t.Errorf("%s: %d truncated, the loader had %d ENOSPC", comm, l.Truncated, want)
		}
		defs := map[string]sizing.DefaultReport{}
		for _, d := range l.Defaults {
			defs[d.Name] = d
		}
		if d := defs["cilium/ebpf (start)"]; d.TruncatedFraction != 1 {
			t.Errorf("%s: 64 KiB would truncate %v of logs, want all (need %d)", comm, d.TruncatedFraction, need)
		}
		if d := defs["team"]; d.TruncatedFraction != 0 || d.AvgWasteBytes != float64(262144-need) {
			t.Errorf("%s: the --default team=262144 report %+v, want no truncation and %d wasted", comm, d, 262144-need)
		}
	}
	if v := byLoader["libbpf-imit"].Verdict; !strings.HasPrefix(string(v), "oversized by ") {
		t.Errorf("libbpf (16 MiB for a %d-byte log): verdict %q", need, v)
	}
	for _, comm := range []string{"cilium-imit", "aya-imit"} {
		if v := byLoader[comm].Verdict; v != sizing.VerdictUndersized {
			t.Errorf("%s: verdict %q, want undersized", comm, v)
		}
	}

	// libbpf's attr size 128 hides log_true_size: its need is the measured one.
	_, families := s.scrape()
	if ms := series(families, "bpf_verifier_log_required_bytes", map[string]string{"loader": "libbpf-imit", "source": "measured"}); len(ms) != 1 || ms[0].GetHistogram().GetSampleSum() != float64(need) {
		t.Errorf("libbpf-imit required_bytes{source=measured}: %v", ms)
	}

	out, err := exec.Command(bin, "recommend", "--from", "http://"+s.addr).CombinedOutput()
	if err != nil {
		t.Fatalf("exporter recommend --from: %v\n%s", err, out)
	}
	for _, comm := range []string{"libbpf-imit", "cilium-imit", "aya-imit"} {
		line := lineWith(out, comm)
		if line == "" || !strings.Contains(line, humanBytes(wantRec)) || !strings.Contains(line, string(byLoader[comm].Verdict)) {
			t.Errorf("recommend table row for %s: %q\n%s", comm, line, out)
		}
	}
	s.stop()
}

func lineWith(out []byte, s string) string {
	for _, l := range bytes.Split(out, []byte("\n")) {
		if bytes.Contains(l, []byte(s+" ")) && !bytes.Contains(l, []byte(":")) {
			return string(l)
		}
	}
	return ""
}

// recommendWhileLoading runs `exporter recommend --duration=10m` with
// args, calls load once it has attached, then ends the trace with SIGINT;
// it returns the output. The chain window is an hour: a chain that has
// not ended is still open at the end, however slow the machine.
func recommendWhileLoading(t *testing.T, bin string, load func(), args ...string) []byte {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"recommend", "--duration=10m", "--chain-window=1h", "--attach=" + envOr("VERIFIERLOG_TEST_ATTACH", "auto")}, args...)...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	var log []byte
	for !bytes.Contains(log, []byte("msg=attached")) {
		n, err := stderr.Read(buf)
		if err != nil {
			t.Fatalf("exporter recommend exited before attaching: %v\n%s", err, log)
		}
		log = append(log, buf[:n]...)
	}
	go func() { _, _ = bytes.NewBuffer(nil).ReadFrom(stderr) }()
	load()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exporter recommend: %v", err)
	}
	return stdout.Bytes()
}

// TestRecommendTracesForDuration runs `exporter recommend --duration`, ended
// early by SIGINT, and loads while it traces: a cilium/ebpf-style chain
// that ends, and an ENOSPC with no log_true_size (attr size 128) and no
// retry, whose chain is still open when the trace ends. The report covers
// the time traced, not the 24 h window, and shows the open chain with the
// need it proved ("above 256 B") in the table too.
func TestRecommendTracesForDuration(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	var rs []loadgen.Result
	load := func() {
		var err error
		rs, err = loadgen.Imitate(loadgen.CiliumEBPF, loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 1500, Name: "vlog_dur", LogLevel: 2, Comm: "dur-imit"})
		if err != nil || len(rs) != 2 {
			t.Fatalf("imitated load: %v, %d attempts", err, len(rs))
		}
		r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_dur_open", LogLevel: 2, LogSize: 256, AttrSize: 128, Comm: "dur-open"})
		if err != nil || r.Errno != syscall.ENOSPC {
			t.Fatalf("ENOSPC load: %v %v", r.Errno, err)
		}
	}

	out := recommendWhileLoading(t, bin, load, "--output=json")
	var rec struct {
		sizing.Recommendations
		ObservedSeconds float64 `json:"observed_seconds"`
	}
	if err := json.Unmarshal(out, &rec); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if rec.WindowSeconds != sizing.DefaultRecommendWindow.Seconds() || rec.ObservedSeconds <= 0 || rec.ObservedSeconds >= 600 {
		t.Errorf("window %vs, observed %vs: want the time traced, ended by SIGINT before --duration=10m", rec.WindowSeconds, rec.ObservedSeconds)
	}
	byLoader := map[string]int{}
	for i, l := range rec.Loaders {
		byLoader[l.Loader] = i
	}
	if i, ok := byLoader["dur-imit"]; !ok {
		t.Errorf("no dur-imit in %s", out)
	} else if l := rec.Loaders[i]; l.Loads != 1 || l.Truncated != 1 || l.NeedMaxBytes != uint32(len(rs[1].Log))+1 || l.OpenChains != 0 || l.FirstBufferBytes != rs[0].LogSize {
		t.Errorf("dur-imit: %+v; want one ended chain whose first buffer was %d", l, rs[0].LogSize)
	}
	if i, ok := byLoader["dur-open"]; !ok {
		t.Errorf("no dur-open in %s", out)
	} else if l := rec.Loaders[i]; l.Loads != 0 || l.OpenChains != 1 || l.OpenNeedAboveBytes != 256 || l.Truncated != 1 {
		t.Errorf("dur-open: %+v, want no ended chain and one open chain whose need is above 256", l)
	}

	out = recommendWhileLoading(t, bin, load)
	first, _, _ := strings.Cut(string(out), "\n")
	if !strings.HasPrefix(first, "Window: ") || !strings.HasSuffix(first, ", traced by this command") || strings.Contains(first, "24h") {
		t.Errorf("window line %q, want the time traced", first)
	}
	if f := strings.Fields(lineWith(out, "dur-open")); len(f) < 9 || f[3] != "1" || f[7] != ">256B" || f[8] != ">256B" {
		t.Errorf("dur-open row %q: want OPEN 1 and MAX_NEED, RECOMMEND >256B\n%s", lineWith(out, "dur-open"), out)
	}
}

// TestRecommendTable checks the printed report without a kernel: the
// window line says what was watched, a need nobody measured shows its
// lower bound where it exceeds the known ones, and the lines of what each
// default would do fit 100 columns.
func TestRecommendTable(t *testing.T) {
	defaults := func(known uint64) []sizing.DefaultReport {
		var out []sizing.DefaultReport
		for _, d := range append(sizing.WellKnownDefaults, sizing.Default{Name: "a-very-long-team-default-name-indeed", Bytes: 1<<32 - 1}) {
			out = append(out, sizing.DefaultReport{Default: d, TruncatedFraction: 0.5, AvgWasteBytes: 123456789})
		}
		return out
	}
	rep := report{WindowSeconds: 86400, ObservedSeconds: 20, traced: true, Loaders: []sizing.LoaderReport{
		{Command: "BPF_PROG_LOAD", Loader: "cilium-agent", Loads: 3, NeedsKnown: 3, Truncated: 3,
			NeedP50Bytes: 131072, NeedP99Bytes: 131072, NeedMaxBytes: 122880, Recommended: map[string]uint64{"1": 131072, "0.99": 131072},
			TypicalBufferBytes: 131072, FirstBufferBytes: 65536, Verdict: "undersized", Defaults: defaults(3)},
		{Command: "BPF_PROG_LOAD", Loader: "mixed", Loads: 3, NeedsKnown: 2, Truncated: 1,
			NeedP50Bytes: 4096, NeedP99Bytes: 4096, NeedMaxBytes: 3000, Recommended: map[string]uint64{"1": 4096, "0.99": 4096},
			TypicalBufferBytes: 65536, FirstBufferBytes: 65536, Verdict: "undersized", OpenChains: 1, OpenNeedAboveBytes: 65536, Defaults: defaults(2)},
		{Command: "BPF_BTF_LOAD", Loader: "bpftool", Loads: 1, Truncated: 1,
			TypicalBufferBytes: 256, FirstBufferBytes: 256, Verdict: "undersized", UnknownNeeds: 1, UnknownNeedAboveBytes: 256, Defaults: defaults(0)},
		{Command: "BPF_PROG_LOAD", Loader: "bigbuf", Loads: 9, NeedsKnown: 9,
			NeedP50Bytes: 8192, NeedP99Bytes: 8192, NeedMaxBytes: 5000, Recommended: map[string]uint64{"1": 8192, "0.99": 8192},
			TypicalBufferBytes: 1<<24 - 1, FirstBufferBytes: 1<<24 - 1, Verdict: "oversized by 2048x", Defaults: defaults(9)},
	}}
	var buf bytes.Buffer
	if err := writeRecommendations(&buf, rep); err != nil {
		t.Fatal(err)
	}
	out := buf.Bytes()
	t.Logf("\n%s", out)
	if first, _, _ := strings.Cut(string(out), "\n"); first != "Window: 20s, traced by this command" {
		t.Errorf("window line %q", first)
	}
	row := func(loader string) []string { return strings.Fields(lineWith(out, loader)) }
	// CMD LOADER LOADS OPEN TRUNC P50 P99 MAX RECOMMEND BUF VERDICT
	if f := row("mixed"); len(f) < 11 || f[3] != "1" || f[7] != ">64KiB" || f[8] != ">64KiB" {
		t.Errorf("mixed: %v; want 1 open, and its bound 64 KiB above the known max and recommendation", f)
	}
	if f := row("bpftool"); len(f) < 11 || f[0] != "BTF" || f[5] != "?" || f[7] != ">256B" || f[8] != ">256B" {
		t.Errorf("bpftool: %v; want no known need and the bound >256B", f)
	}
	if f := row("cilium-agent"); len(f) < 11 || f[3] != "0" || f[7] != "120KiB" || f[8] != "128KiB" || f[9] != "64KiB" {
		t.Errorf("cilium-agent: %v; want FIRST_BUF 64KiB, the first attempts' size, not the retries' 128KiB", f)
	}
	_, defaultsPart, ok := strings.Cut(string(out), "What each default would have done")
	if !ok {
		t.Fatalf("no defaults section")
	}
	for _, l := range strings.Split(defaultsPart, "\n") {
		if n := utf8.RuneCountInString(l); n > 100 {
			t.Errorf("%d columns: %q", n, l)
		}
	}
	if strings.Contains(defaultsPart, "bpftool") {
		t.Errorf("a loader with no known need in the defaults section:\n%s", defaultsPart)
	}

	for _, tc := range []struct {
		r    report
		want string
	}{
		{report{WindowSeconds: 86400, ObservedSeconds: 192}, "Window: 3m12s, since the exporter attached (its --recommend-window is 24h0m0s)"},
		{report{WindowSeconds: 86400, ObservedSeconds: 86400}, "Window: 24h0m0s (the exporter's --recommend-window)"},
		{report{WindowSeconds: 86400}, "Window: at most 24h0m0s (the exporter's --recommend-window; it does not say how long it has watched)"},
		{report{WindowSeconds: 86400, ObservedSeconds: 1.25, traced: true}, "Window: 1.25s, traced by this command"},
	} {
		if got := windowLine(tc.r); got != tc.want {
			t.Errorf("windowLine(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}
