package main

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/alecthomas/kingpin/v2"
	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// Capabilities after attach. Once the programs are attached, nothing the
// exporter does needs a capability: the ring buffer, the maps and the links
// are file descriptors it already holds, and serve has bound its listeners
// before attaching (a port below 1024 needs no CAP_NET_BIND_SERVICE
// later). It keeps CAP_BPF and CAP_PERFMON (those of them it has), as the
// deployment documents. Capabilities are per thread in Linux; libcap's psx
// changes every thread of the Go runtime at once, in cgo and static builds
// alike.

func addDropCapabilitiesFlag(cmd *kingpin.CmdClause) *bool {
	return cmd.Flag("drop-capabilities", "After attaching, drop every capability but CAP_BPF and CAP_PERFMON from every thread, clear the ambient and inheritable sets, shrink the bounding set where CAP_SETPCAP allows, and set no_new_privs.").Default("true").Bool()
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
func dropCapabilities() (capsDropped, error) {
	var d capsDropped
	have, err := cap.GetPID(0)
	if err != nil {
		return d, fmt.Errorf("read capabilities: %w", err)
	}
	wanted := []cap.Value{cap.BPF, cap.PERFMON}
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

	// Named as the documentation names them: CAP_BPF, CAP_PERFMON.
	slices.SortFunc(d.Kept, func(a, b cap.Value) int { return slices.Index(wanted, a) - slices.Index(wanted, b) })

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

// dropCapabilitiesAndLog drops them if enabled and says what it kept; the
// list of what it dropped is logged at debug level. A failure is logged,
// not fatal: the exporter works either way.
func dropCapabilitiesAndLog(logger *slog.Logger, enabled bool) {
	if !enabled {
		logger.Info("keeping all capabilities (--no-drop-capabilities)")
		return
	}
	d, err := dropCapabilities()
	if err != nil {
		logger.Warn("cannot drop capabilities", "err", err)
		return
	}
	attrs := []any{"kept", capNames(d.Kept)}
	if d.BoundingKept {
		attrs = append(attrs, "bounding_set", "unchanged (no CAP_SETPCAP; no_new_privs is set)")
	}
	logger.Info("capabilities dropped", attrs...)
	logger.Debug("capabilities dropped: the full list", "dropped", capNames(d.Dropped))
}

// capNames are vs as the kernel's headers spell them: CAP_BPF,CAP_PERFMON.
func capNames(vs []cap.Value) string {
	if len(vs) == 0 {
		return "none"
	}
	names := make([]string, len(vs))
	for i, v := range vs {
		names[i] = strings.ToUpper(v.String())
	}
	return strings.Join(names, ",")
}
