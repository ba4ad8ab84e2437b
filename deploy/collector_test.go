package deploy

// The OpenTelemetry Collector configurations, validated by the project's
// Collector build.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
)

// collectorComponents lists the components of the project's Collector
// build ("otelcol components").
func collectorComponents(t *testing.T, bin string) map[string]map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, "components").Output()
	if err != nil {
		t.Fatalf("%s components: %v", bin, err)
	}
	var list map[string]json.RawMessage
	if err := yaml.Unmarshal(out, &list); err != nil {
		t.Fatalf("%s components: %v\n%s", bin, err, out)
	}
	comps := map[string]map[string]bool{}
	for _, kind := range []string{"receivers", "processors", "exporters", "connectors", "extensions"} {
		var entries []struct {
			Name string `json:"name"`
		}
		if raw, ok := list[kind]; ok {
			if err := json.Unmarshal(raw, &entries); err != nil {
				t.Fatal(err)
			}
		}
		comps[kind] = map[string]bool{}
		for _, e := range entries {
			comps[kind][e.Name] = true
		}
	}
	return comps
}

func componentType(id string) string { typ, _, _ := strings.Cut(id, "/"); return typ }

func TestCollectorConfig(t *testing.T) {
	bin, err := backends.CollectorBinary()
	if err != nil {
		kerneltest.MissingTool(t, err.Error(), "as root, `bash backends/install.sh` installs it")
	}
	// config.local.yaml: accepted as it is.
	if err := backends.ValidateCollectorConfig(collectorLocalConfig); err != nil {
		t.Fatal(err)
	}

	// config.yaml forwards with an exporter the project's build may lack;
	// validate it whole if the build has every component it names, else
	// without the missing OTLP exporters (and nothing else may be missing).
	var cfg, local map[string]any
	if err := yaml.Unmarshal(mustRead(t, collectorConfig), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(mustRead(t, collectorLocalConfig), &local); err != nil {
		t.Fatal(err)
	}
	// Both receive the same way (OTLP on 4317 and 4318) and batch alike.
	for _, section := range []string{"receivers", "processors"} {
		if !reflect.DeepEqual(cfg[section], local[section]) {
			t.Errorf("%s and %s differ in %s", collectorConfig, collectorLocalConfig, section)
		}
	}
	grpc, _ := dig(cfg, "receivers", "otlp", "protocols", "grpc", "endpoint").(string)
	httpEP, _ := dig(cfg, "receivers", "otlp", "protocols", "http", "endpoint").(string)
	if !strings.HasSuffix(grpc, ":4317") || !strings.HasSuffix(httpEP, ":4318") {
		t.Errorf("otlp receiver: grpc %q, http %q; want ports 4317 and 4318", grpc, httpEP)
	}

	comps := collectorComponents(t, bin)
	forwarders := map[string]bool{"otlp": true, "otlp_grpc": true, "otlphttp": true, "otlp_http": true}
	exporters, _ := cfg["exporters"].(map[string]any)
	var removed []string
	forwards := false
	for id := range exporters {
		typ := componentType(id)
		forwards = forwards || forwarders[typ]
		if comps["exporters"][typ] {
			continue
		}
		if !forwarders[typ] {
			t.Errorf("%s: exporter %s is not in the project's Collector build either", collectorConfig, id)
		}
		removed = append(removed, id)
		delete(exporters, id)
	}
	if !forwards {
		t.Errorf("%s does not forward (no otlp_grpc/otlp_http exporter)", collectorConfig)
	}
	for _, kind := range []string{"receivers", "processors", "connectors", "extensions"} {
		if m, ok := cfg[kind].(map[string]any); ok {
			for id := range m {
				if !comps[kind][componentType(id)] {
					t.Errorf("%s: %s %s is not in the project's Collector build", collectorConfig, kind, id)
				}
			}
		}
	}
	pipelines, _ := dig(cfg, "service", "pipelines").(map[string]any)
	for name, pl := range pipelines {
		p := pl.(map[string]any)
		ex, _ := p["exporters"].([]any)
		var kept []any
		for _, e := range ex {
			if !slices.Contains(removed, e.(string)) {
				kept = append(kept, e)
			}
		}
		if len(kept) == 0 {
			t.Errorf("pipeline %s has no exporter the build knows besides %v", name, removed)
		}
		p["exporters"] = kept
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OTEL_FORWARD_ENDPOINT", "collector.invalid:4317")
	if err := backends.ValidateCollectorConfig(path); err != nil {
		t.Fatal(err)
	}
	if len(removed) > 0 {
		t.Logf("validated %s without %v: the project's Collector build lacks them (deploy/README.md says what to add to backends/install.sh)", collectorConfig, removed)
	} else {
		t.Logf("validated %s whole", collectorConfig)
	}
}

func dig(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}
