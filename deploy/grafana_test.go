package deploy

// The Grafana dashboard (its variables, panels, layout, what it must show,
// and that every expression parses) and its provisioning files.

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
)

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []templateVar `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type templateVar struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition"`
	Datasource *datasourceRef  `json:"datasource"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
}

type panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description"`
	Datasource  *datasourceRef `json:"datasource"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets     []panelTarget `json:"targets"`
	Panels      []panel       `json:"panels"`
	FieldConfig struct {
		Defaults struct {
			Thresholds *struct {
				Steps []struct {
					Value *float64 `json:"value"`
				} `json:"steps"`
			} `json:"thresholds"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

type panelTarget struct {
	RefID      string         `json:"refId"`
	Expr       string         `json:"expr"`
	Format     string         `json:"format"`
	Datasource *datasourceRef `json:"datasource"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(mustRead(t, dashboardFile), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// allPanels flattens rows (collapsed rows keep their panels inside).
func (d dashboard) allPanels() []panel {
	var ps []panel
	var walk func([]panel)
	walk = func(list []panel) {
		for _, p := range list {
			ps = append(ps, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return ps
}

// grafanaVar matches $name, ${name} and ${name:format}.
var grafanaVar = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)`)

// grafanaBuiltins stand in for Grafana's own variables in PromQL.
var grafanaBuiltins = map[string]string{
	"__rate_interval": "5m", "__interval": "1m", "__range": "1h",
	"__interval_ms": "60000", "__range_s": "3600", "__range_ms": "3600000",
}

// substitute replaces Grafana variables with valid PromQL stand-ins: a
// dashboard variable becomes ".*" (the dashboard uses them in =~ matchers
// only, and their "All" value is .*), a built-in a duration. It returns the
// names of undefined variables.
func substitute(expr string, defined map[string]bool) (string, []string) {
	var undefined []string
	out := grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1] + sub[2]
		if v, ok := grafanaBuiltins[name]; ok {
			return v
		}
		if !defined[name] {
			undefined = append(undefined, name)
		}
		return ".*"
	})
	return out, undefined
}

var labelValuesQuery = regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`)

// dashboardExprs returns the PromQL of every panel target and the selector
// of every label_values() variable query.
func dashboardExprs(t *testing.T, d dashboard) []promExpr {
	t.Helper()
	defined := map[string]bool{}
	for _, v := range d.Templating.List {
		defined[v.Name] = true
	}
	var exprs []promExpr
	add := func(where, expr string) {
		q, undefined := substitute(expr, defined)
		if len(undefined) > 0 {
			t.Errorf("%s: undefined variables %v in %s", where, undefined, expr)
		}
		exprs = append(exprs, promExpr{where, expr, q})
	}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			add(fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID), tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValuesQuery.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, v.Definition)
			continue
		}
		add("variable "+v.Name, m[1])
	}
	return exprs
}

func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title (provisioning keys on the uid)")
	}
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d, want about 39", d.SchemaVersion)
	}
	vars := map[string]templateVar{}
	for _, v := range d.Templating.List {
		if _, dup := vars[v.Name]; dup {
			t.Errorf("variable %s defined twice", v.Name)
		}
		vars[v.Name] = v
	}
	if ds, ok := vars["datasource"]; !ok || ds.Type != "datasource" || string(ds.Query) != `"prometheus"` {
		t.Errorf("want a datasource variable of type prometheus, have %+v", ds)
	}
	wantDS := datasourceRef{Type: "prometheus", UID: "${datasource}"}
	for _, name := range []string{"instance", "loader"} {
		v, ok := vars[name]
		if !ok || v.Type != "query" || !strings.HasPrefix(v.Definition, "label_values(") {
			t.Errorf("variable %s: want a label_values query variable, have %+v", name, v)
			continue
		}
		if v.Datasource == nil || *v.Datasource != wantDS {
			t.Errorf("variable %s: datasource %+v, want %+v", name, v.Datasource, wantDS)
		}
		// Panels match them with =~; "All" must be a regex.
		if v.IncludeAll && v.AllValue != ".*" {
			t.Errorf("variable %s: allValue %q, want .*", name, v.AllValue)
		}
	}

	// up{job=~"$job"} must not become up{job=~".*"}: every target of
	// Prometheus.
	if j, ok := vars["job"]; ok && (j.IncludeAll || j.Multi) {
		t.Error("variable job: must be a single job (no All), since up is filtered by it")
	}

	ids := map[int]bool{}
	type rect struct{ x0, y0, x1, y1 int }
	var placed []rect
	var heatmaps []string
	for _, p := range d.allPanels() {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or not unique", p.Title, p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		r := rect{g.X, g.Y, g.X + g.W, g.Y + g.H}
		for _, q := range placed {
			if r.x0 < q.x1 && q.x0 < r.x1 && r.y0 < q.y1 && q.y0 < r.y1 {
				t.Errorf("panel %q overlaps another panel (%+v, %+v)", p.Title, r, q)
			}
		}
		placed = append(placed, r)
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || *p.Datasource != wantDS {
			t.Errorf("panel %q: datasource %+v, want %+v", p.Title, p.Datasource, wantDS)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: refId %q missing or repeated", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource == nil || *tg.Datasource != wantDS {
				t.Errorf("panel %q target %s: datasource %+v, want %+v", p.Title, tg.RefID, tg.Datasource, wantDS)
			}
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s: empty expr", p.Title, tg.RefID)
			}
		}
		if p.Type == "heatmap" {
			// A classic target (sum by (le) of the _bucket series) and a
			// native one (the native histogram, no le), for a Prometheus
			// without and with native histograms.
			var classic, native int
			for _, tg := range p.Targets {
				switch {
				case tg.Format != "heatmap":
					t.Errorf("heatmap %q target %s: format %q, want heatmap", p.Title, tg.RefID, tg.Format)
				case strings.Contains(tg.Expr, "_bucket") && strings.Contains(tg.Expr, "by (le)"):
					classic++
					heatmaps = append(heatmaps, tg.Expr)
				case !strings.Contains(tg.Expr, "_bucket") && !strings.Contains(tg.Expr, "by (le)"):
					native++
				default:
					t.Errorf("heatmap %q target %s: neither sum by (le) of a _bucket series nor a native histogram: %s", p.Title, tg.RefID, tg.Expr)
				}
			}
			if classic != 1 || native != 1 {
				t.Errorf("heatmap %q: %d classic and %d native targets, want one of each", p.Title, classic, native)
			}
		}
	}

	// What the dashboard must show.
	exprs := dashboardExprs(t, d)
	all := ""
	for _, e := range exprs {
		all += e.expr + "\n"
	}
	for _, want := range []string{
		"sum by (result) (rate(bpf_prog_loads_total",
		`sum by (loader) (rate(bpf_prog_loads_total{job=~"$job", instance=~"$instance", loader=~"$loader", result="EACCES"}`,
		"bpf_verifier_log_undersized_total",
		"bpf_verifier_log_recommended_buffer_bytes",
		"bpf_prog_load_attempts_bucket",
		"bpf_prog_load_duration_seconds_bucket",
		"verifierlog_exporter_events_lost_total",
		"verifierlog_exporter_tracer_info",
		"up{",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no panel queries %s", want)
		}
	}
	for _, h := range []string{"bpf_verifier_log_required_bytes_bucket", "bpf_verifier_log_buffer_bytes_bucket"} {
		if !slices.ContainsFunc(heatmaps, func(e string) bool { return strings.Contains(e, h) }) {
			t.Errorf("no heatmap of %s", h)
		}
	}
	// The verifier's rejections per loader, and where their verdicts are:
	// the log tail in the traces, which is off unless --log-tail-bytes.
	rejected := slices.IndexFunc(d.allPanels(), func(p panel) bool { return p.Title == "Loads the verifier rejected, by loader" })
	if rejected < 0 {
		t.Error(`no panel "Loads the verifier rejected, by loader"`)
	} else {
		p := d.allPanels()[rejected]
		if len(p.Targets) != 1 || !strings.Contains(p.Targets[0].Expr, `result="EACCES"`) || !strings.HasPrefix(p.Targets[0].Expr, "sum by (loader) (") {
			t.Errorf("panel %q: want one target, the EACCES loads summed by loader, have %+v", p.Title, p.Targets)
		}
		for _, want := range []string{"--log-tail-bytes", "bpf.verifier.log", "attempt span"} {
			if !strings.Contains(p.Description, want) {
				t.Errorf("panel %q: description does not say %q: %s", p.Title, want, p.Description)
			}
		}
	}
	// The well-known loader defaults, as constant series or thresholds.
	thresholds := map[float64]bool{}
	for _, p := range d.allPanels() {
		if th := p.FieldConfig.Defaults.Thresholds; th != nil {
			for _, s := range th.Steps {
				if s.Value != nil {
					thresholds[*s.Value] = true
				}
			}
		}
	}
	for name, v := range map[string]int{"libbpf": 16777215, "cilium/ebpf": 65536, "aya": 10240, "bpftrace": 1000000, "Cilium": 4194304, "OBI": 655360} {
		if !strings.Contains(all, fmt.Sprintf("vector(%d)", v)) && !thresholds[float64(v)] {
			t.Errorf("the %s default %d is neither a constant series nor a threshold", name, v)
		}
	}

	// The Fleet row: the fleet's recommended size per loader (99 % and
	// all), its loads and ENOSPC attempts, and what each default would do,
	// from the fleet recording rules.
	fleet := rowPanels(d, "Fleet")
	if len(fleet) == 0 {
		t.Error("no row Fleet, or no panel in it")
	}
	fleetExprs := ""
	for _, p := range fleet {
		for _, tg := range p.Targets {
			fleetExprs += tg.Expr + "\n"
		}
	}
	for _, want := range []string{
		`loader:bpf_verifier_log_required_bytes:recommended1d{job=~"$job", loader=~"$loader", coverage="1"}`,
		`loader:bpf_verifier_log_required_bytes:recommended1d{job=~"$job", loader=~"$loader", coverage="0.99"}`,
		`loader:bpf_verifier_log_required_bytes:recommended7d{job=~"$job", loader=~"$loader", coverage="1"}`,
		"loader:bpf_prog_load_chains:increase1d",
		"loader:bpf_prog_loads_enospc:increase1d",
		"loader:bpf_verifier_log_required_bytes:above_default_ratio1d",
	} {
		if !strings.Contains(fleetExprs, want) {
			t.Errorf("no panel of the Fleet row queries %s", want)
		}
	}
	// Every recorded series the dashboard reads is one the rules file
	// records, with every label the dashboard matches or groups by.
	recorded := recordedLabels(t)
	u := collectUsage(t, exprs)
	for name, where := range u.metrics {
		if !strings.Contains(name, ":") {
			continue
		}
		labels, ok := recorded[name]
		if !ok {
			t.Errorf("%s: %s is not a recording rule of %s", strings.Join(slices.Compact(where), "; "), name, rulesFile)
			continue
		}
		for l, where := range u.labels[name] {
			l = strings.TrimPrefix(l, "by:")
			if !labels[l] {
				t.Errorf("%s: %s has no label %q", strings.Join(slices.Compact(where), "; "), name, l)
			}
		}
	}

	// Every expression parses.
	p := parser.NewParser(parser.Options{})
	for _, e := range exprs {
		if _, err := p.ParseExpr(e.promq); err != nil {
			t.Errorf("%s: %v\n  %s", e.where, err, e.promq)
		}
	}
}

func TestGrafanaProvisioning(t *testing.T) {
	var dash struct {
		APIVersion int `json:"apiVersion"`
		Providers  []struct {
			Name                  string `json:"name"`
			OrgID                 int    `json:"orgId"`
			Folder                string `json:"folder"`
			Type                  string `json:"type"`
			DisableDeletion       bool   `json:"disableDeletion"`
			AllowUIUpdates        bool   `json:"allowUiUpdates"`
			UpdateIntervalSeconds int    `json:"updateIntervalSeconds"`
			Options               struct {
				Path                      string `json:"path"`
				FoldersFromFilesStructure bool   `json:"foldersFromFilesStructure"`
			} `json:"options"`
		} `json:"providers"`
	}
	if err := strictYAML(mustRead(t, "grafana/provisioning/dashboards/verifierlog.yaml"), &dash); err != nil {
		t.Fatal(err)
	}
	if dash.APIVersion != 1 || len(dash.Providers) != 1 || dash.Providers[0].Type != "file" || dash.Providers[0].Options.Path == "" {
		t.Errorf("dashboard provider: %+v", dash)
	}
	var ds struct {
		APIVersion  int `json:"apiVersion"`
		Datasources []struct {
			Name      string            `json:"name"`
			Type      string            `json:"type"`
			UID       string            `json:"uid"`
			Access    string            `json:"access"`
			URL       string            `json:"url"`
			IsDefault bool              `json:"isDefault"`
			Editable  bool              `json:"editable"`
			JSONData  map[string]string `json:"jsonData"`
		} `json:"datasources"`
	}
	if err := strictYAML(mustRead(t, "grafana/provisioning/datasources/prometheus.yaml"), &ds); err != nil {
		t.Fatal(err)
	}
	if ds.APIVersion != 1 || len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL == "" {
		t.Errorf("datasource: %+v", ds)
	}
}

// rowPanels returns the panels of the row titled title: those that follow
// it up to the next row, or, for a collapsed row, those it holds.
func rowPanels(d dashboard, title string) []panel {
	for i, p := range d.Panels {
		if p.Type != "row" || p.Title != title {
			continue
		}
		if len(p.Panels) > 0 {
			return p.Panels
		}
		var ps []panel
		for _, q := range d.Panels[i+1:] {
			if q.Type == "row" {
				break
			}
			ps = append(ps, q)
		}
		return ps
	}
	return nil
}

// recordedLabels maps each recording rule's name to the labels its series
// can carry: the rule's own labels, the grouping labels of the aggregations
// in its expression, and the labels of the recorded series it reads (an
// over-approximation: histogram_quantile's dropping of le is not modelled).
func recordedLabels(t *testing.T) map[string]map[string]bool {
	t.Helper()
	type rule struct {
		labels map[string]bool
		reads  []string
	}
	rules := map[string]*rule{}
	p := parser.NewParser(parser.Options{})
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Record == "" {
				continue
			}
			if rules[r.Record] == nil {
				rules[r.Record] = &rule{labels: map[string]bool{}}
			}
			rr := rules[r.Record]
			for l := range r.Labels {
				rr.labels[l] = true
			}
			ast, err := p.ParseExpr(r.Expr)
			if err != nil {
				t.Errorf("rule %s: %v", r.Record, err)
				continue
			}
			parser.Inspect(ast, func(node parser.Node, _ []parser.Node) error {
				switch n := node.(type) {
				case *parser.AggregateExpr:
					for _, l := range n.Grouping {
						rr.labels[l] = true
					}
				case *parser.VectorSelector:
					if strings.Contains(n.Name, ":") {
						rr.reads = append(rr.reads, n.Name)
					}
				}
				return nil
			})
		}
	}
	out := map[string]map[string]bool{}
	var resolve func(name string, seen map[string]bool) map[string]bool
	resolve = func(name string, seen map[string]bool) map[string]bool {
		r, ok := rules[name]
		if !ok || seen[name] {
			return nil
		}
		seen[name] = true
		labels := maps.Clone(r.labels)
		for _, read := range r.reads {
			maps.Copy(labels, resolve(read, seen))
		}
		return labels
	}
	for name := range rules {
		out[name] = resolve(name, map[string]bool{})
	}
	return out
}
