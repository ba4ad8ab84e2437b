package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/otel"
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

	var rec otel.Recommendations
	byLoader := map[string]otel.LoaderReport{}
	deadline := time.Now().Add(60 * time.Second)
	for len(byLoader) < 3 {
		body, err := s.get("/recommendations")
		if err != nil {
			t.Fatal(err)
		}
		rec = otel.Recommendations{}
		if err := json.Unmarshal([]byte(body), &rec); err != nil {
			t.Fatalf("/recommendations is not JSON: %v\n%s", err, body)
		}
		byLoader = map[string]otel.LoaderReport{}
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
		defs := map[string]otel.DefaultReport{}
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
	if v := byLoader["libbpf-imit"].Verdict; !strings.HasPrefix(v, "oversized by ") {
		t.Errorf("libbpf (16 MiB for a %d-byte log): verdict %q", need, v)
	}
	for _, comm := range []string{"cilium-imit", "aya-imit"} {
		if v := byLoader[comm].Verdict; v != "undersized" {
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
		if line == "" || !strings.Contains(line, humanBytes(wantRec)) || !strings.Contains(line, byLoader[comm].Verdict) {
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

// TestRecommendTracesForDuration runs `exporter recommend --duration` and
// loads while it traces.
func TestRecommendTracesForDuration(t *testing.T) {
	kerneltest.Require(t)
	bin := buildExporter(t)
	cmd := exec.Command(bin, "recommend", "--duration=5s", "--output=json", "--attach="+envOr("VERIFIERLOG_TEST_ATTACH", "auto"))
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
	rs, err := loadgen.Imitate(loadgen.CiliumEBPF, loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 1500, Name: "vlog_dur", LogLevel: 2, Comm: "dur-imit"})
	if err != nil || len(rs) != 2 {
		t.Fatalf("imitated load: %v, %d attempts", err, len(rs))
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exporter recommend: %v", err)
	}
	var rec otel.Recommendations
	if err := json.Unmarshal(stdout.Bytes(), &rec); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
	}
	for _, l := range rec.Loaders {
		if l.Loader == "dur-imit" {
			if l.Loads != 1 || l.Truncated != 1 || l.NeedMaxBytes != uint32(len(rs[1].Log))+1 {
				t.Errorf("dur-imit: %+v", l)
			}
			return
		}
	}
	t.Fatalf("no dur-imit in %s", stdout.String())
}
