// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * verifierlog: one record per BPF_PROG_LOAD / BPF_BTF_LOAD attempt on the host.
 *
 * The enter hook copies the part of the caller's bpf_attr that the exporter
 * decodes; the exit hook adds the return value and the log_true_size the
 * kernel may have written back, and submits the record to the ring buffer.
 * Nothing is decided here: Go decodes the attr bytes and classifies.
 *
 * Three hook sets, one loaded at a time (tracer/attach.go picks):
 *   fentry:     fentry + fexit on bpf_prog_load and btf_new_fd
 *   kprobe:     kprobe + kretprobe on the same functions
 *   tracepoint: syscalls/sys_enter_bpf + syscalls/sys_exit_bpf
 */
#include "vmlinux_min.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/*
 * Bytes of union bpf_attr that the exporter needs: through log_true_size
 * (offset 140) for PROG_LOAD, through btf_log_true_size (offset 28) for
 * BTF_LOAD. Never more than the caller's attr size is read.
 */
#define PROG_LOAD_ATTR_NEED 144
#define BTF_LOAD_ATTR_NEED 32
#define ATTR_COPY_MAX PROG_LOAD_ATTR_NEED

#define PROG_LOAD_TRUE_SIZE_OFF 140
#define BTF_LOAD_TRUE_SIZE_OFF 28

/*
 * Records are submitted without waking user space until this many bytes
 * wait in the ring buffer; the reader also polls (tracer/tracer.go,
 * flushInterval). Waking the reader for every load costs each load several
 * microseconds. Set by Go before load; 0 wakes on every record.
 */
const volatile __u64 wakeup_bytes = 0;

/*
 * Loads between their enter and exit hooks, all hooks together: busy
 * inflight slots. It can only err high (a thread that exits between its
 * hooks, after a missed kretprobe, takes its slot without a decrement),
 * which costs speed, never a record. The tracepoint exit hook, which fires
 * for every bpf(2) call, leaves after one memory load while it is zero.
 */
__u64 loads_in_flight = 0;

/*
 * Flags Go sets while the programs run, in their own section so that Go's
 * stores cannot race the hooks' atomic adds to loads_in_flight.
 *
 * count_loads_begun_before_attach is set while loads that began before the
 * tracer attached may still end: their enter hook never ran, so only the
 * exit hook's command check can count them (LOST_NO_INFLIGHT). Go clears it
 * a grace period after attach (tracer.Options.AttachGrace).
 *
 * detaching is set just before the links close, enter hooks first: a load
 * that begins then has no entry, and is not lost but unwatched.
 */
volatile __u32 count_loads_begun_before_attach SEC(".data.control") = 1;
volatile __u32 detaching SEC(".data.control") = 0;

/* Record flags. Go: tracer/decode.go. */
#define FLAG_ATTR_UNREADABLE (1 << 0) /* the attr copy faulted: bad pointer */
#define FLAG_TRUE_SIZE_READ (1 << 1)  /* true_size_after holds the post-call value */
#define FLAG_KERNEL_CALLER (1 << 2)   /* attr came from the kernel (bpf_sys_bpf), attr_size unknown */
#define FLAG_LOG_MEASURED (1 << 3)    /* log_used: the log's length, NUL excluded */
#define FLAG_LOG_SCAN_CAPPED (1 << 4) /* no NUL within the scan cap: log_used is a lower bound */
#define FLAG_LOG_SCAN_FAULT (1 << 5)  /* the log buffer could not be read */

/*
 * The log of a load that succeeded or that the verifier rejected is
 * NUL-terminated in the caller's buffer, so its length + 1 is the exact need, also where the
 * kernel writes no log_true_size. The scan reads at most LOG_SCAN_MAX bytes,
 * LOG_SCAN_CHUNK at a time (bpf_loop, Linux 5.17+).
 */
#define LOG_SCAN_CHUNK 4096
#define LOG_SCAN_MAX (4 << 20)

/* What the enter hook learned; the exit hook completes it. */
struct inflight {
	__u64 start_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u64 uattr;    /* caller's attr pointer */
	__u32 cmd;
	__u32 attr_size;   /* size argument of bpf(2) */
	__u32 attr_copied; /* bytes of attr[] that hold the caller's attr */
	__u32 flags;
	__u8 attr[ATTR_COPY_MAX];
};

/* One load attempt. Go: tracer/decode.go decodes it field by field. */
struct load_event {
	struct inflight in;
	__u64 end_ns;
	__u64 cgroup_id;
	__s64 ret;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u32 true_size_after; /* log_true_size read back after the call */
	__u32 log_used;        /* with FLAG_LOG_MEASURED: strlen of the log in the caller's buffer */
	char comm[16];
};

/* Reasons a load attempt went unrecorded. Go: tracer/lost.go reads them. */
enum lost_reason {
	LOST_RINGBUF_FULL = 0,      /* exit hook could not reserve a record */
	LOST_NO_INFLIGHT = 1,       /* exit hook found no entry: not stored, or began before attach */
	LOST_INFLIGHT_UPDATE = 2,   /* enter hook could not get its task-storage slot */
	LOST_STALE_INFLIGHT = 3,    /* a thread's previous entry never saw its exit */
	LOST_REASON_MAX,
};

/* Load records for user space. Read by tracer/reader.go; size set by Go. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* A thread's load between its enter and exit hook. */
struct inflight_slot {
	__u32 busy; /* the enter hook filled in, the exit hook has not taken it */
	__u32 pad;
	struct inflight in;
};

/*
 * One slot per thread that has loaded, in the thread's own BPF task
 * storage: no hashing, no eviction, freed with the thread. Only the hooks
 * read it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight_slot);
} inflight SEC(".maps");

/* Per-CPU bytes the log scan copies into and throws away. Only measure_log uses it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[LOG_SCAN_CHUNK]);
} scan_scratch SEC(".maps");

/* Per-CPU counts by enum lost_reason. Read by tracer/lost.go. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOST_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Never read: they put the record types into BTF for bpf2go's -type. */
const struct load_event *unused_load_event __attribute__((unused));
const enum lost_reason *unused_lost_reason __attribute__((unused));

static __always_inline void count_lost(enum lost_reason reason)
{
	__u32 key = reason;
	__u64 *n = bpf_map_lookup_elem(&lost, &key);
	if (n)
		*n += 1;
}

static __always_inline int is_load_cmd(__u32 cmd)
{
	return cmd == BPF_PROG_LOAD || cmd == BPF_BTF_LOAD;
}

/*
 * kattr is the kernel's own copy of the attr where the hook has one
 * (fentry, kprobe); the tracepoint hook runs before the kernel copies it and
 * reads the caller's memory instead.
 */
static __always_inline int record_enter(struct task_struct *task, __u32 cmd, __u64 uattr,
					__u32 attr_size, const void *kattr, __u32 flags)
{
	struct inflight_slot *slot;
	__u32 need = cmd == BPF_PROG_LOAD ? PROG_LOAD_ATTR_NEED : BTF_LOAD_ATTR_NEED;
	__u64 n = attr_size < need ? attr_size : need;
	long err;

	slot = bpf_task_storage_get(&inflight, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!slot) {
		count_lost(LOST_INFLIGHT_UPDATE);
		return 0;
	}
	if (slot->busy)
		/* The previous load's exit never came; its count carries over. */
		count_lost(LOST_STALE_INFLIGHT);
	else
		__sync_fetch_and_add(&loads_in_flight, 1);

	if (flags & FLAG_KERNEL_CALLER)
		n = need; /* the kernel copy is a whole, zero-filled union bpf_attr */
	/* Re-bound n where the verifier can see it: a constant maximum. */
	barrier_var(n);
	n &= 0xff;
	if (n > ATTR_COPY_MAX)
		n = ATTR_COPY_MAX;

	slot->in.start_ns = bpf_ktime_get_ns();
	slot->in.uattr = uattr;
	slot->in.cmd = cmd;
	slot->in.attr_size = attr_size;
	slot->in.attr_copied = 0;
	__builtin_memset(slot->in.attr, 0, sizeof(slot->in.attr));
	if (kattr)
		err = bpf_probe_read_kernel(slot->in.attr, n, kattr);
	else
		err = bpf_probe_read_user(slot->in.attr, n, (const void *)uattr);
	if (err)
		flags |= FLAG_ATTR_UNREADABLE;
	else
		slot->in.attr_copied = n;
	slot->in.flags = flags;
	slot->busy = 1;
	return 0;
}

struct scan_ctx {
	__u64 buf;
	__u32 limit;
	__u32 len;
	__u32 flags;
};

/*
 * One chunk of the scan. bpf_probe_read_user_str returns n < want when the
 * NUL is among the bytes read; n == want when it is not, or is the last of
 * them, so the next chunk starts on that last byte again.
 */
static long scan_chunk(__u32 i, struct scan_ctx *c)
{
	__u32 key = 0;
	char *scratch = bpf_map_lookup_elem(&scan_scratch, &key);
	__u64 off = (__u64)i * (LOG_SCAN_CHUNK - 1);
	__u64 want;
	long n;

	if (!scratch || off >= c->limit)
		return 1;
	want = c->limit - off;
	if (want > LOG_SCAN_CHUNK)
		want = LOG_SCAN_CHUNK;
	/* Re-bound want where the verifier can see it. */
	barrier_var(want);
	want &= 2 * LOG_SCAN_CHUNK - 1;
	if (want > LOG_SCAN_CHUNK)
		want = LOG_SCAN_CHUNK;
	if (want <= 1) {
		/* A one-byte string read cannot tell NUL from not-NUL. */
		if (bpf_probe_read_user(scratch, 1, (const void *)(c->buf + off))) {
			c->flags |= FLAG_LOG_SCAN_FAULT;
			return 1;
		}
		if (scratch[0] == 0) {
			c->len = off;
			c->flags |= FLAG_LOG_MEASURED;
		}
		return 1;
	}
	n = bpf_probe_read_user_str(scratch, want, (const void *)(c->buf + off));
	if (n <= 0) {
		c->flags |= FLAG_LOG_SCAN_FAULT;
		return 1;
	}
	if ((__u64)n < want) {
		c->len = off + n - 1;
		c->flags |= FLAG_LOG_MEASURED;
		return 1;
	}
	return 0;
}

/* measure_log scans the caller's log buffer of a load whose log fit. */
static __always_inline void measure_log(struct load_event *e)
{
	struct scan_ctx c = {};
	__u32 level, size;
	__u64 buf;

	if (e->in.cmd == BPF_PROG_LOAD) {
		if (e->in.attr_copied < 40)
			return;
		level = *(__u32 *)&e->in.attr[24];
		size = *(__u32 *)&e->in.attr[28];
		buf = *(__u64 *)&e->in.attr[32];
	} else {
		if (e->in.attr_copied < 28)
			return;
		buf = *(__u64 *)&e->in.attr[8];
		size = *(__u32 *)&e->in.attr[20];
		level = *(__u32 *)&e->in.attr[24];
	}
	if (!level || !size || !buf)
		return;
	c.buf = buf;
	c.limit = size < LOG_SCAN_MAX ? size : LOG_SCAN_MAX;
	bpf_loop((c.limit + LOG_SCAN_CHUNK - 2) / (LOG_SCAN_CHUNK - 1) + 1, scan_chunk, &c, 0);
	if (!(c.flags & (FLAG_LOG_MEASURED | FLAG_LOG_SCAN_FAULT)) && size > LOG_SCAN_MAX) {
		c.len = LOG_SCAN_MAX;
		c.flags |= FLAG_LOG_SCAN_CAPPED;
	}
	e->log_used = c.len;
	e->in.flags |= c.flags;
}

static __always_inline int record_exit(struct task_struct *task, __s64 ret)
{
	struct inflight_slot *slot;
	struct load_event *e;
	__u64 id, uid_gid;
	__u32 off;

	slot = bpf_task_storage_get(&inflight, task, 0, 0);
	if (!slot || !slot->busy) {
		if (!detaching)
			count_lost(LOST_NO_INFLIGHT);
		return 0;
	}
	slot->busy = 0;
	__sync_fetch_and_add(&loads_in_flight, -1);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(LOST_RINGBUF_FULL);
		return 0;
	}
	__builtin_memcpy(&e->in, &slot->in, sizeof(e->in));

	id = bpf_get_current_pid_tgid();
	uid_gid = bpf_get_current_uid_gid();

	e->end_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ret = ret;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->true_size_after = 0;
	e->log_used = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	off = e->in.cmd == BPF_PROG_LOAD ? PROG_LOAD_TRUE_SIZE_OFF : BTF_LOAD_TRUE_SIZE_OFF;
	if (!(e->in.flags & FLAG_KERNEL_CALLER) && e->in.attr_size >= off + 4 &&
	    bpf_probe_read_user(&e->true_size_after, sizeof(e->true_size_after),
				(const void *)(e->in.uattr + off)) == 0)
		e->in.flags |= FLAG_TRUE_SIZE_READ;
	/*
	 * Only a load that reached the verifier and kept its log has the
	 * kernel's log in the buffer: a success, or the verifier's EACCES. An
	 * early EINVAL leaves whatever the caller put there, and ENOSPC a log
	 * that did not fit.
	 */
	if ((ret >= 0 || (e->in.cmd == BPF_PROG_LOAD && ret == -13 /* EACCES */)) &&
	    !(e->in.flags & FLAG_KERNEL_CALLER))
		measure_log(e);

	bpf_ringbuf_submit(e, bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ?
				       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	return 0;
}

/*
 * fentry and kprobe hooks see the kernel's attr copy but not, before 6.4,
 * the attr size; both come from the syscall's own registers, trusted only
 * when they match the hook's arguments (a load from user space). Loads the
 * kernel issues itself (bpf_sys_bpf) are marked and keep attr_size 0.
 */
static __always_inline int hooked_enter(__u32 cmd, const void *kattr, __u64 uattr,
					__u64 uattr_is_kernel)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	__u32 attr_size = 0;
	__u32 flags = 0;

	if (!uattr_is_kernel && (__u32)PT_REGS_PARM1_CORE_SYSCALL(regs) == cmd &&
	    PT_REGS_PARM2_CORE_SYSCALL(regs) == uattr)
		attr_size = PT_REGS_PARM3_CORE_SYSCALL(regs);
	else
		flags = FLAG_KERNEL_CALLER;
	return record_enter(task, cmd, uattr, attr_size, kattr, flags);
}

/* fentry mode. bpfptr_t uattr is a 16-byte struct: argument slots 1 and 2. */

static __always_inline int fentry_enter(__u32 cmd, __u64 *ctx)
{
	__u64 kattr = 0, uattr = 0, is_kernel = 0;

	bpf_get_func_arg(ctx, 0, &kattr);
	bpf_get_func_arg(ctx, 1, &uattr);
	bpf_get_func_arg(ctx, 2, &is_kernel);
	return hooked_enter(cmd, (const void *)kattr, uattr, is_kernel & 1);
}

static __always_inline int fexit_exit(__u64 *ctx)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	return record_exit(bpf_get_current_task_btf(), (int)ret);
}

SEC("fentry/bpf_prog_load")
int fentry_prog_load(__u64 *ctx)
{
	return fentry_enter(BPF_PROG_LOAD, ctx);
}

SEC("fexit/bpf_prog_load")
int fexit_prog_load(__u64 *ctx)
{
	return fexit_exit(ctx);
}

SEC("fentry/btf_new_fd")
int fentry_btf_load(__u64 *ctx)
{
	return fentry_enter(BPF_BTF_LOAD, ctx);
}

SEC("fexit/btf_new_fd")
int fexit_btf_load(__u64 *ctx)
{
	return fexit_exit(ctx);
}

/* kprobe mode: the design card's hook. */

SEC("kprobe/bpf_prog_load")
int BPF_KPROBE(kprobe_prog_load, const void *kattr, __u64 uattr, __u64 is_kernel)
{
	return hooked_enter(BPF_PROG_LOAD, kattr, uattr, is_kernel & 1);
}

SEC("kretprobe/bpf_prog_load")
int BPF_KRETPROBE(kretprobe_prog_load, int ret)
{
	return record_exit(bpf_get_current_task_btf(), ret);
}

SEC("kprobe/btf_new_fd")
int BPF_KPROBE(kprobe_btf_load, const void *kattr, __u64 uattr, __u64 is_kernel)
{
	return hooked_enter(BPF_BTF_LOAD, kattr, uattr, is_kernel & 1);
}

SEC("kretprobe/btf_new_fd")
int BPF_KRETPROBE(kretprobe_btf_load, int ret)
{
	return record_exit(bpf_get_current_task_btf(), ret);
}

/*
 * tracepoint mode. These fire on every bpf(2) call, so both leave at once for
 * commands that are not loads: the exit hook after one memory load while no
 * load is in flight, else after reading the command from the syscall's
 * saved registers (no map lookup); a load whose entry is missing is
 * counted, not silently skipped.
 */

struct sys_enter_bpf_ctx {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__u64 cmd;
	__u64 uattr;
	__u64 size;
};

struct sys_exit_bpf_ctx {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__s64 ret;
};

SEC("tracepoint/syscalls/sys_enter_bpf")
int tracepoint_enter_bpf(struct sys_enter_bpf_ctx *ctx)
{
	/* bpf(2) takes int cmd and unsigned int size: the upper halves are noise. */
	if (!is_load_cmd((__u32)ctx->cmd))
		return 0;
	return record_enter(bpf_get_current_task_btf(), (__u32)ctx->cmd, ctx->uattr, (__u32)ctx->size, 0, 0);
}

SEC("tracepoint/syscalls/sys_exit_bpf")
int tracepoint_exit_bpf(struct sys_exit_bpf_ctx *ctx)
{
	struct task_struct *task;
	struct pt_regs *regs;

	/* No load in flight: this call is not one (or began before attach). */
	if (!count_loads_begun_before_attach && *(volatile __u64 *)&loads_in_flight == 0)
		return 0;
	task = bpf_get_current_task_btf();
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	/*
	 * bpf_task_pt_regs returns a BTF pointer: read the register directly
	 * (a CO-RE-relocated load, no helper call) on this hot path.
	 */
	if (!is_load_cmd((__u32)PT_REGS_PARM1_SYSCALL(regs)))
		return 0;
	return record_exit(task, ctx->ret);
}
