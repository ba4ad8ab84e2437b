package main

import (
	"runtime/debug"
	"testing"
)

func TestDefaultMemoryLimitUnlessGOMEMLIMIT(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })

	debug.SetMemoryLimit(1 << 40)
	if got := setDefaultMemoryLimit(func(string) string { return "" }); got != DefaultMemoryLimit {
		t.Errorf("GOMEMLIMIT unset: limit %d, want %d", got, DefaultMemoryLimit)
	}
	// The runtime applied GOMEMLIMIT at start; it is left as it is.
	debug.SetMemoryLimit(96 << 20)
	env := map[string]string{"GOMEMLIMIT": "96MiB"}
	if got := setDefaultMemoryLimit(func(k string) string { return env[k] }); got != 96<<20 {
		t.Errorf("GOMEMLIMIT=96MiB: limit %d, want %d", got, 96<<20)
	}
}
