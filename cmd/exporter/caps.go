package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/alecthomas/kingpin/v2"
	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// Capabilities after attach. Once the programs are attached, nothing the
// exporter does needs a capability: the ring buffer, the maps and the links
// are file descriptors it already holds. It keeps CAP_BPF and CAP_PERFMON
// (those of them it has), as the deployment documents, and
// CAP_NET_BIND_SERVICE only while a listen address needs it. Capabilities
// are per thread in Linux; libcap's psx changes every thread of the Go
// runtime at once, in cgo and static builds alike.

func addDropCapabilitiesFlag(cmd *kingpin.CmdClause) *bool {
	return cmd.Flag("drop-capabilities", "After attaching, drop every capability but CAP_BPF and CAP_PERFMON (and CAP_NET_BIND_SERVICE for a listen port below the unprivileged start) from every thread, clear the ambient and inheritable sets, shrink the bounding set where CAP_SETPCAP allows, and set no_new_privs.").Default("true").Bool()
}

// capsDropped describes what dropCapabilities did, for the log.
type capsDropped struct {
	Kept, Dropped []cap.Value
	// BoundingKept says the bounding set could not be shrunk (no
	// CAP_SETPCAP): it then only limits what an execve could gain, which
	// no_new_privs already forbids.
	BoundingKept bool
}

// dropCapabilities reduces every thread's capabilities to the ones the
// exporter keeps.
func dropCapabilities(needNetBind bool) (capsDropped, error) {
	var d capsDropped
	have, err := cap.GetPID(0)
	if err != nil {
		return d, fmt.Errorf("read capabilities: %w", err)
	}
	wanted := []cap.Value{cap.BPF, cap.PERFMON}
	if needNetBind {
		wanted = append(wanted, cap.NET_BIND_SERVICE)
	}
	keep := cap.NewSet()
	for v := cap.Value(0); v < cap.MaxBits(); v++ {
		permitted, err := have.GetFlag(cap.Permitted, v)
		if err != nil || !permitted {
			continue
		}
		if !slices.Contains(wanted, v) {
			d.Dropped = append(d.Dropped, v)
			continue
		}
		d.Kept = append(d.Kept, v)
		if err := keep.SetFlag(cap.Permitted, true, v); err != nil {
			return d, err
		}
		if err := keep.SetFlag(cap.Effective, true, v); err != nil {
			return d, err
		}
	}

	// The bounding set first: shrinking it needs CAP_SETPCAP, which the
	// last step drops.
	if setpcap, _ := have.GetFlag(cap.Effective, cap.SETPCAP); setpcap {
		var unbound []cap.Value
		for v := cap.Value(0); v < cap.MaxBits(); v++ {
			if !slices.Contains(wanted, v) {
				unbound = append(unbound, v)
			}
		}
		if err := cap.DropBound(unbound...); err != nil {
			return d, fmt.Errorf("shrink the bounding set: %w", err)
		}
	} else {
		d.BoundingKept = true
	}
	if err := cap.ResetAmbient(); err != nil {
		return d, fmt.Errorf("clear the ambient set: %w", err)
	}
	if err := keep.SetProc(); err != nil {
		return d, fmt.Errorf("set capabilities: %w", err)
	}
	if _, err := cap.Prctlw(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return d, fmt.Errorf("set no_new_privs: %w", err)
	}
	return d, nil
}

// dropCapabilitiesAndLog drops them if enabled and says what it did. A
// failure is logged, not fatal: the exporter works either way.
func dropCapabilitiesAndLog(logger *slog.Logger, enabled bool, listenAddrs []string) {
	if !enabled {
		logger.Info("keeping all capabilities (--no-drop-capabilities)")
		return
	}
	d, err := dropCapabilities(needsNetBind(listenAddrs))
	if err != nil {
		logger.Warn("cannot drop capabilities", "err", err)
		return
	}
	logger.Info("capabilities dropped", "kept", capNames(d.Kept), "dropped", capNames(d.Dropped), "bounding_set_kept", d.BoundingKept)
}

func capNames(vs []cap.Value) string {
	names := make([]string, len(vs))
	for i, v := range vs {
		names[i] = v.String()
	}
	return strings.Join(names, ",")
}

// needsNetBind reports whether a TCP listen address has a port below the
// kernel's unprivileged start (1024 unless sysctl says otherwise). Port 0
// picks a free high port.
func needsNetBind(addrs []string) bool {
	start := 1024
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			start = n
		}
	}
	for _, a := range addrs {
		if strings.HasPrefix(a, "vsock://") {
			continue
		}
		_, port, err := net.SplitHostPort(a)
		if err != nil {
			continue
		}
		if p, err := net.LookupPort("tcp", port); err == nil && p > 0 && p < start {
			return true
		}
	}
	return false
}
