/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The prefixes of union bpf_attr that the tracer reads, declared once (UAPI
 * layout, stable). The BPF programs copy and read the caller's attr through
 * them; bpf2go exports them to Go (tracer.ProgLoadAttr, tracer.BTFLoadAttr),
 * where the decoder reads records and the load generator builds attrs with
 * the same fields. Each ends with the log's true size (Linux 6.4+), so its
 * size is the attr size a caller must pass for the kernel to write it.
 *
 * Names are __u8 arrays rather than char so that Go sees bytes.
 */
#ifndef VERIFIERLOG_ATTR_H
#define VERIFIERLOG_ATTR_H

/* BPF_PROG_LOAD, through log_true_size. */
struct prog_load_attr {
	__u32 prog_type;
	__u32 insn_cnt;
	__u64 insns;
	__u64 license;
	__u32 log_level;
	__u32 log_size;
	__u64 log_buf;
	__u32 kern_version;
	__u32 prog_flags;
	__u8 prog_name[16];
	__u32 prog_ifindex;
	__u32 expected_attach_type;
	__u32 prog_btf_fd;
	__u32 func_info_rec_size;
	__u64 func_info;
	__u32 func_info_cnt;
	__u32 line_info_rec_size;
	__u64 line_info;
	__u32 line_info_cnt;
	__u32 attach_btf_id;
	__u32 attach_prog_fd;
	__u32 core_relo_cnt;
	__u64 fd_array;
	__u64 core_relos;
	__u32 core_relo_rec_size;
	__u32 log_true_size;
};

/* BPF_BTF_LOAD, through btf_log_true_size. */
struct btf_load_attr {
	__u64 btf;
	__u64 btf_log_buf;
	__u32 btf_size;
	__u32 btf_log_size;
	__u32 btf_log_level;
	__u32 btf_log_true_size;
};

_Static_assert(sizeof(struct prog_load_attr) == 144, "log_true_size ends at byte 144");
_Static_assert(__builtin_offsetof(struct prog_load_attr, log_true_size) == 140, "log_true_size at 140");
_Static_assert(sizeof(struct btf_load_attr) == 32, "btf_log_true_size ends at byte 32");

#endif
