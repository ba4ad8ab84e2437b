package bench

import (
	"context"
	"slices"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// TestFootprint measures the series one loader costs and the bytes per
// scrape (go test -run TestFootprint -v ./internal/bench prints them), and
// checks that every outcome of FootprintOutcomes reached its metric.
func TestFootprint(t *testing.T) {
	want := []string{
		"bpf_prog_load_attempts", "bpf_prog_load_duration_seconds", "bpf_prog_loads_total",
		"bpf_verifier_log_buffer_bytes", "bpf_verifier_log_recommended_buffer_bytes",
		"bpf_verifier_log_required_bytes", "bpf_verifier_log_shortfall_bytes",
		"bpf_verifier_log_undersized_total", "bpf_verifier_log_unknown_size_total",
	}
	for _, n := range []int{1, 10} {
		fp, err := MeasureFootprint(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		if got := fp.sortedNames(); !slices.Equal(got, want) {
			t.Errorf("%d loaders: a loader's metrics are %v, want %v", n, got, want)
		}
		// A label set per outcome that differs: loads by (log mode, result)
		// ok/off, ok/rotating, ENOSPC, EACCES; needs by source kernel and
		// measured; the recommendations at two coverages; one for everything
		// else.
		sets := map[string]int{"bpf_prog_loads_total": 4,
			"bpf_verifier_log_required_bytes": 2, "bpf_verifier_log_recommended_buffer_bytes": 2}
		for _, m := range fp.PerLoader {
			wantSets := max(sets[m.Name], 1)
			if m.Sets != wantSets {
				t.Errorf("%d loaders: %s has %d label sets per loader, want %d", n, m.Name, m.Sets, wantSets)
			}
			switch {
			case m.Type != dto.MetricType_HISTOGRAM:
				if m.Classic != m.Sets || m.Native != m.Sets {
					t.Errorf("%d loaders: %s: %d classic, %d native series of %d label sets", n, m.Name, m.Classic, m.Native, m.Sets)
				}
			case m.Classic%m.Sets != 0 || m.Classic/m.Sets < 4:
				t.Errorf("%d loaders: histogram %s: %d classic series of %d label sets", n, m.Name, m.Classic, m.Sets)
			case fp.NativeHistograms && m.Native != m.Sets:
				t.Errorf("%d loaders: histogram %s: %d native series of %d label sets", n, m.Name, m.Native, m.Sets)
			}
		}
		// What a Prometheus with native histograms stores of a loader whose
		// loads hit every outcome.
		if fp.NativeHistograms && fp.LoaderNative > 15 {
			t.Errorf("%d loaders: %d native series per loader, want at most 15", n, fp.LoaderNative)
		}
		if fp.TextBytes == 0 || fp.ProtoBytes == 0 || fp.TextGzip >= fp.TextBytes {
			t.Errorf("%d loaders: scrape bytes text %d (gzip %d), protobuf %d", n, fp.TextBytes, fp.TextGzip, fp.ProtoBytes)
		}
		t.Logf("%d loaders: per loader %d classic, %d native series; scrape %d classic, %d native series; text %d B (gzip %d), protobuf %d B (gzip %d); native histograms: %v",
			n, fp.LoaderClassic, fp.LoaderNative, fp.Classic, fp.Native, fp.TextBytes, fp.TextGzip, fp.ProtoBytes, fp.ProtoGzip, fp.NativeHistograms)
		if n == 1 {
			for _, m := range fp.PerLoader {
				t.Logf("  %-45s %-9s classic %3d native %3d", m.Name, m.Type, m.Classic, m.Native)
			}
		}
	}
}
