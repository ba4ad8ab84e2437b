// Package deploy holds how operators run and watch the verifierlog exporter
// (Kubernetes, systemd, a container image, a Grafana dashboard, Prometheus
// rules, an OpenTelemetry Collector configuration); its tests check each of
// them against the real thing: the Kubernetes API types and kustomize, the
// exporter's own scrape, promtool, the project's Collector build,
// systemd-analyze, and the exporter run with exactly the privileges the
// manifests grant.
package deploy

// What the topic files share: the paths of the files under test, the scrape
// job and port they must agree on, the strict YAML decoding, and the PromQL
// expressions of the dashboard and the rules.

import (
	"errors"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const (
	k8sDir               = "kubernetes"
	rulesFile            = "prometheus/verifierlog-rules.yaml"
	rulesTestFile        = "prometheus/verifierlog-rules_test.yaml"
	dashboardFile        = "grafana/verifierlog-exporter.json"
	unitFile             = "systemd/verifierlog-exporter.service"
	collectorConfig      = "otel-collector/config.yaml"
	collectorLocalConfig = "otel-collector/config.local.yaml"

	// jobName is the scrape job the ServiceMonitor produces and the rules
	// and dashboard expect.
	jobName     = "verifierlog-exporter"
	metricsPort = 19435
)

// strictYAML decodes YAML into v the way the Kubernetes API server decodes
// JSON: field names match case-sensitively, and unknown or duplicate fields
// are errors. (sigs.k8s.io/yaml.UnmarshalStrict alone goes through
// encoding/json, which matches field names case-insensitively and so would
// accept readOnlyRootFileSystem for readOnlyRootFilesystem.)
func strictYAML(data []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// promExpr is one PromQL expression of the dashboard or the rules.
type promExpr struct {
	where string // for messages
	expr  string // as written
	promq string // with Grafana variables substituted
}
