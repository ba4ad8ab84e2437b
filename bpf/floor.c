// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * floor: empty programs on the exporter's hooks. The benchmark
 * (internal/bench) attaches them to measure what the hooks cost by
 * themselves, the floor the exporter's own programs are compared with.
 */
#include "vmlinux_min.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("tracepoint/syscalls/sys_enter_bpf")
int floor_enter_bpf(void *ctx) { return 0; }

SEC("tracepoint/syscalls/sys_exit_bpf")
int floor_exit_bpf(void *ctx) { return 0; }

SEC("fentry/bpf_prog_load")
int floor_fentry_prog_load(void *ctx) { return 0; }

SEC("fexit/bpf_prog_load")
int floor_fexit_prog_load(void *ctx) { return 0; }

SEC("kprobe/bpf_prog_load")
int floor_kprobe_prog_load(void *ctx) { return 0; }

SEC("kretprobe/bpf_prog_load")
int floor_kretprobe_prog_load(void *ctx) { return 0; }
