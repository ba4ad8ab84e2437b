// Package deploy holds how operators run and watch the verifierlog exporter
// (Kubernetes, systemd, a container image, a Grafana dashboard, Prometheus
// rules, an OpenTelemetry Collector configuration); its tests check each of
// them against the real thing: the Kubernetes API types and kustomize, the
// exporter's own scrape, promtool, the project's Collector build,
// systemd-analyze, and the exporter run with exactly the privileges the
// manifests grant.
package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/promql/parser"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
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

// ---------------------------------------------------------------- Kubernetes

// kustomization is the part of kustomize's Kustomization (and Component)
// these manifests use; decoded strictly, so a misspelt or unsupported field
// fails.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
		IncludeTemplates bool              `json:"includeTemplates,omitempty"`
	} `json:"labels,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	Components []string `json:"components,omitempty"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
	Patches []struct {
		Path   string `json:"path,omitempty"`
		Patch  string `json:"patch,omitempty"`
		Target *struct {
			Group   string `json:"group,omitempty"`
			Version string `json:"version,omitempty"`
			Kind    string `json:"kind,omitempty"`
			Name    string `json:"name,omitempty"`
		} `json:"target,omitempty"`
	} `json:"patches,omitempty"`
}

func readKustomization(t *testing.T, dir string) kustomization {
	t.Helper()
	var k kustomization
	if err := strictYAML(mustRead(t, filepath.Join(dir, "kustomization.yaml")), &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	return k
}

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

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitDocs splits a YAML stream into its non-empty documents.
func splitDocs(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range docSeparator.Split(string(b), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// objects are the decoded manifests, by kind.
type objects struct {
	namespaces      []*corev1.Namespace
	serviceAccounts []*corev1.ServiceAccount
	services        []*corev1.Service
	daemonSets      []*appsv1.DaemonSet
	serviceMonitors []*monitoringv1.ServiceMonitor
	podMonitors     []*monitoringv1.PodMonitor
}

// decodeStrict decodes one manifest into its Kubernetes API type, refusing
// unknown and duplicate fields.
func (o *objects) decodeStrict(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		v := &corev1.Namespace{}
		o.namespaces, obj = append(o.namespaces, v), v
	case "v1 ServiceAccount":
		v := &corev1.ServiceAccount{}
		o.serviceAccounts, obj = append(o.serviceAccounts, v), v
	case "v1 Service":
		v := &corev1.Service{}
		o.services, obj = append(o.services, v), v
	case "apps/v1 DaemonSet":
		v := &appsv1.DaemonSet{}
		o.daemonSets, obj = append(o.daemonSets, v), v
	case "monitoring.coreos.com/v1 ServiceMonitor":
		v := &monitoringv1.ServiceMonitor{}
		o.serviceMonitors, obj = append(o.serviceMonitors, v), v
	case "monitoring.coreos.com/v1 PodMonitor":
		v := &monitoringv1.PodMonitor{}
		o.podMonitors, obj = append(o.podMonitors, v), v
	default:
		return fmt.Errorf("unexpected apiVersion/kind %q %q", tm.APIVersion, tm.Kind)
	}
	if err := strictYAML(doc, obj); err != nil {
		return fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	return nil
}

func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	k := readKustomization(t, k8sDir)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: apiVersion/kind %q %q", k.APIVersion, k.Kind)
	}
	// Every manifest beside kustomization.yaml is listed, every listed file
	// exists, and nothing is listed twice.
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			onDisk = append(onDisk, b)
		}
	}
	listed := slices.Clone(k.Resources)
	sort.Strings(listed)
	sort.Strings(onDisk)
	if !slices.Equal(listed, onDisk) {
		t.Errorf("kustomization.yaml resources %v, manifests on disk %v", listed, onDisk)
	}
	if len(slices.Compact(slices.Clone(listed))) != len(listed) {
		t.Errorf("kustomization.yaml lists a resource twice: %v", listed)
	}

	var o objects
	for _, r := range k.Resources {
		b, err := os.ReadFile(filepath.Join(k8sDir, r))
		if err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", r, err)
			continue
		}
		docs := splitDocs(b)
		if len(docs) == 0 {
			t.Errorf("%s: no manifest", r)
		}
		for _, d := range docs {
			if err := o.decodeStrict(d); err != nil {
				t.Errorf("%s: %v", r, err)
			}
		}
	}
	for _, c := range k.Components {
		ck := readKustomization(t, filepath.Join(k8sDir, c))
		if ck.Kind != "Component" {
			t.Errorf("component %s: kind %q", c, ck.Kind)
		}
	}
	if t.Failed() {
		return
	}
	checkObjects(t, o, k.Namespace)

	// The decoder is strict: a misspelt field is an error, not ignored.
	ds := mustRead(t, filepath.Join(k8sDir, "daemonset.yaml"))
	bad := bytes.Replace(ds, []byte("readOnlyRootFilesystem:"), []byte("readOnlyRootFileSystem:"), 1)
	if bytes.Equal(bad, ds) {
		t.Fatal("daemonset.yaml has no readOnlyRootFilesystem")
	}
	if err := new(objects).decodeStrict(bad); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("strict decoding accepted a misspelt field (err %v)", err)
	}
}

// checkObjects checks what the manifests promise: least privilege, probes,
// resources, and that Service, ServiceMonitor, DaemonSet and ServiceAccount
// fit together.
func checkObjects(t *testing.T, o objects, namespace string) {
	t.Helper()
	if len(o.daemonSets) != 1 || len(o.services) != 1 || len(o.serviceAccounts) != 1 || len(o.serviceMonitors)+len(o.podMonitors) != 1 {
		t.Fatalf("want one DaemonSet, Service, ServiceAccount and ServiceMonitor/PodMonitor; have %d, %d, %d, %d",
			len(o.daemonSets), len(o.services), len(o.serviceAccounts), len(o.serviceMonitors)+len(o.podMonitors))
	}
	for _, ns := range o.namespaces {
		if namespace != "" && ns.Name != namespace {
			t.Errorf("Namespace %q, but kustomization.yaml sets namespace %q", ns.Name, namespace)
		}
	}
	ds, svc, sa := o.daemonSets[0], o.services[0], o.serviceAccounts[0]
	pod := ds.Spec.Template.Spec

	// The selector selects the pod template.
	sel, err := metav1.LabelSelectorAsMap(ds.Spec.Selector)
	if err != nil || len(sel) == 0 {
		t.Errorf("DaemonSet selector %v: %v", ds.Spec.Selector, err)
	}
	for k, v := range sel {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("DaemonSet selector %s=%s does not match the pod template's labels %v", k, v, ds.Spec.Template.Labels)
		}
	}
	if pod.ServiceAccountName != sa.Name {
		t.Errorf("pod serviceAccountName %q, ServiceAccount %q", pod.ServiceAccountName, sa.Name)
	}
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken ||
		pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the exporter never talks to the API server: automountServiceAccountToken must be false on both ServiceAccount and pod")
	}
	if pod.HostPID || pod.HostNetwork || pod.HostIPC {
		t.Error("the pod must not share the host's PID, network or IPC namespace")
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Errorf("tolerations %v do not tolerate every taint", pod.Tolerations)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, have %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !slices.Contains(c.Args, fmt.Sprintf("--web.listen-address=:%d", metricsPort)) {
		t.Errorf("container args %v lack --web.listen-address=:%d", c.Args, metricsPort)
	}
	var portName string
	for _, p := range c.Ports {
		if p.ContainerPort == metricsPort {
			portName = p.Name
		}
	}
	if portName != "metrics" {
		t.Errorf("container port %d must be named metrics (ports %v)", metricsPort, c.Ports)
	}

	// Least privilege.
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("container has no securityContext")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("runAsUser must be 0 (explicit; see the comment in daemonset.yaml)")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities must drop ALL: %+v", sc.Capabilities)
	} else {
		add := sc.Capabilities.Add
		for _, want := range []corev1.Capability{"BPF", "PERFMON"} {
			if !slices.Contains(add, want) {
				t.Errorf("capabilities.add %v lacks %s", add, want)
			}
		}
		for _, a := range add {
			if a != "BPF" && a != "PERFMON" && a != "SYS_ADMIN" {
				t.Errorf("capabilities.add has %s: only BPF, PERFMON (and SYS_ADMIN where needed) are wanted", a)
			}
		}
	}
	if pod.SecurityContext == nil || pod.SecurityContext.SeccompProfile == nil ||
		pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod seccompProfile must be RuntimeDefault")
	}

	// hostPath: exactly tracefs and BTF, both read-only, nothing else from
	// the host.
	hostPaths := map[string]string{} // volume name -> host path
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	want := map[string]bool{"/sys/kernel/tracing": true, "/sys/kernel/btf": true}
	for name, p := range hostPaths {
		if !want[p] {
			t.Errorf("hostPath volume %s mounts %s: only /sys/kernel/tracing and /sys/kernel/btf are allowed", name, p)
		}
	}
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		p, ok := hostPaths[m.Name]
		if !ok {
			continue
		}
		mounted[p] = true
		if !m.ReadOnly {
			t.Errorf("hostPath %s is mounted read-write", p)
		}
		if m.MountPath != p {
			t.Errorf("hostPath %s is mounted at %s, not at the same path", p, m.MountPath)
		}
	}
	for p := range want {
		if !mounted[p] {
			t.Errorf("hostPath %s is not mounted", p)
		}
	}

	// Resources (see the measurement in daemonset.yaml).
	for name, q := range map[string]struct {
		list corev1.ResourceList
		res  corev1.ResourceName
		want string
	}{
		"cpu request":    {c.Resources.Requests, corev1.ResourceCPU, "10m"},
		"cpu limit":      {c.Resources.Limits, corev1.ResourceCPU, "500m"},
		"memory request": {c.Resources.Requests, corev1.ResourceMemory, "48Mi"},
		"memory limit":   {c.Resources.Limits, corev1.ResourceMemory, "128Mi"},
	} {
		got, ok := q.list[q.res]
		if !ok || got.Cmp(resource.MustParse(q.want)) != 0 {
			t.Errorf("%s: %v, want %s", name, got.String(), q.want)
		}
	}

	// Probes: /healthz on the metrics port.
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: none, or not httpGet", name)
			continue
		}
		if p.HTTPGet.Path != "/healthz" || (p.HTTPGet.Port.String() != "metrics" && p.HTTPGet.Port.IntValue() != metricsPort) {
			t.Errorf("%s probe: %s on port %s, want /healthz on %d", name, p.HTTPGet.Path, p.HTTPGet.Port.String(), metricsPort)
		}
	}

	// The Service selects the pods and exposes 19435 as "metrics".
	for k, v := range svc.Spec.Selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the DaemonSet's pods", k, v)
		}
	}
	if len(svc.Spec.Selector) == 0 {
		t.Error("Service has no selector")
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Ports[0].Port != metricsPort ||
		svc.Spec.Ports[0].TargetPort.String() != portName {
		t.Errorf("Service ports %+v: want one, metrics, %d, targetPort %s", svc.Spec.Ports, metricsPort, portName)
	}

	// The ServiceMonitor scrapes that port, with job="verifierlog-exporter".
	if len(o.serviceMonitors) == 1 {
		sm := o.serviceMonitors[0]
		smSel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		if !smSel.Matches(labelSet(svc.Labels)) || len(sm.Spec.Selector.MatchLabels)+len(sm.Spec.Selector.MatchExpressions) == 0 {
			t.Errorf("ServiceMonitor selector %v does not select the Service (labels %v)", sm.Spec.Selector, svc.Labels)
		}
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoints %+v: want port metrics, path /metrics", sm.Spec.Endpoints)
		}
		if job := svc.Labels[sm.Spec.JobLabel]; sm.Spec.JobLabel == "" || job != jobName {
			t.Errorf("ServiceMonitor jobLabel %q gives job %q, want %q (the rules' and dashboard's)", sm.Spec.JobLabel, job, jobName)
		}
	}
}

type labelSet map[string]string

func (l labelSet) Has(k string) bool              { _, ok := l[k]; return ok }
func (l labelSet) Get(k string) string            { return l[k] }
func (l labelSet) Lookup(k string) (string, bool) { v, ok := l[k]; return v, ok }

// kustomizeBuild renders dir with the kustomize built into kubectl.
func kustomizeBuild(t *testing.T, dir string) []byte {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		kerneltest.MissingTool(t, "kubectl (with its built-in kustomize)", "apt-get install kubernetes-client")
	}
	var stderr bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return out
}

func TestKustomizeBuild(t *testing.T) {
	k := readKustomization(t, k8sDir)
	var o objects
	docs := splitDocs(kustomizeBuild(t, k8sDir))
	for _, d := range docs {
		if err := o.decodeStrict(d); err != nil {
			t.Fatalf("kustomize output: %v\n%s", err, d)
		}
	}
	if len(docs) != len(k.Resources) {
		t.Errorf("kustomize rendered %d objects from %d resources", len(docs), len(k.Resources))
	}
	checkObjects(t, o, k.Namespace)
	for _, m := range []metav1.ObjectMeta{o.daemonSets[0].ObjectMeta, o.services[0].ObjectMeta, o.serviceAccounts[0].ObjectMeta, o.serviceMonitors[0].ObjectMeta} {
		if m.Namespace != k.Namespace {
			t.Errorf("%s: namespace %q, want %q", m.Name, m.Namespace, k.Namespace)
		}
		for _, l := range k.Labels {
			for lk, lv := range l.Pairs {
				if m.Labels[lk] != lv {
					t.Errorf("%s: label %s=%q, want %q", m.Name, lk, m.Labels[lk], lv)
				}
			}
		}
	}
	if len(k.Images) != 1 {
		t.Fatalf("want one images entry, have %d", len(k.Images))
	}
	wantImage := k.Images[0].NewName + ":" + k.Images[0].NewTag
	if got := o.daemonSets[0].Spec.Template.Spec.Containers[0].Image; got != wantImage {
		t.Errorf("rendered image %q, want %q", got, wantImage)
	}

	// The sys-admin component adds CAP_SYS_ADMIN and nothing else. kustomize
	// refuses absolute paths, so the overlay names the base relatively.
	overlay := t.TempDir()
	base, err := filepath.Abs(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(overlay, base)
	if err != nil {
		t.Fatal(err)
	}
	ov := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%q]\ncomponents: [%q]\n",
		rel, filepath.Join(rel, "components", "sys-admin"))
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(ov), 0o644); err != nil {
		t.Fatal(err)
	}
	var withAdmin objects
	for _, d := range splitDocs(kustomizeBuild(t, overlay)) {
		if err := withAdmin.decodeStrict(d); err != nil {
			t.Fatal(err)
		}
	}
	checkObjects(t, withAdmin, k.Namespace)
	got := withAdmin.daemonSets[0].Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add
	if !slices.Equal(got, []corev1.Capability{"BPF", "PERFMON", "SYS_ADMIN"}) {
		t.Errorf("with components/sys-admin: capabilities.add %v, want [BPF PERFMON SYS_ADMIN]", got)
	}
	withAdmin.daemonSets[0].Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add = o.daemonSets[0].Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add
	if !reflect.DeepEqual(withAdmin.daemonSets[0], o.daemonSets[0]) {
		t.Error("components/sys-admin changes more than the capabilities")
	}
}

// ---------------------------------------------------------------- Grafana

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
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    struct {
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

// promExpr is one PromQL expression of the dashboard or the rules.
type promExpr struct {
	where string // for messages
	expr  string // as written
	promq string // with Grafana variables substituted
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
			for _, tg := range p.Targets {
				if tg.Format != "heatmap" || !strings.Contains(tg.Expr, "_bucket") || !strings.Contains(tg.Expr, "by (le)") {
					t.Errorf("heatmap %q target %s: want format heatmap over sum by (le) of a _bucket series: %s", p.Title, tg.RefID, tg.Expr)
				}
				heatmaps = append(heatmaps, tg.Expr)
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

// ---------------------------------------------------------------- Prometheus rules

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
	for _, want := range []string{"VerifierLogTruncations", "VerifierlogExporterLostEvents", "VerifierlogExporterDown"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
	out := promtool(t, "prometheus", "check", "rules", filepath.Base(rulesFile))
	t.Logf("promtool check rules: %s", strings.TrimSpace(out))
	out = promtool(t, "prometheus", "test", "rules", filepath.Base(rulesTestFile))
	t.Logf("promtool test rules: %s", strings.TrimSpace(out))

	// The unit tests cover every alert firing and not firing, and every
	// recording rule.
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
	if err := yaml.Unmarshal(mustRead(t, rulesTestFile), &tests); err != nil {
		t.Fatal(err)
	}
	firing, quiet, evaluated := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				firing[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
		for _, e := range tc.PromQLExprTest {
			evaluated[strings.TrimSpace(e.Expr)] = true
		}
	}
	for _, a := range alerts {
		if !firing[a] || !quiet[a] {
			t.Errorf("%s: alert %s is not tested both firing (%v) and not firing (%v)", rulesTestFile, a, firing[a], quiet[a])
		}
	}
	for _, r := range records {
		if !evaluated[r] {
			t.Errorf("%s: recording rule %s is not evaluated", rulesTestFile, r)
		}
	}
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

// ---------------------------------------------------------------- metric names against a real scrape

// usage is what the expressions ask of the exporter's metrics.
type usage struct {
	metrics map[string][]string            // metric name -> where
	labels  map[string]map[string][]string // metric name -> label ("by:label" when grouped by) -> where
}

// collectUsage walks the expressions' ASTs: every vector selector's metric
// name and label matchers, and the grouping labels of every aggregation,
// attributed to the metrics aggregated.
func collectUsage(t *testing.T, exprs []promExpr) usage {
	t.Helper()
	u := usage{metrics: map[string][]string{}, labels: map[string]map[string][]string{}}
	addLabel := func(metric, label, where string) {
		if u.labels[metric] == nil {
			u.labels[metric] = map[string][]string{}
		}
		u.labels[metric][label] = append(u.labels[metric][label], where)
	}
	p := parser.NewParser(parser.Options{})
	for _, e := range exprs {
		ast, err := p.ParseExpr(e.promq)
		if err != nil {
			t.Errorf("%s: %v", e.where, err)
			continue
		}
		parser.Inspect(ast, func(node parser.Node, _ []parser.Node) error {
			switch n := node.(type) {
			case *parser.VectorSelector:
				name := n.Name
				for _, m := range n.LabelMatchers {
					if m.Name == "__name__" {
						name = m.Value
					}
				}
				u.metrics[name] = append(u.metrics[name], e.where)
				for _, m := range n.LabelMatchers {
					if m.Name != "__name__" {
						addLabel(name, m.Name, e.where)
					}
				}
			case *parser.AggregateExpr:
				if n.Without {
					return nil
				}
				var inner []string
				parser.Inspect(n.Expr, func(node parser.Node, _ []parser.Node) error {
					if vs, ok := node.(*parser.VectorSelector); ok {
						inner = append(inner, vs.Name)
					}
					return nil
				})
				for _, l := range n.Grouping {
					for _, m := range inner {
						addLabel(m, "by:"+l, e.where)
					}
				}
			}
			return nil
		})
	}
	return u
}

// familyFor finds the served family of a metric name as PromQL sees it:
// the name itself, or a histogram's _bucket, _sum or _count series.
func familyFor(fams map[string]*dto.MetricFamily, name string) (*dto.MetricFamily, string) {
	if f, ok := fams[name]; ok {
		return f, ""
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if f, ok := fams[base]; ok && (f.GetType() == dto.MetricType_HISTOGRAM || (suffix != "_bucket" && f.GetType() == dto.MetricType_SUMMARY)) {
				return f, suffix
			}
		}
	}
	return nil, ""
}

func familyHasLabel(f *dto.MetricFamily, label string) bool {
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				return true
			}
		}
	}
	return false
}

// TestMetricNamesServed starts the exporter, issues loads that make every
// family appear (undersized and retried loads, a BTF load, a load whose need
// stays unknown), scrapes it, and checks that every metric the dashboard
// and the rules use is served, with every label they match or group by.
func TestMetricNamesServed(t *testing.T) {
	kerneltest.Require(t)
	bin := exporterBinary(t)
	// OTLP push to a closed port, so that its self metrics are served too.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	srv := startExporter(t, []string{"OTEL_TRACES_EXPORTER=otlp", "OTEL_METRICS_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + closed, "OTEL_METRIC_EXPORT_INTERVAL=500", "OTEL_BSP_SCHEDULE_DELAY=100"}, bin, "--chain-window=100ms")
	comm := testComm("m")
	loadgen(t, bin, "--imitate", "cilium-ebpf", "--program", "long", "--insns", "1500", "--log-level", "2", "--comm", comm)
	loadgen(t, bin, "--program", "long", "--log-level", "2", "--log-size", "256", "--comm", comm)
	loadgen(t, bin, "--btf", "--log-size", "128", "--comm", comm)
	// libbpf 1.1's attr size: no log_true_size, and ENOSPC leaves the need
	// unknown when the chain ends.
	loadgen(t, bin, "--attr-size", "128", "--program", "long", "--log-level", "2", "--log-size", "256", "--comm", comm)
	mine := map[string]string{"loader": comm}
	fams := srv.waitScrape(func(f map[string]*dto.MetricFamily) bool {
		for _, name := range []string{"bpf_verifier_log_unknown_size_total", "bpf_prog_load_attempts",
			"bpf_verifier_log_required_bytes", "bpf_verifier_log_shortfall_bytes", "bpf_verifier_log_recommended_buffer_bytes"} {
			if _, ok := sample(f, name, mine); !ok {
				return false
			}
		}
		return true
	}, 20*time.Second)

	// The scrape as the README describes it, for our own loads.
	if n, _ := sample(fams, "bpf_prog_loads_total", map[string]string{"loader": comm, "command": "BPF_BTF_LOAD", "result": "ENOSPC"}); n != 1 {
		t.Errorf("bpf_prog_loads_total{command=BPF_BTF_LOAD,result=ENOSPC,loader=%s} = %v, want 1", comm, n)
	}
	if _, ok := sample(fams, "verifierlog_exporter_build_info", map[string]string{"version": buildVersion}); !ok {
		t.Errorf("verifierlog_exporter_build_info has no version=%q: the Containerfile's -X main.version does not reach it", buildVersion)
	}

	exprs := append(dashboardExprs(t, readDashboard(t)), ruleExprs(t)...)
	u := collectUsage(t, exprs)
	recorded := map[string]bool{}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	// Labels Prometheus adds to every scraped series.
	targetLabels := map[string]bool{"job": true, "instance": true}
	var names []string
	for n := range u.metrics {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "up" || recorded[name] {
			continue
		}
		f, suffix := familyFor(fams, name)
		if f == nil {
			t.Errorf("metric %s (used by %s) is not served by the exporter", name, strings.Join(slices.Compact(u.metrics[name]), "; "))
			continue
		}
		for l, where := range u.labels[name] {
			label, grouped := strings.CutPrefix(l, "by:")
			if targetLabels[label] || (label == "le" && suffix == "_bucket") || familyHasLabel(f, label) {
				continue
			}
			how := "matches on"
			if grouped {
				how = "groups by"
			}
			t.Errorf("%s %s label %q, which %s does not have", strings.Join(slices.Compact(where), "; "), how, label, f.GetName())
		}
	}
	t.Logf("checked %d metric names of %d expressions against a scrape of %d families", len(names), len(exprs), len(fams))
}

// ---------------------------------------------------------------- OpenTelemetry Collector

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

// ---------------------------------------------------------------- systemd

// unitDirectives parses a unit file into key -> values (in order).
func unitDirectives(t *testing.T) map[string][]string {
	t.Helper()
	d := map[string][]string{}
	for _, line := range strings.Split(string(mustRead(t, unitFile)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not key=value", unitFile, line)
		}
		d[k] = append(d[k], v)
	}
	return d
}

func unitCaps(t *testing.T, d map[string][]string, key string) []string {
	t.Helper()
	var caps []string
	for _, v := range d[key] {
		caps = append(caps, strings.Fields(v)...)
	}
	sort.Strings(caps)
	return caps
}

func TestSystemdUnit(t *testing.T) {
	d := unitDirectives(t)
	one := func(k string) string {
		if len(d[k]) != 1 {
			t.Errorf("%s: want one %s=, have %v", unitFile, k, d[k])
			return ""
		}
		return d[k][0]
	}
	if got := one("ExecStart"); got != fmt.Sprintf("/usr/local/bin/exporter --web.listen-address=:%d", metricsPort) {
		t.Errorf("ExecStart=%s", got)
	}
	ambient, bounding := unitCaps(t, d, "AmbientCapabilities"), unitCaps(t, d, "CapabilityBoundingSet")
	if !slices.Equal(ambient, bounding) {
		t.Errorf("AmbientCapabilities %v and CapabilityBoundingSet %v differ", ambient, bounding)
	}
	for _, c := range []string{"CAP_BPF", "CAP_PERFMON"} {
		if !slices.Contains(ambient, c) {
			t.Errorf("AmbientCapabilities lacks %s", c)
		}
	}
	for _, c := range ambient {
		if !slices.Contains([]string{"CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH", "CAP_SYS_ADMIN"}, c) {
			t.Errorf("AmbientCapabilities has %s", c)
		}
	}
	for k, v := range map[string]string{
		"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
		"PrivateTmp": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallArchitectures": "native",
		"LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
	} {
		if got := one(k); got != v {
			t.Errorf("%s=%s, want %s", k, got, v)
		}
	}
	for _, k := range []string{"PrivateUsers", "PrivateNetwork"} {
		if len(d[k]) > 0 {
			t.Errorf("%s= breaks the exporter (see the unit's comments)", k)
		}
	}

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		kerneltest.MissingTool(t, "systemd-analyze", "apt-get install systemd")
	}
	// verify checks that ExecStart's binary exists: point a copy of the unit
	// at the binary the Containerfile's build line makes.
	bin := exporterBinary(t)
	unit := strings.Replace(string(mustRead(t, unitFile)), "ExecStart=/usr/local/bin/exporter ", "ExecStart="+bin+" ", 1)
	path := filepath.Join(t.TempDir(), filepath.Base(unitFile))
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The exposure score (0 best, 10 worst) must stay at "OK": 2.0 or less.
	out, err = exec.Command(sa, "security", "--offline=yes", "--threshold=20", path).CombinedOutput()
	score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+ \S+)`).FindSubmatch(out)
	if err != nil || score == nil {
		t.Errorf("systemd-analyze security --offline=yes --threshold=20: %v\n%s", err, out)
	} else {
		t.Logf("systemd-analyze security: exposure %s", score[1])
	}
}

// ---------------------------------------------------------------- least privilege, for real

// TestDaemonSetPrivilegesSuffice runs the exporter as the DaemonSet's
// securityContext does (uid 0, only the capabilities it adds, no_new_privs,
// read-only root, read-only tracefs and /sys, its environment and
// arguments) and checks that it attaches, counts a load, and stays under
// the memory limit through a load storm.
func TestDaemonSetPrivilegesSuffice(t *testing.T) {
	kerneltest.Require(t)
	var o objects
	if err := o.decodeStrict(mustRead(t, filepath.Join(k8sDir, "daemonset.yaml"))); err != nil {
		t.Fatal(err)
	}
	c := o.daemonSets[0].Spec.Template.Spec.Containers[0]
	var caps []string
	for _, a := range c.SecurityContext.Capabilities.Add {
		caps = append(caps, string(a))
	}
	var env []string
	for _, e := range c.Env {
		if e.ValueFrom == nil && !strings.Contains(e.Value, "$(") {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	var args []string
	for _, a := range c.Args {
		if !strings.HasPrefix(a, "--web.listen-address=") { // a loopback port instead
			args = append(args, a)
		}
	}
	bin := exporterBinary(t)
	srv := sandbox{uid: int(*c.SecurityContext.RunAsUser), caps: caps, env: env, args: args}.start(t, bin)
	checkCountsLoads(t, srv, bin, "k")

	loadgen(t, bin, "--count", "2000", "--threads", "2")
	st := procStatus(t, srv.cmd.Process.Pid)
	var hwmKiB int64
	fmt.Sscanf(st["VmHWM"], "%d kB", &hwmKiB)
	limit := c.Resources.Limits[corev1.ResourceMemory]
	request := c.Resources.Requests[corev1.ResourceMemory]
	if hwmKiB*1024 >= limit.Value() {
		t.Errorf("VmHWM %d KiB after a storm of 4000 loads reaches the memory limit %s", hwmKiB, limit.String())
	}
	t.Logf("VmHWM after the storm: %.1f MiB (request %s, limit %s; BPF maps come on top)", float64(hwmKiB)/1024, request.String(), limit.String())
}

// TestSystemdPrivilegesSuffice runs the exporter as the unit does: a
// non-root uid (DynamicUser) holding the unit's AmbientCapabilities, with
// no_new_privs and a read-only root, /sys and tracefs (ProtectSystem=strict,
// ProtectKernelTunables=yes), and checks that it attaches and counts a
// load. It cannot reproduce systemd's seccomp filter and address-family
// restrictions: systemd-analyze verify checks those directives' syntax only.
func TestSystemdPrivilegesSuffice(t *testing.T) {
	kerneltest.Require(t)
	caps := unitCaps(t, unitDirectives(t), "AmbientCapabilities")
	bin := exporterBinary(t)
	// DynamicUser allocates from 61184-65519.
	uid := 61184 + os.Getpid()%4000
	srv := sandbox{uid: uid, caps: caps}.start(t, bin)
	checkCountsLoads(t, srv, bin, "s")
}

// ---------------------------------------------------------------- container image

type instruction struct {
	cmd, args string
}

type stage struct {
	from, name   string
	instructions []instruction
}

type containerfile struct{ stages []stage }

// build is the stage named "build".
func (c *containerfile) build() stage {
	for _, s := range c.stages {
		if s.name == "build" {
			return s
		}
	}
	return stage{}
}

func parseContainerfile(t testing.TB, path string) *containerfile {
	t.Helper()
	cf := &containerfile{}
	var cont string
	for _, line := range strings.Split(string(mustRead(t, path)), "\n") {
		trimmed := strings.TrimSpace(line)
		if cont == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cont += strings.TrimSuffix(trimmed, `\`) + " "
			continue
		}
		full := cont + trimmed
		cont = ""
		cmd, args, _ := strings.Cut(full, " ")
		cmd = strings.ToUpper(cmd)
		fields := strings.Fields(args)
		if cmd == "RUN" {
			// RUN's own flags (--mount=..., --network=...) are not the command.
			for len(fields) > 0 && strings.HasPrefix(fields[0], "--") {
				fields = fields[1:]
			}
		}
		args = strings.Join(fields, " ")
		if cmd == "FROM" {
			f := strings.Fields(args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			cf.stages = append(cf.stages, s)
			continue
		}
		if len(cf.stages) == 0 {
			if cmd != "ARG" {
				t.Fatalf("%s: %s before FROM", path, cmd)
			}
			continue
		}
		cf.stages[len(cf.stages)-1].instructions = append(cf.stages[len(cf.stages)-1].instructions, instruction{cmd, args})
	}
	return cf
}

func TestContainerfile(t *testing.T) {
	run, out, cf := containerBuildLine(t)
	if len(cf.stages) != 2 {
		t.Fatalf("want a build and a final stage, have %d stages", len(cf.stages))
	}
	// The build stage's Go matches go.mod's.
	gomod := string(mustRead(t, filepath.Join(moduleRoot(t), "go.mod")))
	m := regexp.MustCompile(`(?m)^go (1\.\d+)`).FindStringSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	if want := "golang:" + m[1]; !strings.HasSuffix(cf.stages[0].from, want) || cf.stages[0].name != "build" {
		t.Errorf("build stage FROM %s AS %s, want ...%s AS build", cf.stages[0].from, cf.stages[0].name, want)
	}
	if !strings.Contains(run, "CGO_ENABLED=0 go build") || !strings.HasSuffix(run, " ./cmd/exporter") || out != "/exporter" {
		t.Errorf("build line %q: want CGO_ENABLED=0 go build ... -o /exporter ./cmd/exporter", run)
	}
	final := cf.stages[1]
	if !strings.Contains(final.from, "distroless/static") && final.from != "scratch" {
		t.Errorf("final stage FROM %s, want distroless/static or scratch", final.from)
	}
	var copied, entry, user string
	for _, in := range final.instructions {
		switch in.cmd {
		case "COPY":
			if f := strings.Fields(in.args); len(f) == 3 && f[0] == "--from=build" && f[1] == out {
				copied = f[2]
			}
		case "ENTRYPOINT":
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil || len(argv) == 0 {
				t.Errorf("ENTRYPOINT %s is not an exec-form array", in.args)
			} else {
				entry = argv[0]
			}
		case "USER":
			user = in.args
		}
	}
	if copied == "" || entry != copied {
		t.Errorf("final stage: COPY --from=build %s -> %q, ENTRYPOINT %q", out, copied, entry)
	}
	if user != "0:0" && user != "0" && user != "root" {
		t.Errorf("USER %q: the exporter needs uid 0 (see the Containerfile's comment)", user)
	}

	// The build line really builds a static binary (what distroless/static
	// can run).
	checkStatic(t, exporterBinary(t))

	// Everything that build reads passes the Dockerfile-specific ignore file.
	ignore := parseIgnore(t, "Containerfile.dockerignore")
	root := moduleRoot(t)
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Dir,Module,GoFiles,EmbedFiles,SFiles", "./cmd/exporter")
	cmd.Dir = root
	listing, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	needed := []string{"go.mod", "go.sum"}
	dec := json.NewDecoder(bytes.NewReader(listing))
	for dec.More() {
		var pkg struct {
			Dir                         string
			Module                      *struct{ Main bool }
			GoFiles, EmbedFiles, SFiles []string
		}
		if err := dec.Decode(&pkg); err != nil {
			t.Fatal(err)
		}
		if pkg.Module == nil || !pkg.Module.Main {
			continue
		}
		for _, f := range slices.Concat(pkg.GoFiles, pkg.EmbedFiles, pkg.SFiles) {
			rel, err := filepath.Rel(root, filepath.Join(pkg.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			needed = append(needed, filepath.ToSlash(rel))
		}
	}
	for _, f := range needed {
		if !ignore.included(f) {
			t.Errorf("Containerfile.dockerignore leaves out %s, which the build needs", f)
		}
	}
	for _, f := range []string{".git/HEAD", "README.md", "vmtest/run.sh", "deploy/Containerfile", "tracer/kernel_test.go"} {
		if ignore.included(f) {
			t.Errorf("Containerfile.dockerignore sends %s, which the build does not need", f)
		}
	}
	if len(needed) < 10 {
		t.Errorf("go list found only %v", needed)
	}
}

// ignoreFile is a .dockerignore: patterns in order, the last match decides,
// "!" re-includes; "**" matches any number of directories.
type ignoreFile []struct {
	re      *regexp.Regexp
	include bool
}

func parseIgnore(t *testing.T, path string) ignoreFile {
	t.Helper()
	var f ignoreFile
	for _, line := range strings.Split(string(mustRead(t, path)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		include := strings.HasPrefix(line, "!")
		pat := strings.TrimPrefix(strings.TrimPrefix(line, "!"), "/")
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(pat); i++ {
			switch {
			case strings.HasPrefix(pat[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(pat[i:], "**"):
				re.WriteString(".*")
				i++
			case pat[i] == '*':
				re.WriteString("[^/]*")
			case pat[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(pat[i : i+1]))
			}
		}
		// A pattern that matches a directory covers what is inside it.
		re.WriteString("(/.*)?$")
		f = append(f, struct {
			re      *regexp.Regexp
			include bool
		}{regexp.MustCompile(re.String()), include})
	}
	return f
}

func (f ignoreFile) included(path string) bool {
	in := true
	for _, p := range f {
		if p.re.MatchString(path) {
			in = p.include
		}
	}
	return in
}
