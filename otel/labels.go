package otel

import "github.com/verifierlog/exporter/tracer"

// progTypeLabel bounds prog_type to the kernel's known types.
func progTypeLabel(ev *tracer.LoadEvent) string {
	if ev.Command != tracer.CmdProgLoad {
		return ""
	}
	if name, ok := tracer.KnownProgType(ev.ProgType); ok {
		return name
	}
	return "unknown"
}

// resultLabel is "ok" or the errno's name.
func resultLabel(ev *tracer.LoadEvent) string {
	if ev.OK() {
		return "ok"
	}
	return ev.ErrnoName()
}
