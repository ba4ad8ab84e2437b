/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The few kernel types verifierlog.c touches, instead of a multi-megabyte
 * generated vmlinux.h. Every struct is preserve_access_index, so field
 * offsets are relocated (CO-RE) against the running kernel's BTF; only the
 * field names must exist there.
 */
#ifndef __VMLINUX_MIN_H__
#define __VMLINUX_MIN_H__

/* Tell bpf_tracing.h to use the kernel's pt_regs field names. */
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u32 __wsum;

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};

enum {
	BPF_NOEXIST = 1,
	BPF_ANY = 0,
};

/* Map flags and local-storage flags (UAPI values). */
enum {
	BPF_F_NO_PREALLOC = 1,
	BPF_LOCAL_STORAGE_GET_F_CREATE = 1,
};

/* Ring buffer flags and queries (UAPI values). */
enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
	BPF_RB_AVAIL_DATA = 0,
};

/* The bpf(2) commands this tracer records (UAPI values). */
enum {
	BPF_PROG_LOAD = 5,
	BPF_BTF_LOAD = 18,
};

/* Only the compat variant reads a task's fields (its kernel stack). */
struct task_struct {
	void *stack;
} __attribute__((preserve_access_index));

#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
} __attribute__((preserve_access_index));
#elif defined(__TARGET_ARCH_arm64)
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
} __attribute__((preserve_access_index));
struct pt_regs {
	struct user_pt_regs user_regs;
	__u64 orig_x0;
	__s32 syscallno;
} __attribute__((preserve_access_index));
#else
#error "verifierlog: only x86 and arm64 are supported"
#endif

#endif /* __VMLINUX_MIN_H__ */
