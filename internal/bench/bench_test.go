package bench

import "testing"

func TestQuantile(t *testing.T) {
	v := []float64{40, 10, 30, 20, 50}
	for _, c := range []struct{ q, want float64 }{{0, 10}, {0.25, 20}, {0.5, 30}, {0.75, 40}, {1, 50}, {0.1, 14}, {0.9, 46}} {
		if got := Quantile(v, c.q); got != c.want {
			t.Errorf("Quantile(%v, %v) = %v, want %v", v, c.q, got, c.want)
		}
	}
	if got := Quantile([]float64{1, 2}, 0.5); got != 1.5 {
		t.Errorf("median of 1, 2 = %v, want 1.5", got)
	}
	if got := Quantile(nil, 0.5); got != 0 {
		t.Errorf("Quantile of nothing = %v, want 0", got)
	}
	if v[0] != 40 {
		t.Errorf("Quantile sorted its argument: %v", v)
	}
}

func TestRatio(t *testing.T) {
	if got := Ratio(map[Setup]float64{NoTracer: 1000, Floor: 1400, Exporter: 1440}); got != 1.1 {
		t.Errorf("ratio = %v, want 1.1", got)
	}
	if got := Ratio(map[Setup]float64{NoTracer: 1000, Floor: 990, Exporter: 1440}); got != 0 {
		t.Errorf("ratio with a floor adding nothing = %v, want 0", got)
	}
}
