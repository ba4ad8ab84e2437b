package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/alecthomas/kingpin/v2"

	"github.com/verifierlog/exporter/fleet"
)

// runRecommend runs `exporter recommend args...` in-process: its output
// and its error.
func runRecommend(t *testing.T, args ...string) (string, error) {
	t.Helper()
	app := kingpin.New("exporter", "")
	c := newRecommendCommand(app)
	if _, err := app.Parse(append([]string{"recommend"}, args...)); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	var out bytes.Buffer
	err := c.run(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), &out)
	return out.String(), err
}

// fakePrometheus answers /api/v1/query from answers: the first entry whose
// key the query contains gives the result (a JSON vector); it records the
// queries and their time parameter.
type fakePrometheus struct {
	answers []struct{ contains, vector string }
	errType string // if set: every query fails with this error type

	mu      sync.Mutex
	queries []string
	times   map[string]bool
}

func (f *fakePrometheus) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	q := r.Form.Get("query")
	f.mu.Lock()
	f.queries = append(f.queries, q)
	f.times[r.Form.Get("time")] = true
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if f.errType != "" {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"status":"error","errorType":%q,"error":"1:26: parse error: unexpected identifier \"prod\" in label matching"}`, f.errType)
		return
	}
	vector := "[]"
	for _, a := range f.answers {
		if strings.Contains(q, a.contains) {
			vector = a.vector
			break
		}
	}
	fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":%s}}`, vector)
}

func startFake(t *testing.T, f *fakePrometheus) string {
	f.times = map[string]bool{}
	s := httptest.NewServer(f)
	t.Cleanup(s.Close)
	return s.URL
}

func sample(value string, labels ...string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		m[labels[i]] = labels[i+1]
	}
	b, _ := json.Marshal(m)
	return fmt.Sprintf(`{"metric":%s,"value":[1700000000,%q]}`, b, value)
}

func vec(samples ...string) string { return "[" + strings.Join(samples, ",") + "]" }

// TestRecommendPrometheus: `recommend --prometheus` prints, as JSON and as
// the table, the report the queries' results make, every query evaluated
// at one time.
func TestRecommendPrometheus(t *testing.T) {
	agent := []string{"command", "BPF_PROG_LOAD", "loader", "agent"}
	le := func(le, v string) string { return sample(v, append(agent, "le", le)...) }
	f := &fakePrometheus{answers: []struct{ contains, vector string }{
		{"count(group by (instance)", vec(sample("3"))},
		{"count(histogram_count", "[]"},
		{`result="ENOSPC"`, vec(sample("2", agent...))},
		{"unknown_size_total", vec(sample("1", agent...))},
		{"bpf_prog_load_attempts_count", vec(sample("101", agent...))},
		{"required_bytes_bucket", vec(le("2048", "0"), le("4096", "99"), le("1.6777216e+07", "99"), le("1.048576e+06", "100"), le("+Inf", "100"))},
		{"buffer_bytes_bucket", vec(le("65536", "2"), le("1.6777216e+07", "101"), le("+Inf", "101"))},
		{"required_bytes_sum", vec(sample("400000", agent...))},
	}}
	url := startFake(t, f)

	out, err := runRecommend(t, "--prometheus", url, "--selector", `{cluster="prod"}`, "--window", "7d", "--time", "1700000000", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rep fleet.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if rep.Source != "prometheus" || rep.Histograms != fleet.HistogramsClassic || rep.Nodes != 3 || rep.WindowSeconds != 7*86400 ||
		rep.Selector != `{cluster="prod"}` || rep.Time.Unix() != 1700000000 || len(rep.Loaders) != 1 {
		t.Fatalf("report %+v", rep)
	}
	l := rep.Loaders[0]
	if l.Loads != 101 || l.NeedsKnown != 100 || l.Truncated != 2 || l.UnknownNeeds != 1 || l.NeedP50Bytes != 4096 || l.NeedP99Bytes != 4096 ||
		l.NeedMaxAtMostBytes != 1<<20 || l.Recommended["1"] != 1<<20 || l.TypicalBufferAtMostBytes != 16<<20 || l.Verdict != "undersized" {
		t.Errorf("loader %+v", l)
	}
	if len(f.times) != 1 || !f.times["1700000000"] {
		t.Errorf("queries evaluated at %v, want all at 1700000000", f.times)
	}
	for _, q := range f.queries {
		if !strings.Contains(q, `cluster="prod"`) || !strings.Contains(q, "[1w]") && !strings.Contains(q, "[7d]") {
			t.Errorf("query %s: not over the selector and the 7d window", q)
		}
	}
	for _, k := range []string{`"need_max_bytes_at_most"`, `"typical_buffer_bytes_at_most"`, `"truncated_fraction_at_most"`, `"window_seconds"`, `"nodes"`} {
		if !strings.Contains(out, k) {
			t.Errorf("JSON lacks %s:\n%s", k, out)
		}
	}

	table, err := runRecommend(t, "--prometheus", url, "--time", "1700000000")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Fleet: 3 nodes matching {}, the 30d before 2023-11-14T22:13:20Z (Prometheus, classic histograms)",
		"PROG agent               101      1      2    ≤4KiB    ≤4KiB    ≤1MiB      1MiB   ≤16MiB  undersized",
		"Bucket bounds, not exact",
		"  libbpf                16.0MiB  truncates       0.0%  leaves          ~16.0MiB unused per load held",
		"  bpftrace             976.6KiB  truncates   0.0-1.0%", // 1,000,000 B lies inside (512 KiB, 1 MiB]
		"  cilium/ebpf (start)     64KiB  truncates       1.0%", // a bucket bound: exact
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	for _, line := range strings.Split(table, "\n") {
		if n := utf8.RuneCountInString(line); n > 100 && !strings.HasPrefix(line, "PROG") && !strings.HasPrefix(line, "CMD") {
			t.Errorf("line of %d columns: %q", n, line)
		}
	}
}

// TestRecommendPrometheusErrors: each failure is one line saying what
// failed.
func TestRecommendPrometheusErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()
	badData := startFake(t, &fakePrometheus{errType: "bad_data"})
	empty := startFake(t, &fakePrometheus{})

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--prometheus", closed}, "Prometheus at " + closed + ": Post"},
		{[]string{"--prometheus", badData, "--selector", "{cluster=prod}"}, "Prometheus at " + badData + ": selector {cluster=prod}: 1:26: parse error"},
		{[]string{"--prometheus", empty, "--selector", `cluster="x"`, "--time", "2023-11-14T22:13:20Z"}, `no verifierlog exporter series matches {cluster="x"} in the 30d before 2023-11-14T22:13:20Z`},
		{[]string{"--prometheus", "prometheus:9090"}, `--prometheus "prometheus:9090": want an http(s) URL`},
		{[]string{"--prometheus", empty, "--window", "30days"}, `--window "30days"`},
		{[]string{"--prometheus", empty, "--time", "yesterday"}, `--time "yesterday"`},
		{[]string{"--prometheus", empty, "--from", "http://node:19435"}, "--from and --prometheus exclude each other"},
	} {
		_, err := runRecommend(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error %v, want one line with %q", c.args, err, c.want)
		}
	}
}
