package deploy

// The Kubernetes manifests: each decodes strictly into its API type, they
// fit together and grant least privilege, and kustomize (kubectl's) renders
// them, with and without the sys-admin component.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

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

	// The sys-admin component adds CAP_SYS_ADMIN and nothing else.
	withAdmin := kustomizeWithSysAdmin(t)
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

// kustomizeWithSysAdmin renders the base with components/sys-admin, through
// an overlay in a temporary directory, and decodes it strictly. kustomize
// refuses absolute paths, so the overlay names the base relatively.
func kustomizeWithSysAdmin(t *testing.T) objects {
	t.Helper()
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
	var o objects
	for _, d := range splitDocs(kustomizeBuild(t, overlay)) {
		if err := o.decodeStrict(d); err != nil {
			t.Fatal(err)
		}
	}
	return o
}
