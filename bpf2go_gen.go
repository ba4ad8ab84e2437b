// Package exporter is the root of the verifierlog exporter module. It holds
// only the go:generate line that compiles bpf/verifierlog.c into the tracer
// package; the code lives in tracer/, otel/ and cmd/exporter/.
//
// Regenerate after changing bpf/: go generate . (needs clang and llvm-strip).
package exporter

//go:generate go tool bpf2go -go-package tracer -output-dir tracer -output-stem verifierlog -tags linux -target amd64,arm64 -type load_event -type lost_reason verifierlog bpf/verifierlog.c -- -I bpf/headers -Wall -Werror

//go:generate go tool bpf2go -go-package bench -output-dir internal/bench -output-stem floor -tags linux -target amd64,arm64 floor bpf/floor.c -- -I bpf/headers -Wall -Werror
