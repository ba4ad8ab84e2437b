package bench

import (
	"math"
	"testing"
)

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

func TestPairedRatio(t *testing.T) {
	r := Result{ExporterOverFloor: []float64{10, 30, 20, 40}, FloorOverNoTracer: 250}
	ratio, lo, hi, ok := r.PairedRatio()
	// mean 25, sample sd 12.91, half width 1.96 * 12.91 / 2 = 12.65
	if !ok || math.Abs(ratio-1.1) > 1e-9 || math.Abs(lo-(1.1-12.65/250)) > 1e-4 || math.Abs(hi-(1.1+12.65/250)) > 1e-4 {
		t.Errorf("PairedRatio = %v [%v, %v] %v, want 1.1 [1.049, 1.151]", ratio, lo, hi, ok)
	}
	if _, _, _, ok := (Result{ExporterOverFloor: []float64{1}, FloorOverNoTracer: 0}).PairedRatio(); ok {
		t.Error("PairedRatio ok with a floor that adds nothing")
	}
	if ratio, lo, hi, ok := (Result{ExporterOverFloor: []float64{-20}, FloorOverNoTracer: 200}).PairedRatio(); !ok || ratio != 0.9 || lo != ratio || hi != ratio {
		t.Errorf("one loading: %v [%v, %v] %v, want 0.9 with no interval", ratio, lo, hi, ok)
	}
}
