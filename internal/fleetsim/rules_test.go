package fleetsim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The fleet test's copy of the rules file changes only the groups'
// intervals, and each default's rule names one bucket bound in both arms.
func TestShortenedRules(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", RulesPath))
	if err != nil {
		t.Fatal(err)
	}
	short, n := ShortenIntervals(src, 5*time.Second)
	if n < 2 {
		t.Errorf("%d intervals changed, want the fleet groups' at least", n)
	}
	if err := DiffOnlyIntervals(src, short); err != nil {
		t.Error(err)
	}
	if strings.Contains(string(short), "interval: 5m") || strings.Contains(string(short), "interval: 1h") {
		t.Error("an interval is left")
	}
	edited := strings.Replace(string(short), "[1d]", "[2d]", 1)
	if err := DiffOnlyIntervals(src, []byte(edited)); err == nil {
		t.Error("a changed window passed as an interval change")
	}
	rules, err := ParseRules(short)
	if err != nil {
		t.Fatal(err)
	}
	ratio := rules.Records("loader:bpf_verifier_log_required_bytes:above_default_ratio1d")
	if len(ratio) == 0 {
		t.Fatal("no above_default_ratio1d rules")
	}
	for _, r := range ratio {
		b, err := r.DefaultBound()
		if err != nil {
			t.Errorf("%s: %v", r.Labels["default"], err)
			continue
		}
		if b&(b-1) != 0 {
			t.Errorf("%s: bound %d is not a power of two", r.Labels["default"], b)
		}
	}
	if _, err := (Rule{Expr: `x{le=~"8192(\\.0)?"} or histogram_fraction(0, 16384, y)`}).DefaultBound(); err == nil {
		t.Error("arms with different bounds passed")
	}
}
