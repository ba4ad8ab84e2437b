package deploy

// Least privilege, for real: the exporter runs with exactly what the
// DaemonSet and the systemd unit grant it, and works.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/verifierlog/exporter/internal/kerneltest"
)

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
