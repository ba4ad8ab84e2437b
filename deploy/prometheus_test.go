package deploy

// The Prometheus rules, checked and unit-tested with promtool, and the
// dashboard's expressions put through promtool too.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
)

// rulesTestFiles are the rules' promtool unit tests: the alerts and the
// short-window recording rules, the 1-day fleet rules, and the 7-day ones
// (a file of its own for its hourly evaluation_interval).
var rulesTestFiles = []string{
	rulesTestFile,
	"prometheus/verifierlog-rules-fleet_test.yaml",
	"prometheus/verifierlog-rules-fleet7d_test.yaml",
}

type ruleFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []struct {
			Record      string            `json:"record,omitempty"`
			Alert       string            `json:"alert,omitempty"`
			Expr        string            `json:"expr"`
			For         string            `json:"for,omitempty"`
			Labels      map[string]string `json:"labels,omitempty"`
			Annotations map[string]string `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := strictYAML(mustRead(t, rulesFile), &rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return rf
}

func ruleExprs(t *testing.T) []promExpr {
	var exprs []promExpr
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, promExpr{fmt.Sprintf("rule %s%s", r.Record, r.Alert), r.Expr, r.Expr})
		}
	}
	return exprs
}

func promtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	bin, err := backends.PromtoolBinary()
	if err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPrometheusRules(t *testing.T) {
	rf := readRules(t)
	p := parser.NewParser(parser.Options{})
	var alerts, records []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if _, err := p.ParseExpr(r.Expr); err != nil {
				t.Errorf("rule %s%s: %v", r.Record, r.Alert, err)
			}
			if r.Alert != "" {
				alerts = append(alerts, r.Alert)
			} else {
				records = append(records, r.Record)
			}
		}
	}
	for _, want := range []string{"VerifierLogTruncations", "VerifierRejections", "VerifierlogExporterLostEvents", "VerifierlogExporterDown"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
	out := promtool(t, "prometheus", "check", "rules", filepath.Base(rulesFile))
	t.Logf("promtool check rules: %s", strings.TrimSpace(out))
	// The unit tests, together, cover every alert firing and not firing,
	// and every recording rule (an expression that is the rule's name,
	// with or without a label selector, evaluates it), but the native
	// histogram rules: promtool 2.42 cannot read native histograms in
	// input_series, and native rules are checked where they are used.
	firing, quiet, evaluated := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, file := range rulesTestFiles {
		out = promtool(t, "prometheus", "test", "rules", filepath.Base(file))
		t.Logf("promtool test rules %s: %s", filepath.Base(file), strings.TrimSpace(out))
		var tests struct {
			Tests []struct {
				AlertRuleTest []struct {
					Alertname string            `json:"alertname"`
					ExpAlerts []json.RawMessage `json:"exp_alerts"`
				} `json:"alert_rule_test"`
				PromQLExprTest []struct {
					Expr string `json:"expr"`
				} `json:"promql_expr_test"`
			} `json:"tests"`
		}
		if err := yaml.Unmarshal(mustRead(t, file), &tests); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for _, tc := range tests.Tests {
			for _, a := range tc.AlertRuleTest {
				if len(a.ExpAlerts) > 0 {
					firing[a.Alertname] = true
				} else {
					quiet[a.Alertname] = true
				}
			}
			for _, e := range tc.PromQLExprTest {
				name, _, _ := strings.Cut(strings.TrimSpace(e.Expr), "{")
				evaluated[name] = true
			}
		}
	}
	for _, a := range alerts {
		if !firing[a] || !quiet[a] {
			t.Errorf("alert %s is not tested both firing (%v) and not firing (%v) in %v", a, firing[a], quiet[a], rulesTestFiles)
		}
	}
	for _, r := range records {
		if !evaluated[r] && !nativeHistogramRule(r) {
			t.Errorf("recording rule %s is not evaluated in %v", r, rulesTestFiles)
		}
	}
}

// nativeHistogramRule reports whether a recording rule records a native
// histogram: the fleet's loader:bpf_verifier_log_required_bytes:increase1d
// and :increase7d (their classic twins are the _bucket rules).
func nativeHistogramRule(record string) bool {
	return strings.HasPrefix(record, "loader:bpf_verifier_log_required_bytes:increase")
}

// TestDashboardExprsPromtool has promtool parse every dashboard expression
// too, as recording rules of a generated file: the Prometheus that Debian
// ships, not only the parser library, must accept them.
func TestDashboardExprsPromtool(t *testing.T) {
	exprs := dashboardExprs(t, readDashboard(t))
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, e := range exprs {
		rules = append(rules, rule{fmt.Sprintf("dashboard:expr_%d", i), e.promq})
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.rules.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := promtool(t, dir, "check", "rules", "dashboard.rules.yaml")
	if !strings.Contains(out, fmt.Sprintf("%d rules found", len(rules))) {
		t.Errorf("promtool check rules: %s", out)
	}
}
