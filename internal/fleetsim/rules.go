package fleetsim

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// RulesPath is the rules file the fleet's Prometheus servers load, relative
// to the repository's root.
const RulesPath = "deploy/prometheus/verifierlog-rules.yaml"

// intervalLine is a rule group's `interval:` line.
var intervalLine = regexp.MustCompile(`^(\s+)interval:\s*\S+\s*$`)

// ShortenIntervals returns the rules file src with every group's
// `interval:` set to every, so that groups that run every 5 minutes or
// every hour evaluate during a run of a few minutes, and how many it
// changed. Nothing else changes (DiffOnlyIntervals checks it).
func ShortenIntervals(src []byte, every time.Duration) ([]byte, int) {
	lines := strings.Split(string(src), "\n")
	n := 0
	for i, l := range lines {
		if m := intervalLine.FindStringSubmatch(l); m != nil {
			lines[i] = m[1] + "interval: " + promDuration(every)
			n++
		}
	}
	return []byte(strings.Join(lines, "\n")), n
}

// DiffOnlyIntervals returns an error unless a and b differ only in
// groups' `interval:` lines.
func DiffOnlyIntervals(a, b []byte) error {
	la, lb := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	if len(la) != len(lb) {
		return fmt.Errorf("%d lines, the original has %d", len(lb), len(la))
	}
	for i := range la {
		if la[i] != lb[i] && !(intervalLine.MatchString(la[i]) && intervalLine.MatchString(lb[i])) {
			return fmt.Errorf("line %d: %q, the original has %q", i+1, lb[i], la[i])
		}
	}
	return nil
}

// RuleFile is the part of a Prometheus rules file the fleet test reads.
type RuleFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval"`
		Rules    []Rule `json:"rules"`
	} `json:"groups"`
}

// Rule is one recording or alerting rule.
type Rule struct {
	Record string            `json:"record"`
	Alert  string            `json:"alert"`
	Expr   string            `json:"expr"`
	Labels map[string]string `json:"labels"`
}

// ParseRules parses a rules file.
func ParseRules(src []byte) (RuleFile, error) {
	var f RuleFile
	err := yaml.Unmarshal(src, &f)
	return f, err
}

// Records are the recording rules named record, in the file's order.
func (f RuleFile) Records(record string) []Rule {
	var out []Rule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record == record {
				out = append(out, r)
			}
		}
	}
	return out
}

var (
	classicBound = regexp.MustCompile(`\{le=~?"([0-9.e+]+)(?:\(\\\\\.0\)\?)?"\}`)
	nativeBound  = regexp.MustCompile(`histogram_fraction\(0, ([0-9.e+]+),`)
)

// DefaultBound is the bucket bound an above_default_ratio rule takes the
// share above: the `le` of its classic arm, which must equal the upper
// bound of histogram_fraction in its native arm.
func (r Rule) DefaultBound() (uint64, error) {
	var le string
	for _, m := range classicBound.FindAllStringSubmatch(r.Expr, -1) {
		if le != "" && m[1] != le {
			return 0, fmt.Errorf("classic bounds %s and %s", le, m[1])
		}
		le = m[1]
	}
	nat := nativeBound.FindStringSubmatch(r.Expr)
	if le == "" || nat == nil {
		return 0, fmt.Errorf("no classic le bound (%q) or no histogram_fraction bound (%v) in %q", le, nat, r.Expr)
	}
	c, err1 := strconv.ParseFloat(le, 64)
	n, err2 := strconv.ParseFloat(nat[1], 64)
	if err1 != nil || err2 != nil || c != n || c != float64(uint64(c)) {
		return 0, fmt.Errorf("classic bound %q, native bound %q: want the same whole number", le, nat[1])
	}
	return uint64(c), nil
}

// NeedsAtMost is the number of known needs at or below size.
func (lt *LoaderTruth) NeedsAtMost(size uint64) uint64 {
	var n uint64
	for _, x := range lt.Needs {
		if uint64(x) <= size {
			n++
		}
	}
	return n
}
