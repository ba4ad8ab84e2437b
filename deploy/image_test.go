package deploy

// The image, for real: deploy/build-image.sh builds it with podman for
// amd64 and arm64 (and their manifest list, pushed to an OCI layout to
// prove the push), the images hold what they should for their
// architecture, and the amd64 image runs as the DaemonSet runs it: its
// container securityContext, namespaces, hostPath mounts, port,
// environment and limits translated to podman's options, with the shipped
// seccomp profile. It attaches, counts a load issued on the host and stops
// within the grace period; with one capability fewer, or under podman's
// default seccomp profile, it exits with one line naming the cause.
//
// The podman quirks of this host (crun refuses its hybrid cgroups, the
// default ulimits are refused) are options of the test's podman, and it
// keeps its images and containers in a store of its own, removed after.

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"

	"github.com/verifierlog/exporter/internal/backends"
	"github.com/verifierlog/exporter/internal/kerneltest"
)

const (
	// seccompProfile is the shipped profile: podman's (containers-common's)
	// default plus bpf(2) and perf_event_open(2) for CAP_BPF and CAP_PERFMON.
	seccompProfile = "seccomp/verifierlog-exporter.json"
	// runtimeDefaultSeccomp is podman's default profile, its base.
	runtimeDefaultSeccomp = "/usr/share/containers/seccomp.json"
	// seccompBaseSHA256 is the sha256 of the profile seccompProfile was
	// derived from: containers-common 0.50.1 (Debian 12, podman 4.3).
	seccompBaseSHA256 = "cc374cf23846ce1f62f4dc807a8e2b8673c783c6f56cb475467621035d281e6c"
	installPodman     = "backends/install.sh installs it (apt-get install podman runc)"
)

// podman runs podman with a store of its own, in dir.
type podman struct {
	dir  string
	argv []string // podman and its global options
}

func newPodman(t *testing.T) *podman {
	t.Helper()
	for _, tool := range []string{"podman", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			kerneltest.MissingTool(t, tool, installPodman)
		}
	}
	if os.Geteuid() != 0 {
		kerneltest.Unavailable(t, "needs root: only rootful podman can hand the container the host's CAP_BPF and CAP_PERFMON")
	}
	dir, err := os.MkdirTemp("", "verifierlog-image-")
	if err != nil {
		t.Fatal(err)
	}
	p := &podman{dir: dir, argv: []string{"podman",
		"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"), "--tmpdir", filepath.Join(dir, "tmp"),
		// vfs: no overlay mounts to leave behind; runc: crun refuses this
		// host's hybrid cgroup layout, and so does the systemd manager.
		"--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"}}
	t.Cleanup(func() {
		if _, err := p.run("rm", "--all", "--force", "--time", "0"); err != nil {
			t.Logf("removing the test's containers: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing the test's podman store %s: %v", dir, err)
		}
	})
	return p
}

// run runs podman args and returns its standard output; the error carries
// the command and its standard error.
func (p *podman) run(args ...string) (string, error) {
	return p.runContext(context.Background(), args...)
}

func (p *podman) runContext(ctx context.Context, args ...string) (string, error) {
	argv := append(slices.Clone(p.argv), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("podman %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (p *podman) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := p.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// builtImage is what build-image.sh made.
type builtImage struct {
	list    string            // the manifest list
	images  map[string]string // architecture -> its image
	context string            // the build context it filled
}

// buildImage runs build-image.sh with p for both architectures.
func buildImage(t *testing.T, p *podman) builtImage {
	t.Helper()
	b := builtImage{
		list:    "localhost/verifierlog-exporter-test:" + buildVersion,
		images:  map[string]string{},
		context: filepath.Join(p.dir, "context"),
	}
	cmd := exec.Command("bash", buildScript, b.list)
	cmd.Env = append(os.Environ(), "ENGINE="+strings.Join(p.argv, " "), "CONTEXT="+b.context, "VERSION="+buildVersion)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", buildScript, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "build-image:") {
			t.Log(line)
		}
	}
	t.Logf("%s took %v", buildScript, time.Since(start).Round(100*time.Millisecond))
	for _, arch := range strings.Fields(scriptDefault(t, "ARCHES")) {
		b.images[arch] = b.list + "-" + arch
	}
	return b
}

// imageConfig is the part of `podman image inspect` the tests read.
type imageConfig struct {
	Digest       string
	Os           string
	Architecture string
	Size         int64
	Config       struct {
		User         string
		ExposedPorts map[string]struct{}
		Entrypoint   []string
		Cmd          []string
		Labels       map[string]string
	}
}

func inspectImage(t *testing.T, p *podman, image string) imageConfig {
	t.Helper()
	var cfgs []imageConfig
	if err := json.Unmarshal([]byte(p.must(t, "image", "inspect", image)), &cfgs); err != nil || len(cfgs) != 1 {
		t.Fatalf("podman image inspect %s: %v (%d images)", image, err, len(cfgs))
	}
	return cfgs[0]
}

// daemonSetContainer is the DaemonSet's pod spec and its one container.
func daemonSetContainer(t *testing.T) (corev1.PodSpec, corev1.Container) {
	t.Helper()
	var o objects
	if err := o.decodeStrict(mustRead(t, filepath.Join(k8sDir, "daemonset.yaml"))); err != nil {
		t.Fatal(err)
	}
	pod := o.daemonSets[0].Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("the DaemonSet has %d containers and %d init containers; the test runs one", len(pod.Containers), len(pod.InitContainers))
	}
	return pod, pod.Containers[0]
}

func TestImage(t *testing.T) {
	p := newPodman(t)
	img := buildImage(t, p)
	pod, c := daemonSetContainer(t)

	t.Run("contents", func(t *testing.T) { checkImageContents(t, p, img, c) })
	t.Run("manifest list", func(t *testing.T) { checkManifestList(t, p, img) })
	t.Run("arm64 runs", func(t *testing.T) { runArm64(t, p, img) })

	t.Run("as the DaemonSet runs it", func(t *testing.T) {
		kerneltest.Require(t)
		runAsDaemonSet(t, p, img, pod, c)
	})
	// Each failure is a container of its own: they run side by side.
	t.Run("refused", func(t *testing.T) {
		kerneltest.Require(t)
		var added []string
		for _, a := range c.SecurityContext.Capabilities.Add {
			added = append(added, string(a))
		}
		for _, capName := range added {
			t.Run("without "+capName, func(t *testing.T) {
				t.Parallel()
				line := runRefused(t, p, img, pod, c, runVariant{name: "nocap-" + strings.ToLower(capName), dropCap: capName})
				if !strings.Contains(line, "lacks CAP_"+capName) || strings.Contains(line, "cannot run") {
					t.Errorf("without CAP_%s the error does not blame its lack, or blames the kernel: %s", capName, line)
				}
			})
		}
		t.Run("runtime default seccomp", func(t *testing.T) {
			t.Parallel()
			line := runRefused(t, p, img, pod, c, runVariant{name: "seccomp-default", runtimeDefaultSeccomp: true})
			for _, want := range []string{"seccomp", "refused bpf(2)", "not a missing capability"} {
				if !strings.Contains(line, want) {
					t.Errorf("under podman's default seccomp profile the error does not say %q: %s", want, line)
				}
			}
		})
	})
}

// checkImageContents: each architecture's image is that architecture's,
// starts the exporter as the DaemonSet expects, and holds nothing but the
// context's binary for it and the CA bundle.
func checkImageContents(t *testing.T, p *podman, img builtImage, c corev1.Container) {
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for arch, image := range img.images {
		cfg := inspectImage(t, p, image)
		if cfg.Os != "linux" || cfg.Architecture != arch {
			t.Errorf("%s: platform %s/%s, want linux/%s", image, cfg.Os, cfg.Architecture, arch)
		}
		if !slices.Equal(cfg.Config.Entrypoint, []string{"/exporter"}) || !slices.Equal(cfg.Config.Cmd, c.Args) {
			t.Errorf("%s: entrypoint %q, cmd %q; want [/exporter] and the DaemonSet's args %q", image, cfg.Config.Entrypoint, cfg.Config.Cmd, c.Args)
		}
		if _, ok := cfg.Config.ExposedPorts[fmt.Sprintf("%d/tcp", metricsPort)]; cfg.Config.User != "0:0" || !ok {
			t.Errorf("%s: user %q, ports %v", image, cfg.Config.User, cfg.Config.ExposedPorts)
		}
		if v := cfg.Config.Labels["org.opencontainers.image.version"]; v != buildVersion {
			t.Errorf("%s: version label %q, want %q", image, v, buildVersion)
		}

		// The image's file system, through a container that never runs.
		name := "verifierlog-contents-" + arch
		p.must(t, "create", "--name", name, image)
		files := exportFiles(t, p, name)
		p.must(t, "rm", name)
		var names []string
		for n := range files {
			names = append(names, n)
		}
		sort.Strings(names)
		if !slices.Equal(names, []string{"etc/ssl/certs/ca-certificates.crt", "exporter"}) {
			t.Errorf("%s holds %v, want only exporter and etc/ssl/certs/ca-certificates.crt", image, names)
		}
		want := mustRead(t, filepath.Join(img.context, arch, "exporter"))
		bin := files["exporter"]
		if !bytes.Equal(bin, want) {
			t.Errorf("%s: /exporter (%d bytes) is not the context's %s/exporter (%d bytes)", image, len(bin), arch, len(want))
		}
		if f, err := elf.NewFile(bytes.NewReader(bin)); err != nil {
			t.Errorf("%s: /exporter: %v", image, err)
		} else {
			if f.Machine != machines[arch] {
				t.Errorf("%s: /exporter is for %v, want %v", image, f.Machine, machines[arch])
			}
			for _, prog := range f.Progs {
				if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
					t.Errorf("%s: /exporter is not static (%v)", image, prog.Type)
				}
			}
		}
		if !bytes.Contains(files["etc/ssl/certs/ca-certificates.crt"], []byte("-----BEGIN CERTIFICATE-----")) {
			t.Errorf("%s: no PEM certificates in /etc/ssl/certs/ca-certificates.crt", image)
		}
		// Small: the binary and the bundle, and next to nothing else.
		extra := cfg.Size - int64(len(bin)) - int64(len(files["etc/ssl/certs/ca-certificates.crt"]))
		if extra < 0 || extra > 64<<10 {
			t.Errorf("%s: %d bytes, %d more than its two files", image, cfg.Size, extra)
		}
		t.Logf("%s: linux/%s, %d bytes (%.1f MB; binary %d, CA bundle %d)", image, cfg.Architecture, cfg.Size, float64(cfg.Size)/1e6,
			len(bin), len(files["etc/ssl/certs/ca-certificates.crt"]))
	}
}

// exportFiles returns the regular files of container name's file system.
func exportFiles(t *testing.T, p *podman, name string) map[string][]byte {
	t.Helper()
	argv := append(slices.Clone(p.argv), "export", name)
	cmd := exec.Command(argv[0], argv[1:]...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("podman export %s: %v", name, err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("podman export %s: %v", name, err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[strings.TrimPrefix(filepath.Clean(h.Name), "/")] = b
		}
	}
	return files
}

// checkManifestList: the list names each architecture's image, and pushes
// (to an OCI layout here, as `podman manifest push --all` would to a
// registry) with both.
func checkManifestList(t *testing.T, p *podman, img builtImage) {
	var list struct {
		Manifests []struct {
			Digest   string
			Platform struct{ Architecture, OS string }
		}
	}
	if err := json.Unmarshal([]byte(p.must(t, "manifest", "inspect", img.list)), &list); err != nil {
		t.Fatalf("podman manifest inspect %s: %v", img.list, err)
	}
	have := map[string]string{}
	for _, m := range list.Manifests {
		have[m.Platform.OS+"/"+m.Platform.Architecture] = m.Digest
	}
	for arch, image := range img.images {
		if d := inspectImage(t, p, image).Digest; have["linux/"+arch] != d {
			t.Errorf("manifest list %s: linux/%s is %q, want %s's %s", img.list, arch, have["linux/"+arch], image, d)
		}
	}
	if len(have) != len(img.images) {
		t.Errorf("manifest list %s has %v, want %d entries", img.list, have, len(img.images))
	}

	layout := filepath.Join(p.dir, "pushed")
	p.must(t, "manifest", "push", "--all", img.list, "oci:"+layout+":"+buildVersion)
	blob := func(digest string, v any) {
		t.Helper()
		hexd, ok := strings.CutPrefix(digest, "sha256:")
		if !ok {
			t.Fatalf("digest %q", digest)
		}
		if err := json.Unmarshal(mustRead(t, filepath.Join(layout, "blobs", "sha256", hexd)), v); err != nil {
			t.Fatal(err)
		}
	}
	type descriptor struct {
		Digest   string
		Size     int64
		Platform *struct{ Architecture, OS string }
	}
	var index, pushed struct{ Manifests []descriptor }
	if err := json.Unmarshal(mustRead(t, filepath.Join(layout, "index.json")), &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("pushed layout's index.json: %v, %d entries", err, len(index.Manifests))
	}
	blob(index.Manifests[0].Digest, &pushed)
	var got []string
	for _, m := range pushed.Manifests {
		var manifest struct{ Layers []descriptor }
		blob(m.Digest, &manifest)
		var compressed int64
		for _, l := range manifest.Layers {
			compressed += l.Size
		}
		got = append(got, m.Platform.OS+"/"+m.Platform.Architecture)
		t.Logf("pushed %s/%s: %d layer bytes compressed (%.1f MB)", m.Platform.OS, m.Platform.Architecture, compressed, float64(compressed)/1e6)
	}
	sort.Strings(got)
	if !slices.Equal(got, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("pushed list has %v, want linux/amd64 and linux/arm64", got)
	}
}

// runArm64 runs the arm64 image's --version under qemu user emulation:
// through binfmt_misc where the host registered qemu-aarch64, otherwise
// with qemu-aarch64-static mounted into the container as its entrypoint
// (registering a binfmt handler would change the whole host).
func runArm64(t *testing.T, p *podman, img builtImage) {
	image := img.images["arm64"]
	args := []string{"run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}
	how := "binfmt_misc"
	if b, err := os.ReadFile("/proc/sys/fs/binfmt_misc/qemu-aarch64"); err == nil && strings.HasPrefix(string(b), "enabled") {
		args = append(args, "--platform", "linux/arm64", image, "--version")
	} else {
		qemu, err := exec.LookPath("qemu-aarch64-static")
		if err != nil {
			kerneltest.MissingTool(t, "qemu-aarch64-static", "backends/install.sh installs it (apt-get install qemu-user-static)")
		}
		how = qemu
		args = append(args, "-v", qemu+":/qemu-aarch64:ro", "--entrypoint", "/qemu-aarch64", image, "/exporter", "--version")
	}
	out, err := p.run(args...)
	if err != nil {
		t.Fatalf("arm64 image under qemu (%s): %v", how, err)
	}
	for _, want := range []string{"version " + buildVersion, "linux/arm64"} {
		if !strings.Contains(out, want) {
			t.Errorf("arm64 image's --version does not say %q:\n%s", want, out)
		}
	}
	t.Logf("arm64 image under qemu (%s): %s", how, strings.SplitN(out, "\n", 2)[0])
}

// runVariant is how a run departs from the DaemonSet.
type runVariant struct {
	name    string
	dropCap string // one of the capabilities the DaemonSet adds, not added
	// runtimeDefaultSeccomp runs under podman's default profile (what the
	// manifest's RuntimeDefault is under podman) instead of the shipped one.
	runtimeDefaultSeccomp bool
}

// containerRun is a `podman run` of the DaemonSet's container.
type containerRun struct {
	name    string
	opts    []string      // podman run's options
	args    []string      // the container's arguments
	addr    string        // host address of the metrics port
	grace   time.Duration // terminationGracePeriodSeconds
	startup time.Duration // the startup probe's budget
	health  string        // its path
}

// daemonSetRun translates the DaemonSet's pod and container to podman
// run's options, failing t on anything in them it does not translate, so
// that a setting added to the manifest cannot silently be left out here.
// The ulimits are this host's podman quirk, not the manifest's.
func daemonSetRun(t *testing.T, pod corev1.PodSpec, c corev1.Container, v runVariant) containerRun {
	t.Helper()
	r := containerRun{name: fmt.Sprintf("verifierlog-%s-%d", v.name, os.Getpid()),
		opts: []string{"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--log-driver", "k8s-file"}}
	r.name = r.name[:min(len(r.name), 63)]
	fatal := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("daemonset.yaml: "+format+"; translate it to podman run's options in daemonSetRun", args...)
	}

	// Namespaces: the pod's own, unless the manifest shares the host's.
	ns := func(host bool) string {
		if host {
			return "host"
		}
		return "private"
	}
	network := "bridge"
	if pod.HostNetwork {
		network = "host"
	}
	r.opts = append(r.opts, "--pid", ns(pod.HostPID), "--ipc", ns(pod.HostIPC), "--network", network)
	if pod.ShareProcessNamespace != nil && *pod.ShareProcessNamespace {
		fatal("shareProcessNamespace")
	}
	if pod.TerminationGracePeriodSeconds == nil {
		fatal("no terminationGracePeriodSeconds")
	}
	r.grace = time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second

	// The security context: the container's, and the pod's seccomp profile.
	sc := c.SecurityContext
	if sc == nil || sc.RunAsUser == nil || sc.Capabilities == nil {
		fatal("the container has no securityContext with runAsUser and capabilities")
	}
	if sc.SELinuxOptions != nil || sc.WindowsOptions != nil || sc.ProcMount != nil || sc.AppArmorProfile != nil || sc.RunAsNonRoot != nil && *sc.RunAsNonRoot {
		fatal("a container securityContext field the test does not translate: %+v", *sc)
	}
	if sc.Privileged != nil && *sc.Privileged {
		r.opts = append(r.opts, "--privileged")
	}
	group := *sc.RunAsUser
	if sc.RunAsGroup != nil {
		group = *sc.RunAsGroup
	}
	r.opts = append(r.opts, "--user", fmt.Sprintf("%d:%d", *sc.RunAsUser, group))
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		// Kubernetes mounts no tmpfs on a read-only root; podman would.
		r.opts = append(r.opts, "--read-only", "--read-only-tmpfs=false")
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		r.opts = append(r.opts, "--security-opt", "no-new-privileges")
	}
	for _, d := range sc.Capabilities.Drop {
		r.opts = append(r.opts, "--cap-drop="+string(d))
	}
	for _, a := range sc.Capabilities.Add {
		if string(a) != v.dropCap {
			r.opts = append(r.opts, "--cap-add="+string(a))
		}
	}
	if psc := pod.SecurityContext; psc != nil {
		rest := *psc
		rest.SeccompProfile = nil
		if !reflectZero(rest) {
			fatal("a pod securityContext field the test does not translate: %+v", rest)
		}
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && pod.SecurityContext != nil {
		seccomp = pod.SecurityContext.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		fatal("seccompProfile %+v, the test expects RuntimeDefault", seccomp)
	}
	if !v.runtimeDefaultSeccomp {
		// What the manifest would say with seccompProfile type Localhost,
		// localhostProfile verifierlog-exporter.json (deploy/README.md).
		profile, err := filepath.Abs(seccompProfile)
		if err != nil {
			t.Fatal(err)
		}
		r.opts = append(r.opts, "--security-opt", "seccomp="+profile)
	}

	// hostPath volumes, mounted as the container mounts them.
	hostPaths := map[string]string{}
	for _, vol := range pod.Volumes {
		if vol.HostPath == nil {
			fatal("volume %s is not a hostPath", vol.Name)
		}
		hostPaths[vol.Name] = vol.HostPath.Path
	}
	for _, m := range c.VolumeMounts {
		if m.SubPath != "" || m.SubPathExpr != "" || m.MountPropagation != nil {
			fatal("volume mount %s uses subPath or mountPropagation", m.Name)
		}
		spec := hostPaths[m.Name] + ":" + m.MountPath
		if m.ReadOnly {
			spec += ":ro"
		}
		r.opts = append(r.opts, "-v", spec)
	}

	// The metrics port, published on a free loopback port.
	if len(c.Ports) != 1 || c.Ports[0].HostPort != 0 || c.Ports[0].ContainerPort != metricsPort {
		fatal("ports %+v, the test expects one, the metrics port %d", c.Ports, metricsPort)
	}
	addr, err := backends.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	r.addr = addr
	r.opts = append(r.opts, "-p", fmt.Sprintf("%s:%d/tcp", addr, metricsPort))
	probe := c.StartupProbe
	if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Port.String() != c.Ports[0].Name {
		fatal("no startup probe on the metrics port")
	}
	r.health = probe.HTTPGet.Path
	r.startup = time.Duration(probe.PeriodSeconds*probe.FailureThreshold) * time.Second

	// The environment, with the downward API's values for this run and
	// $(VAR) expanded as the kubelet does.
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	if len(c.EnvFrom) > 0 {
		fatal("envFrom")
	}
	for _, e := range c.Env {
		val := e.Value
		if e.ValueFrom != nil {
			switch f := e.ValueFrom.FieldRef; {
			case f != nil && f.FieldPath == "spec.nodeName":
				val = hostname
			case f != nil && f.FieldPath == "metadata.name":
				val = r.name
			default:
				fatal("env %s from %+v", e.Name, e.ValueFrom)
			}
		}
		val = regexp.MustCompile(`\$\((\w+)\)`).ReplaceAllStringFunc(val, func(ref string) string {
			if v, ok := env[ref[2:len(ref)-1]]; ok {
				return v
			}
			return ref
		})
		env[e.Name] = val
		r.opts = append(r.opts, "--env", e.Name+"="+val)
	}

	// Limits (the maps' memory is charged to the container's cgroup too).
	if m, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		r.opts = append(r.opts, "--memory", fmt.Sprintf("%db", m.Value()))
	}
	if cpu, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		r.opts = append(r.opts, "--cpus", strconv.FormatFloat(float64(cpu.MilliValue())/1000, 'f', 3, 64))
	}
	if len(c.Command) > 0 {
		fatal("command %q overrides the image's entrypoint", c.Command)
	}
	// The DaemonSet's arguments, without the new-series hold, so that the
	// host's load shows at once.
	r.args = append(slices.Clone(c.Args), "--metrics.new-series-hold=0")
	return r
}

// reflectZero reports whether v is its type's zero value.
func reflectZero(v corev1.PodSecurityContext) bool {
	b, err := json.Marshal(v)
	return err == nil && string(b) == "{}"
}

// start runs r detached and returns when podman has started it.
func (r containerRun) start(t *testing.T, p *podman, image string) {
	t.Helper()
	args := append([]string{"run", "--detach", "--name", r.name}, r.opts...)
	args = append(append(args, image), r.args...)
	if _, err := p.run(args...); err != nil {
		t.Fatalf("starting the container: %v", err)
	}
	t.Cleanup(func() { _, _ = p.run("rm", "--force", "--time", "0", r.name) })
}

func (r containerRun) logs(p *podman) string {
	argv := append(slices.Clone(p.argv), "logs", r.name)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput() // the exporter logs to stderr
	if err != nil {
		return fmt.Sprintf("(podman logs: %v) %s", err, out)
	}
	return string(out)
}

type containerState struct {
	Running  bool
	ExitCode int
	Pid      int
}

func (r containerRun) state(t *testing.T, p *podman) containerState {
	t.Helper()
	var s containerState
	if err := json.Unmarshal([]byte(p.must(t, "inspect", "--format", "{{json .State}}", r.name)), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// runAsDaemonSet: attach, count a load issued on the host, serve /metrics
// and /healthz on the published port, and exit 0 within the grace period
// on `podman stop`.
func runAsDaemonSet(t *testing.T, p *podman, img builtImage, pod corev1.PodSpec, c corev1.Container) {
	r := daemonSetRun(t, pod, c, runVariant{name: "daemonset"})
	t.Logf("podman run %s %s %s", strings.Join(r.opts, " "), img.images["amd64"], strings.Join(r.args, " "))
	start := time.Now()
	r.start(t, p, img.images["amd64"])
	srv := &server{t: t, addr: r.addr}
	var health string
	exited := make(chan struct{})
	var once sync.Once
	err := backends.WaitReady(r.startup, exited, func() error {
		body, err := srv.get(r.health)
		health = body
		if err != nil && time.Since(start) > 2*time.Second && !r.state(t, p).Running {
			once.Do(func() { close(exited) })
		}
		return err
	})
	if err != nil {
		t.Fatalf("the container did not answer %s on %s within the startup probe's %v: %v\n%s", r.health, r.addr, r.startup, err, r.logs(p))
	}
	ready := time.Since(start)
	t.Logf("%s answered %q %v after podman run (container start and attach)", r.health, strings.TrimSpace(health), ready.Round(10*time.Millisecond))

	// The runtime applied the security context: the exporter (pid 1 of its
	// own pid namespace) is uid 0 with CAP_BPF and CAP_PERFMON only,
	// no_new_privs, under a seccomp filter, read-only root.
	st := r.state(t, p)
	status := procStatus(t, st.Pid)
	if want := fmt.Sprintf("%016x", capMask(t, []string{"BPF", "PERFMON"})); status["CapEff"] != want || status["CapBnd"] != want {
		t.Errorf("exporter's CapEff %s, CapBnd %s, want %s", status["CapEff"], status["CapBnd"], want)
	}
	if status["NoNewPrivs"] != "1" || status["Seccomp"] != "2" || !strings.HasPrefix(status["Uid"], "0\t") || status["NSpid"] == "" || !strings.HasSuffix(status["NSpid"], "\t1") {
		t.Errorf("exporter's NoNewPrivs %q, Seccomp %q, Uid %q, NSpid %q: want 1, 2, 0, pid 1 of its own pid namespace",
			status["NoNewPrivs"], status["Seccomp"], status["Uid"], status["NSpid"])
	}
	if !strings.Contains(string(mustRead(t, fmt.Sprintf("/proc/%d/mountinfo", st.Pid))), " / ro,") {
		t.Errorf("the exporter's root is not read-only")
	}

	// An undersized load issued on the host, outside the container: a log
	// at level 1 in a 16-byte buffer, which the kernel ends with ENOSPC.
	comm := testComm("i")
	out, err := exec.Command(filepath.Join(img.context, "amd64", "exporter"), "loadgen", "--program", "long",
		"--log-level", "1", "--log-size", "16", "--comm", comm).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "result=ENOSPC") {
		t.Fatalf("the host's undersized load: %v, want result=ENOSPC:\n%s", err, out)
	}
	fams := srv.waitScrape(func(f map[string]*dto.MetricFamily) bool {
		n, _ := sample(f, "bpf_prog_loads_total", map[string]string{"loader": comm, "result": "ENOSPC"})
		u, _ := sample(f, "bpf_verifier_log_undersized_total", map[string]string{"loader": comm})
		return n >= 1 && u >= 1
	}, 15*time.Second)
	if _, ok := sample(fams, "verifierlog_exporter_build_info", map[string]string{"version": buildVersion}); !ok {
		t.Errorf("/metrics has no verifierlog_exporter_build_info{version=%q}", buildVersion)
	}
	t.Logf("counted the host's load (loader %s) %v after podman run", comm, time.Since(start).Round(10*time.Millisecond))

	// podman stop sends SIGTERM and kills after the grace period, as the
	// kubelet does.
	stopStart := time.Now()
	if _, err := p.run("stop", "--time", strconv.Itoa(int(r.grace.Seconds())), r.name); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(stopStart)
	logs := r.logs(p)
	if st := r.state(t, p); st.ExitCode != 0 || stopped >= r.grace {
		t.Fatalf("podman stop took %v (grace %v) and the exporter exited %d, want 0 within the grace period:\n%s", stopped, r.grace, st.ExitCode, logs)
	}
	if !strings.Contains(logs, "msg=detached") {
		t.Errorf("no detach in the log:\n%s", logs)
	}
	t.Logf("podman stop: exit 0 after %v (grace %v)", stopped.Round(10*time.Millisecond), r.grace)
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if strings.Contains(line, "msg=attached") || strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			t.Log("exporter: " + line)
		}
	}
}

// runRefused runs the DaemonSet's container as v has it, which must fail:
// it returns the one error line after checking the exporter exited
// non-zero well before the startup probe would have given up, said why in
// one line, and did not blame the memlock rlimit.
func runRefused(t *testing.T, p *podman, img builtImage, pod corev1.PodSpec, c corev1.Container, v runVariant) string {
	r := daemonSetRun(t, pod, c, v)
	start := time.Now()
	r.start(t, p, img.images["amd64"])
	bound := min(r.startup, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	_, err := p.runContext(ctx, "wait", r.name)
	took := time.Since(start)
	logs := r.logs(p)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("still running %v after podman run: a hang, not an error:\n%s", bound, logs)
		}
		t.Fatal(err)
	}
	st := r.state(t, p)
	var errs []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "level=ERROR") {
			errs = append(errs, line)
		}
	}
	if st.ExitCode == 0 || len(errs) != 1 {
		t.Fatalf("exit %d with %d error lines, want a non-zero exit and one error line:\n%s", st.ExitCode, len(errs), logs)
	}
	if strings.Contains(strings.ToLower(logs), "memlock") {
		t.Errorf("the log blames the memlock rlimit:\n%s", logs)
	}
	t.Logf("exit %d %v after podman run: %s", st.ExitCode, took.Round(10*time.Millisecond), errs[0])
	return errs[0]
}

// seccompProfileFile is a seccomp profile as podman, containerd and CRI-O
// read it (the JSON of deploy/seccomp and of containers-common).
type seccompProfileFile struct {
	DefaultAction   string `json:"defaultAction"`
	DefaultErrnoRet *uint  `json:"defaultErrnoRet"`
	Syscalls        []struct {
		Names    []string          `json:"names"`
		Action   string            `json:"action"`
		Args     []json.RawMessage `json:"args"`
		Includes seccompCondition  `json:"includes"`
		Excludes seccompCondition  `json:"excludes"`
		ErrnoRet *uint             `json:"errnoRet"`
	} `json:"syscalls"`
}

type seccompCondition struct {
	Caps   []string `json:"caps"`
	Arches []string `json:"arches"`
}

// verdicts is, for a container holding caps on amd64, each syscall's rules
// as the runtime keeps them: a rule applies if the container has every
// capability it includes and none it excludes. Where two unconditional
// rules disagree, the runtime keeps one (runc: containers-common's default
// both allows setns and refuses it without CAP_SYS_ADMIN, and setns is
// allowed), so a syscall's verdict is the list of them.
func (p seccompProfileFile) verdicts(caps []string) map[string][]string {
	out := map[string][]string{}
	for _, r := range p.Syscalls {
		applies := len(r.Includes.Arches) == 0 || slices.Contains(r.Includes.Arches, "amd64")
		applies = applies && !slices.Contains(r.Excludes.Arches, "amd64")
		for _, c := range r.Includes.Caps {
			applies = applies && slices.Contains(caps, c)
		}
		for _, c := range r.Excludes.Caps {
			applies = applies && !slices.Contains(caps, c)
		}
		if !applies {
			continue
		}
		v := r.Action
		if r.ErrnoRet != nil {
			v += fmt.Sprintf("(%d)", *r.ErrnoRet)
		}
		if len(r.Args) > 0 {
			a, _ := json.Marshal(r.Args)
			v += " if " + string(a)
		}
		for _, n := range r.Names {
			if !slices.Contains(out[n], v) {
				out[n] = append(out[n], v)
			}
		}
	}
	for _, vs := range out {
		sort.Strings(vs)
	}
	return out
}

func readSeccompProfile(t *testing.T, path string) seccompProfileFile {
	t.Helper()
	var p seccompProfileFile
	if err := json.Unmarshal(mustRead(t, path), &p); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return p
}

// TestSeccompProfile: the shipped profile lets a container holding
// CAP_BPF and CAP_PERFMON call bpf(2) and perf_event_open(2) without
// CAP_SYS_ADMIN, refuses them with EPERM to one without, and is otherwise
// the runtime default it was derived from (compared where this machine has
// that very default).
func TestSeccompProfile(t *testing.T) {
	shipped := readSeccompProfile(t, seccompProfile)
	if shipped.DefaultAction != "SCMP_ACT_ERRNO" {
		t.Errorf("default action %s, want SCMP_ACT_ERRNO", shipped.DefaultAction)
	}
	_, c := daemonSetContainer(t)
	var dsCaps []string
	for _, a := range c.SecurityContext.Capabilities.Add {
		dsCaps = append(dsCaps, "CAP_"+string(a))
	}
	capSets := map[string][]string{
		"the DaemonSet's":                   dsCaps,
		"none":                              nil,
		"CAP_BPF":                           {"CAP_BPF"},
		"CAP_PERFMON":                       {"CAP_PERFMON"},
		"CAP_SYS_ADMIN":                     {"CAP_SYS_ADMIN"},
		"CAP_SYS_ADMIN and the DaemonSet's": append([]string{"CAP_SYS_ADMIN"}, dsCaps...),
		"podman's default set":              {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT"},
	}
	allow, eperm := []string{"SCMP_ACT_ALLOW"}, []string{"SCMP_ACT_ERRNO(1)"}
	want := func(caps []string, syscall string) []string {
		need := map[string]string{"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}[syscall]
		if slices.Contains(caps, "CAP_SYS_ADMIN") || slices.Contains(caps, need) {
			return allow
		}
		return eperm
	}
	shippedVerdicts := map[string]map[string][]string{}
	for name, caps := range capSets {
		v := shipped.verdicts(caps)
		shippedVerdicts[name] = v
		for _, sc := range []string{"bpf", "perf_event_open"} {
			if got, w := v[sc], want(caps, sc); !slices.Equal(got, w) {
				t.Errorf("%s, capabilities %s: %s is %v, want %v", seccompProfile, name, sc, got, w)
			}
		}
	}
	if !slices.Equal(dsCaps, []string{"CAP_BPF", "CAP_PERFMON"}) {
		t.Errorf("the DaemonSet adds %v; the profile allows bpf(2) to CAP_BPF and perf_event_open(2) to CAP_PERFMON", dsCaps)
	}

	base, err := os.ReadFile(runtimeDefaultSeccomp)
	if err != nil {
		kerneltest.MissingTool(t, runtimeDefaultSeccomp+" (containers-common, podman's default seccomp profile)", installPodman)
	}
	if sum := sha256.Sum256(base); hex.EncodeToString(sum[:]) != seccompBaseSHA256 {
		t.Logf("%s is not the containers-common 0.50.1 profile %s was derived from: not compared", runtimeDefaultSeccomp, seccompProfile)
		return
	}
	def := readSeccompProfile(t, runtimeDefaultSeccomp)
	errno := func(p *uint) string {
		if p == nil {
			return "none"
		}
		return strconv.Itoa(int(*p))
	}
	if def.DefaultAction != shipped.DefaultAction || errno(def.DefaultErrnoRet) != errno(shipped.DefaultErrnoRet) {
		t.Errorf("default action %s (errno %s), the base's %s (errno %s)", shipped.DefaultAction, errno(shipped.DefaultErrnoRet), def.DefaultAction, errno(def.DefaultErrnoRet))
	}
	for name, caps := range capSets {
		dv := def.verdicts(caps)
		sv := shippedVerdicts[name]
		for sc := range mergeKeys(dv, sv) {
			if slices.Equal(dv[sc], sv[sc]) {
				continue
			}
			if (sc == "bpf" || sc == "perf_event_open") && slices.Equal(sv[sc], allow) {
				continue // the one intended change
			}
			t.Errorf("capabilities %s: %s is %v in %s, %v in the runtime default", name, sc, sv[sc], seccompProfile, dv[sc])
		}
	}
}

func mergeKeys(a, b map[string][]string) map[string]bool {
	m := map[string]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}
