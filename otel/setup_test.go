package otel

import (
	"context"
	"strings"
	"testing"
)

// TestSetupReadsTheHistogramAggregationVariable: the standard
// OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION picks the OTLP
// histograms' kind; a value it does not know ends Setup with an error that
// names it.
func TestSetupReadsTheHistogramAggregationVariable(t *testing.T) {
	const v = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"
	for _, c := range []struct {
		value       string
		exponential bool
		err         string
	}{
		{"", false, ""},
		{"explicit_bucket_histogram", false, ""},
		{"base2_exponential_bucket_histogram", true, ""},
		{"exponential", false, v + "=exponential"},
	} {
		t.Setenv(v, c.value)
		tel, err := Setup(context.Background(), BuildInfo{Version: "test"})
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s=%q: err %v, want one naming %q", v, c.value, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s=%q: %v", v, c.value, err)
		}
		if tel.Recorder.exponential != c.exponential {
			t.Errorf("%s=%q: exponential %v, want %v", v, c.value, tel.Recorder.exponential, c.exponential)
		}
		_ = tel.Shutdown(context.Background())
	}
}
