package deploy

// The Helm chart: the real helm lints it and renders it with the default and
// with non-default values, every rendered object decodes strictly into its
// Kubernetes API type, each value lands where it should and nowhere else,
// and the default render is the kustomize base's render (and sysAdmin the
// sys-admin component's), up to the labels Helm adds by convention and the
// namespace.

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
)

const (
	helmChart   = "helm/verifierlog-exporter"
	helmVersion = "v4.3.2"
	helmInstall = "run backends/install.sh (go install helm.sh/helm/v4/cmd/helm@" + helmVersion + ")"

	// The release and namespace of deploy/README.md's `helm install`, which
	// give the objects the kustomize base's names.
	helmRelease   = "verifierlog-exporter"
	helmNamespace = "verifierlog"
)

// helmConventionLabels are the labels the chart adds by Helm's convention
// and the kustomize base does not have; the comparisons ignore only these
// (and the namespace).
var helmConventionLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}

// helmBinary finds helm v4.3.2 where backends/install.sh puts it, else on
// PATH; a missing helm, or one of another version, skips the test (fails it
// under CI=true).
func helmBinary(t *testing.T) string {
	t.Helper()
	path := filepath.Join(backends.CacheDir(), "helm-"+helmVersion, "helm")
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		p, err := exec.LookPath("helm")
		if err != nil {
			kerneltest.MissingTool(t, "helm "+helmVersion, helmInstall)
		}
		path = p
	}
	if v := helmBinaryVersion(path); v != helmVersion {
		kerneltest.MissingTool(t, "helm "+helmVersion, fmt.Sprintf("%s is %q; %s", path, v, helmInstall))
	}
	return path
}

// helmBinaryVersion is the version of the helm at path: the module version
// recorded by `go install` (whose binary, built without the release's
// ldflags, itself reports only "v4.3"), else what `helm version` says.
func helmBinaryVersion(path string) string {
	if bi, err := buildinfo.ReadFile(path); err == nil && bi.Main.Path == "helm.sh/helm/v4" &&
		strings.HasPrefix(bi.Main.Version, "v") {
		return bi.Main.Version
	}
	out, err := exec.Command(path, "version", "--template", "{{.Version}}").Output()
	if err != nil {
		return fmt.Sprintf("unknown (helm version: %v)", err)
	}
	return strings.TrimSpace(string(out))
}

// runHelm runs helm with args, its configuration, cache and data in a
// temporary directory, and returns its combined output and error.
func runHelm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helmBinary(t), args...)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"))
	return cmd.CombinedOutput()
}

// valuesFile writes values (YAML) to a file for --values.
func valuesFile(t *testing.T, values string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// helmTemplate renders the chart as release in namespace, with values
// (YAML, none if empty) and extra helm arguments, and decodes every object
// strictly.
func helmTemplate(t *testing.T, release, namespace, values string, extra ...string) objects {
	t.Helper()
	args := []string{"template", release, helmChart, "--namespace", namespace}
	if values != "" {
		args = append(args, "--values", valuesFile(t, values))
	}
	args = append(args, extra...)
	out, err := runHelm(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var o objects
	docs := splitDocs(out)
	if len(docs) == 0 {
		t.Fatalf("helm %s rendered nothing", strings.Join(args, " "))
	}
	for _, d := range docs {
		if err := o.decodeStrict(d); err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, d)
		}
	}
	for _, m := range o.metas() {
		if m.kind != "Namespace" && m.meta.Namespace != namespace {
			t.Errorf("%s %s: namespace %q, want the release's %q", m.kind, m.meta.Name, m.meta.Namespace, namespace)
		}
	}
	return o
}

type kindMeta struct {
	kind string
	meta *metav1.ObjectMeta
}

// metas lists every object's metadata.
func (o *objects) metas() []kindMeta {
	var ms []kindMeta
	for _, v := range o.namespaces {
		ms = append(ms, kindMeta{"Namespace", &v.ObjectMeta})
	}
	for _, v := range o.serviceAccounts {
		ms = append(ms, kindMeta{"ServiceAccount", &v.ObjectMeta})
	}
	for _, v := range o.services {
		ms = append(ms, kindMeta{"Service", &v.ObjectMeta})
	}
	for _, v := range o.daemonSets {
		ms = append(ms, kindMeta{"DaemonSet", &v.ObjectMeta})
	}
	for _, v := range o.serviceMonitors {
		ms = append(ms, kindMeta{"ServiceMonitor", &v.ObjectMeta})
	}
	for _, v := range o.podMonitors {
		ms = append(ms, kindMeta{"PodMonitor", &v.ObjectMeta})
	}
	return ms
}

// dropHelmConventions removes the labels Helm adds by convention from every
// label and annotation map and selector of a Helm render, and every
// namespace, so that it compares with a kustomize render (whose namespace
// it also clears: dropNamespaces).
func dropHelmConventions(t *testing.T, o *objects) {
	t.Helper()
	drop := func(m map[string]string) {
		for _, k := range helmConventionLabels {
			delete(m, k)
		}
	}
	for _, m := range o.metas() {
		drop(m.meta.Labels)
		drop(m.meta.Annotations)
	}
	for _, ds := range o.daemonSets {
		drop(ds.Spec.Selector.MatchLabels)
		drop(ds.Spec.Template.Labels)
		drop(ds.Spec.Template.Annotations)
	}
	for _, s := range o.services {
		drop(s.Spec.Selector)
	}
	for _, sm := range o.serviceMonitors {
		drop(sm.Spec.Selector.MatchLabels)
	}
	dropNamespaces(o)
}

func dropNamespaces(o *objects) {
	for _, m := range o.metas() {
		if m.kind != "Namespace" {
			m.meta.Namespace = ""
		}
	}
}

// diffYAML shows where want and got differ, as -/+ lines of their YAML.
func diffYAML(want, got any) string {
	a, errA := yaml.Marshal(want)
	b, errB := yaml.Marshal(got)
	if errA != nil || errB != nil {
		return fmt.Sprintf("(cannot marshal: %v %v)", errA, errB)
	}
	x, y := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	// Longest common subsequence, then walk it.
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var d strings.Builder
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			i, j = i+1, j+1
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			fmt.Fprintf(&d, "- %s\n", x[i])
			i++
		default:
			fmt.Fprintf(&d, "+ %s\n", y[j])
			j++
		}
	}
	return d.String()
}

// checkEqual fails unless want and got are deeply equal, showing the
// difference.
func checkEqual(t *testing.T, what string, want, got any) {
	t.Helper()
	if !reflect.DeepEqual(want, got) {
		t.Errorf("%s differ (- want, + got):\n%s", what, diffYAML(want, got))
	}
}

// helmChartFile is Chart.yaml, decoded strictly: only these fields.
type helmChartFile struct {
	APIVersion  string   `json:"apiVersion"`
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Type        string   `json:"type"`
	Version     string   `json:"version"`
	AppVersion  string   `json:"appVersion"`
	Keywords    []string `json:"keywords,omitempty"`
}

// helmValues is values.yaml, decoded strictly: a value the chart does not
// document here is an error.
type helmValues struct {
	Image struct {
		Repository string `json:"repository"`
		Tag        string `json:"tag"`
		PullPolicy string `json:"pullPolicy"`
	} `json:"image"`
	FullnameOverride string                      `json:"fullnameOverride"`
	CreateNamespace  bool                        `json:"createNamespace"`
	Port             int32                       `json:"port"`
	Resources        corev1.ResourceRequirements `json:"resources"`
	SysAdmin         bool                        `json:"sysAdmin"`
	ServiceMonitor   struct {
		Enabled bool              `json:"enabled"`
		Labels  map[string]string `json:"labels"`
	} `json:"serviceMonitor"`
	OTLP struct {
		Endpoint string `json:"endpoint"`
		Protocol string `json:"protocol"`
	} `json:"otlp"`
	ExtraArgs         []string            `json:"extraArgs"`
	NodeSelector      map[string]string   `json:"nodeSelector"`
	Tolerations       []corev1.Toleration `json:"tolerations"`
	PriorityClassName string              `json:"priorityClassName"`
}

// TestHelmChart checks Chart.yaml and values.yaml against the kustomize
// base, values.schema.json and deploy/README.md's values table against
// values.yaml, and that `helm lint` (and --strict) passes with the default
// and the non-default values and fails on a value of the wrong type.
func TestHelmChart(t *testing.T) {
	var c helmChartFile
	if err := strictYAML(mustRead(t, filepath.Join(helmChart, "Chart.yaml")), &c); err != nil {
		t.Fatalf("Chart.yaml: %v", err)
	}
	k := readKustomization(t, k8sDir)
	if len(k.Images) != 1 {
		t.Fatalf("kustomization.yaml: want one images entry, have %d", len(k.Images))
	}
	if c.APIVersion != "v2" || c.Type != "application" || c.Version != "0.1.0" || c.Name != jobName {
		t.Errorf("Chart.yaml: apiVersion %q type %q version %q name %q, want v2 application 0.1.0 %s", c.APIVersion, c.Type, c.Version, c.Name, jobName)
	}
	if c.AppVersion != k.Images[0].NewTag {
		t.Errorf("Chart.yaml appVersion %q, but the kustomize base deploys the tag %q", c.AppVersion, k.Images[0].NewTag)
	}

	raw := mustRead(t, filepath.Join(helmChart, "values.yaml"))
	var v helmValues
	if err := strictYAML(raw, &v); err != nil {
		t.Fatalf("values.yaml: %v", err)
	}
	if v.Image.Repository != k.Images[0].NewName || v.Image.Tag != "" {
		t.Errorf("values.yaml image %s:%s, want %s and an empty tag (appVersion)", v.Image.Repository, v.Image.Tag, k.Images[0].NewName)
	}
	if v.Port != metricsPort || v.SysAdmin || !v.ServiceMonitor.Enabled || v.CreateNamespace || v.OTLP.Endpoint != "" || len(v.ExtraArgs) != 0 {
		t.Errorf("values.yaml defaults %+v: want port %d, no sysAdmin, a ServiceMonitor, no Namespace, no OTLP endpoint, no extra args", v, metricsPort)
	}

	// values.schema.json describes exactly the values of values.yaml (and
	// "global", which Helm passes to every chart).
	var top map[string]any
	if err := yaml.Unmarshal(raw, &top); err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties map[string]any `json:"properties"`
	}
	if err := yaml.Unmarshal(mustRead(t, filepath.Join(helmChart, "values.schema.json")), &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	inSchema := slices.Sorted(maps.Keys(schema.Properties))
	inValues := append(slices.Sorted(maps.Keys(top)), "global")
	sort.Strings(inValues)
	if !slices.Equal(inSchema, inValues) {
		t.Errorf("values.schema.json describes %v, values.yaml has %v (+ global)", inSchema, inValues)
	}

	// deploy/README.md's values table names every value of values.yaml, and
	// only those.
	_, table, ok := strings.Cut(helmReadmeSection(t), "\n| value | default | what |\n")
	if !ok {
		t.Fatal("deploy/README.md's Helm section has no table | value | default | what |")
	}
	if i := strings.Index(table, "\n\n"); i >= 0 {
		table = table[:i]
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([A-Za-z][A-Za-z.]*)` \\|").FindAllStringSubmatch(table, -1) {
		key := m[1]
		if !hasValue(top, strings.Split(key, ".")) {
			t.Errorf("deploy/README.md's Helm values table lists %s, which values.yaml does not have", key)
		}
		documented[strings.SplitN(key, ".", 2)[0]] = true
	}
	for key := range top {
		if !documented[key] {
			t.Errorf("deploy/README.md's Helm values table does not list %s", key)
		}
	}

	// helm lint, plain and --strict (warnings are errors), with the default
	// and the non-default values.
	for _, args := range [][]string{
		{"lint", helmChart},
		{"lint", "--strict", helmChart},
		{"lint", "--strict", helmChart, "--values", valuesFile(t, nonDefaultValues)},
	} {
		out, err := runHelm(t, args...)
		if err != nil || !bytes.Contains(out, []byte("1 chart(s) linted, 0 chart(s) failed")) {
			t.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// and it is not a formality: a value of the wrong type fails it.
	if out, err := runHelm(t, "lint", "--strict", helmChart, "--set", "sysAdmin=yes"); err == nil ||
		!bytes.Contains(out, []byte("/sysAdmin")) {
		t.Errorf("helm lint accepted sysAdmin=yes (err %v)\n%s", err, out)
	}
}

// hasValue says whether values has the key path.
func hasValue(values map[string]any, path []string) bool {
	v, ok := values[path[0]]
	if !ok || len(path) == 1 {
		return ok
	}
	sub, ok := v.(map[string]any)
	return ok && hasValue(sub, path[1:])
}

// helmReadmeSection is deploy/README.md's "## Helm" section.
func helmReadmeSection(t *testing.T) string {
	t.Helper()
	readme := string(mustRead(t, "README.md"))
	_, s, ok := strings.Cut(readme, "\n## Helm\n")
	if !ok {
		t.Fatal(`deploy/README.md has no "## Helm" section`)
	}
	if i := strings.Index(s, "\n## "); i >= 0 {
		s = s[:i]
	}
	return s
}

// nonDefaultValues sets every value of the chart to something other than
// its default.
const nonDefaultValues = `
image:
  repository: registry.test/bpf/verifierlog-exporter
  tag: v9.8.7
  pullPolicy: Always
fullnameOverride: bpf-exporter
createNamespace: true
port: 19500
resources:
  requests:
    cpu: 20m
    memory: 64Mi
  limits:
    cpu: "1"
    memory: 256Mi
sysAdmin: true
serviceMonitor:
  enabled: false
  labels:
    release: kube-prometheus-stack
otlp:
  endpoint: http://otel-collector.observability:4318
  protocol: http/protobuf
extraArgs:
  - --attach=fentry
  - --log.level=debug
nodeSelector:
  kubernetes.io/os: linux
  bpf.example.com/traced: "true"
tolerations:
  - key: dedicated
    operator: Equal
    value: bpf
    effect: NoSchedule
priorityClassName: ""
`

// TestHelmTemplate renders the chart with the default values (checked as
// the kustomize manifests are) and with every value changed, and checks
// that each value lands where it should and changes nothing else.
func TestHelmTemplate(t *testing.T) {
	def := helmTemplate(t, helmRelease, helmNamespace, "")
	if len(def.namespaces) != 0 {
		t.Errorf("the default render has a Namespace: createNamespace is off by default")
	}
	checkObjects(t, def, helmNamespace)
	for _, m := range def.metas() {
		if m.meta.Name != helmRelease {
			t.Errorf("%s named %q, want %q (the release's name)", m.kind, m.meta.Name, helmRelease)
		}
	}

	// Another release name: the objects are named after it, the job stays
	// verifierlog-exporter (checkObjects), the ServiceMonitor carries the
	// labels a Prometheus may select on.
	other := helmTemplate(t, "bpf", "monitoring", "serviceMonitor:\n  labels:\n    release: kube-prometheus-stack\n")
	checkObjects(t, other, "monitoring")
	for _, m := range other.metas() {
		if m.meta.Name != "bpf-verifierlog-exporter" {
			t.Errorf("release bpf: %s named %q, want bpf-verifierlog-exporter", m.kind, m.meta.Name)
		}
	}
	if got := other.serviceMonitors[0].Labels["release"]; got != "kube-prometheus-stack" {
		t.Errorf("serviceMonitor.labels: the ServiceMonitor has release=%q", got)
	}
	if got := other.daemonSets[0].Spec.Selector.MatchLabels["app.kubernetes.io/instance"]; got != "bpf" {
		t.Errorf("release bpf: the DaemonSet selects instance=%q", got)
	}

	nd := helmTemplate(t, helmRelease, helmNamespace, nonDefaultValues)
	if len(nd.daemonSets) != 1 || len(nd.services) != 1 || len(nd.serviceAccounts) != 1 {
		t.Fatalf("non-default render: %d DaemonSets, %d Services, %d ServiceAccounts, want one each", len(nd.daemonSets), len(nd.services), len(nd.serviceAccounts))
	}
	ds, svc := nd.daemonSets[0], nd.services[0]
	pod := &ds.Spec.Template.Spec
	c := &pod.Containers[0]

	// serviceMonitor.enabled: false removes it; createNamespace: true adds
	// the release's Namespace, with the base's Pod Security labels.
	if len(nd.serviceMonitors)+len(nd.podMonitors) != 0 {
		t.Errorf("serviceMonitor.enabled: false, but the render has %d ServiceMonitors", len(nd.serviceMonitors))
	}
	if len(nd.namespaces) != 1 || nd.namespaces[0].Name != helmNamespace {
		t.Errorf("createNamespace: true: want the Namespace %s, have %d Namespaces", helmNamespace, len(nd.namespaces))
	} else {
		var base objects
		if err := base.decodeStrict(mustRead(t, filepath.Join(k8sDir, "namespace.yaml"))); err != nil {
			t.Fatal(err)
		}
		for k, want := range base.namespaces[0].Labels {
			if got := nd.namespaces[0].Labels[k]; got != want {
				t.Errorf("Namespace label %s=%q, want %q as in namespace.yaml", k, got, want)
			}
		}
	}

	// port: the container port "metrics", which the probes name, the
	// Service, and --web.listen-address.
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 19500 {
		t.Errorf("port 19500: container ports %+v", c.Ports)
	}
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port != intstr.FromString("metrics") {
			t.Errorf("port 19500: the %s probe does not probe the port metrics: %+v", name, p)
		}
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 19500 || svc.Spec.Ports[0].TargetPort != intstr.FromString("metrics") {
		t.Errorf("port 19500: Service ports %+v", svc.Spec.Ports)
	}
	// extraArgs follow --web.listen-address, in order.
	if want := []string{"--web.listen-address=:19500", "--attach=fentry", "--log.level=debug"}; !slices.Equal(c.Args, want) {
		t.Errorf("port 19500, extraArgs: args %q, want %q", c.Args, want)
	}
	// sysAdmin: exactly SYS_ADMIN more.
	if got := c.SecurityContext.Capabilities.Add; !slices.Equal(got, []corev1.Capability{"BPF", "PERFMON", "SYS_ADMIN"}) {
		t.Errorf("sysAdmin: capabilities.add %v, want [BPF PERFMON SYS_ADMIN]", got)
	}
	// image.
	if c.Image != "registry.test/bpf/verifierlog-exporter:v9.8.7" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image: %s, pull policy %s", c.Image, c.ImagePullPolicy)
	}
	// resources.
	for name, q := range map[string]struct {
		list corev1.ResourceList
		res  corev1.ResourceName
		want string
	}{
		"cpu request":    {c.Resources.Requests, corev1.ResourceCPU, "20m"},
		"cpu limit":      {c.Resources.Limits, corev1.ResourceCPU, "1"},
		"memory request": {c.Resources.Requests, corev1.ResourceMemory, "64Mi"},
		"memory limit":   {c.Resources.Limits, corev1.ResourceMemory, "256Mi"},
	} {
		if got, ok := q.list[q.res]; !ok || got.Cmp(resource.MustParse(q.want)) != 0 {
			t.Errorf("resources: %s %s, want %s", name, got.String(), q.want)
		}
	}
	// otlp: the exporter's OTEL_* variables, after the DaemonSet's own.
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	for name, want := range map[string]string{
		"OTEL_TRACES_EXPORTER":        "otlp",
		"OTEL_METRICS_EXPORTER":       "otlp",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
	} {
		if env[name] != want {
			t.Errorf("otlp: %s=%q, want %q", name, env[name], want)
		}
	}
	// nodeSelector, tolerations, priorityClassName, fullnameOverride.
	if !maps.Equal(pod.NodeSelector, map[string]string{"kubernetes.io/os": "linux", "bpf.example.com/traced": "true"}) {
		t.Errorf("nodeSelector: %v", pod.NodeSelector)
	}
	if want := []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "bpf", Effect: corev1.TaintEffectNoSchedule}}; !reflect.DeepEqual(pod.Tolerations, want) {
		t.Errorf("tolerations: %+v", pod.Tolerations)
	}
	if pod.PriorityClassName != "" {
		t.Errorf("priorityClassName \"\": the pod has %q", pod.PriorityClassName)
	}
	for _, m := range nd.metas() {
		if m.kind != "Namespace" && m.meta.Name != "bpf-exporter" {
			t.Errorf("fullnameOverride: %s named %q", m.kind, m.meta.Name)
		}
	}
	if pod.ServiceAccountName != "bpf-exporter" {
		t.Errorf("fullnameOverride: serviceAccountName %q", pod.ServiceAccountName)
	}

	// Nothing else changes: the default render, edited as the values say,
	// is the non-default render.
	want := def.daemonSets[0].DeepCopy()
	want.Name = "bpf-exporter"
	wp := &want.Spec.Template.Spec
	wc := &wp.Containers[0]
	wp.ServiceAccountName = "bpf-exporter"
	wp.NodeSelector = map[string]string{"kubernetes.io/os": "linux", "bpf.example.com/traced": "true"}
	wp.Tolerations = slices.Clone(pod.Tolerations)
	wp.PriorityClassName = ""
	wc.Image, wc.ImagePullPolicy = "registry.test/bpf/verifierlog-exporter:v9.8.7", corev1.PullAlways
	wc.Args = []string{"--web.listen-address=:19500", "--attach=fentry", "--log.level=debug"}
	wc.Ports[0].ContainerPort = 19500
	wc.Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("20m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	wc.SecurityContext.Capabilities.Add = append(wc.SecurityContext.Capabilities.Add, "SYS_ADMIN")
	wc.Env = append(wc.Env,
		corev1.EnvVar{Name: "OTEL_TRACES_EXPORTER", Value: "otlp"},
		corev1.EnvVar{Name: "OTEL_METRICS_EXPORTER", Value: "otlp"},
		corev1.EnvVar{Name: "OTEL_EXPORTER_OTLP_PROTOCOL", Value: "http/protobuf"},
		corev1.EnvVar{Name: "OTEL_EXPORTER_OTLP_ENDPOINT", Value: "http://otel-collector.observability:4318"})
	checkEqual(t, "the default DaemonSet edited as the non-default values say, and the non-default DaemonSet,", canonical(t, want), canonical(t, ds))
	wantSvc := def.services[0].DeepCopy()
	wantSvc.Name = "bpf-exporter"
	wantSvc.Spec.Ports[0].Port = 19500
	checkEqual(t, "the default Service with port 19500, and the non-default Service,", wantSvc, svc)

	// The default protocol with an endpoint is grpc.
	grpc := helmTemplate(t, helmRelease, helmNamespace, "otlp:\n  endpoint: http://collector:4317\n")
	for _, e := range grpc.daemonSets[0].Spec.Template.Spec.Containers[0].Env {
		if e.Name == "OTEL_EXPORTER_OTLP_PROTOCOL" && e.Value != "grpc" {
			t.Errorf("otlp.endpoint alone: OTEL_EXPORTER_OTLP_PROTOCOL=%q, want grpc", e.Value)
		}
	}

	// Values the chart cannot use are refused, not rendered.
	for set, msg := range map[string]string{
		"port=metrics":        "/port",
		"port=70000":          "/port",
		"sysAdmin=yes":        "/sysAdmin",
		"otlp.protocol=http":  "/otlp/protocol",
		"extraArgs=--foo":     "/extraArgs",
		"serviceMonitr.x=y":   "serviceMonitr",
		"image.repository=":   "/image/repository",
		"image.pullPolicy=No": "/image/pullPolicy",
	} {
		out, err := runHelm(t, "template", helmRelease, helmChart, "--set", set)
		if err == nil || !bytes.Contains(out, []byte(msg)) {
			t.Errorf("helm template --set %s: rendered or failed without naming %s (err %v)\n%.600s", set, msg, err, out)
		}
	}
}

// canonical round-trips v through YAML so that resource quantities parsed
// from text and built in Go compare equal.
func canonical(t *testing.T, ds *appsv1.DaemonSet) *appsv1.DaemonSet {
	t.Helper()
	b, err := yaml.Marshal(ds)
	if err != nil {
		t.Fatal(err)
	}
	var out appsv1.DaemonSet
	if err := strictYAML(b, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// TestHelmMatchesKustomize compares the default Helm render with `kubectl
// kustomize deploy/kubernetes`, field by field for what matters most and
// then whole, ignoring only the labels Helm adds by convention and the
// namespace.
func TestHelmMatchesKustomize(t *testing.T) {
	h := helmTemplate(t, helmRelease, helmNamespace, "")
	var k objects
	for _, d := range splitDocs(kustomizeBuild(t, k8sDir)) {
		if err := k.decodeStrict(d); err != nil {
			t.Fatalf("kustomize output: %v\n%s", err, d)
		}
	}
	if len(k.daemonSets) != 1 || len(k.services) != 1 || len(h.daemonSets) != 1 || len(h.services) != 1 {
		t.Fatalf("want one DaemonSet and one Service from each; kustomize %d, %d, helm %d, %d", len(k.daemonSets), len(k.services), len(h.daemonSets), len(h.services))
	}
	// The labels ignored are exactly those Helm adds.
	for _, m := range h.metas() {
		for _, l := range helmConventionLabels {
			if _, ok := m.meta.Labels[l]; !ok {
				t.Errorf("helm %s lacks the label %s", m.kind, l)
			}
		}
	}
	dropHelmConventions(t, &h)
	dropNamespaces(&k)

	hp, kp := h.daemonSets[0].Spec.Template.Spec, k.daemonSets[0].Spec.Template.Spec
	hc, kc := hp.Containers[0], kp.Containers[0]
	checkEqual(t, "pod securityContext", kp.SecurityContext, hp.SecurityContext)
	checkEqual(t, "container securityContext", kc.SecurityContext, hc.SecurityContext)
	checkEqual(t, "volumes", kp.Volumes, hp.Volumes)
	checkEqual(t, "volumeMounts", kc.VolumeMounts, hc.VolumeMounts)
	checkEqual(t, "container ports", kc.Ports, hc.Ports)
	checkEqual(t, "startup probe", kc.StartupProbe, hc.StartupProbe)
	checkEqual(t, "liveness probe", kc.LivenessProbe, hc.LivenessProbe)
	checkEqual(t, "readiness probe", kc.ReadinessProbe, hc.ReadinessProbe)
	checkEqual(t, "resources", kc.Resources, hc.Resources)
	checkEqual(t, "args", kc.Args, hc.Args)
	checkEqual(t, "env", kc.Env, hc.Env)
	checkEqual(t, "image", kc.Image, hc.Image)
	checkEqual(t, "Service ports", k.services[0].Spec.Ports, h.services[0].Spec.Ports)

	// And whole: every object of one render is in the other, equal.
	checkEqual(t, "DaemonSets", k.daemonSets, h.daemonSets)
	checkEqual(t, "Services", k.services, h.services)
	checkEqual(t, "ServiceAccounts", k.serviceAccounts, h.serviceAccounts)
	checkEqual(t, "ServiceMonitors", k.serviceMonitors, h.serviceMonitors)
	checkEqual(t, "PodMonitors", k.podMonitors, h.podMonitors)

	// With createNamespace, the Namespace is the base's, named after the
	// release's namespace.
	hn := helmTemplate(t, helmRelease, helmNamespace, "createNamespace: true\n")
	dropHelmConventions(t, &hn)
	checkEqual(t, "Namespaces", k.namespaces, hn.namespaces)
}

// TestHelmSysAdminMatchesComponent compares the render with sysAdmin: true
// with the kustomize base plus components/sys-admin.
func TestHelmSysAdminMatchesComponent(t *testing.T) {
	h := helmTemplate(t, helmRelease, helmNamespace, "sysAdmin: true\n")

	k := kustomizeWithSysAdmin(t)
	if len(k.daemonSets) != 1 || len(h.daemonSets) != 1 {
		t.Fatalf("want one DaemonSet from each; kustomize %d, helm %d", len(k.daemonSets), len(h.daemonSets))
	}
	kcaps := k.daemonSets[0].Spec.Template.Spec.Containers[0].SecurityContext.Capabilities
	hcaps := h.daemonSets[0].Spec.Template.Spec.Containers[0].SecurityContext.Capabilities
	if !slices.Contains(kcaps.Add, "SYS_ADMIN") {
		t.Fatalf("components/sys-admin does not add SYS_ADMIN: %v", kcaps.Add)
	}
	checkEqual(t, "capabilities (sysAdmin: true vs components/sys-admin)", kcaps, hcaps)

	dropHelmConventions(t, &h)
	dropNamespaces(&k)
	checkEqual(t, "DaemonSets (sysAdmin: true vs components/sys-admin)", k.daemonSets, h.daemonSets)
}
