// Package exporter is the root of the verifierlog exporter module. It holds
// only the go:generate lines that compile bpf/verifierlog.c into the tracer
// package, once per program variant (modern, and compat for kernels without
// task storage, bpf_task_pt_regs or bpf_loop), and the benchmark's floor
// programs; the code lives in tracer/, otel/ and cmd/exporter/.
//
// Regenerate after changing bpf/: go generate . (needs clang and llvm-strip).
package exporter

//go:generate go tool bpf2go -go-package tracer -output-dir tracer -output-stem verifierlog -tags linux -target amd64,arm64 -type load_event -type load_event_tail -type lost_reason -type prog_load_attr -type btf_load_attr verifierlog bpf/verifierlog.c -- -I bpf/headers -Wall -Werror

//go:generate go tool bpf2go -go-package tracer -output-dir tracer -output-stem verifierlog_compat -tags linux -target amd64,arm64 verifierlogCompat bpf/verifierlog.c -- -I bpf/headers -Wall -Werror -DVERIFIERLOG_COMPAT

//go:generate go tool bpf2go -go-package bench -output-dir internal/bench -output-stem floor -tags linux -target amd64,arm64 floor bpf/floor.c -- -I bpf/headers -Wall -Werror
