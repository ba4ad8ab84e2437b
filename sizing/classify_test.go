package sizing

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/tracer"
)

func TestClassification(t *testing.T) {
	cases := []struct {
		name string
		ev   tracer.LoadEvent
		want Class
	}{
		{"fit with known need", withTrueSize(event("l", 1, "p", 0, 1, 4096, 3), 1000),
			Class{Need: 1000, NeedSource: tracer.NeedKernel, LogRequested: true}},
		{"ENOSPC with known need", withTrueSize(event("l", 1, "p", 0, 1, 256, enospc), 5153),
			Class{Truncated: true, Undersized: true, Need: 5153, NeedSource: tracer.NeedKernel, Shortfall: 4897, ShortfallKnown: true, LogRequested: true}},
		{"ENOSPC, need unknown", event("l", 1, "p", 0, 1, 256, enospc),
			Class{Truncated: true, Undersized: true, LogRequested: true}},
		{"fixed log fails with another errno but need above buffer", withTrueSize(event("l", 1, "p", 0, 1, 256, -int64(unix.EACCES)), 300),
			Class{Undersized: true, Need: 300, NeedSource: tracer.NeedKernel, Shortfall: 44, ShortfallKnown: true, LogRequested: true}},
		{"size query", withTrueSize(event("l", 1, "p", 0, 1, 0, 3), 700),
			Class{Need: 700, NeedSource: tracer.NeedKernel, LogRequested: true}},
	}
	for _, c := range cases {
		if got := Classify(&c.ev); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	off := event("l", 1, "p", 0, 1, 0, 3)
	off.LogLevel = 0
	if got := Classify(&off); got != (Class{}) {
		t.Errorf("log off: %+v", got)
	}
}
