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
 *
 * Two program variants come from this one file (bpf2go_gen.go), and Go
 * loads the best one the kernel's features allow (tracer/variant.go):
 *   modern  in-flight slots in BPF task storage, the syscall's registers
 *           from bpf_task_pt_regs, the log scan in bpf_loop (Linux 5.17+
 *           features: task storage, bpf_get_current_task_btf,
 *           bpf_task_pt_regs, bpf_loop);
 *   compat  (VERIFIERLOG_COMPAT) in-flight slots in a hash map keyed by
 *           thread id, the syscall's registers found at the top of the
 *           task's kernel stack, the log scan in a bounded loop (Linux 5.10:
 *           BTF, ring buffer, bounded loops).
 * Both write the same records and count the same lost reasons.
 */
#include "vmlinux_min.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "attr.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/*
 * The hooks copy the caller's attr through the log's true size (struct
 * prog_load_attr / btf_load_attr, bpf/attr.h), never more than the caller's
 * attr size, and read the log fields themselves; Go decodes the rest.
 */
#define offsetofend(type, member) (__builtin_offsetof(type, member) + sizeof(((type *)0)->member))
#define PROG_LOAD_ATTR_NEED sizeof(struct prog_load_attr)
#define BTF_LOAD_ATTR_NEED sizeof(struct btf_load_attr)
#define ATTR_COPY_MAX PROG_LOAD_ATTR_NEED

#define EINVAL 22
#define EACCES 13
#define EEXIST 17
#define ENOSPC 28

/* log_level bit: the kernel keeps the log's head, not its tail (6.4+). */
#define LOG_LEVEL_FIXED 8

/*
 * Records are submitted without waking user space until this many bytes
 * wait in the ring buffer; the reader also wakes every tracer.FlushInterval.
 * Waking the reader for every load would put a wakeup of user space on
 * every load's path. Set by Go before load; 0 wakes on every record.
 */
const volatile __u64 wakeup_bytes = 0;

/*
 * Argument slots (8 bytes each; a 16-byte bpfptr_t takes two) of the hooked
 * kernel functions, from the running kernel's BTF. Set by Go before load:
 *   bpf_prog_load(attr, uattr)                       2  (before 5.14)
 *   bpf_prog_load(attr, bpfptr_t uattr)              3
 *   bpf_prog_load(attr, bpfptr_t uattr, uattr_size)  4  (6.4+)
 *   btf_new_fd(attr)                                 1  (before 5.14)
 *   btf_new_fd(attr, bpfptr_t uattr[, uattr_size])   3, 4
 * The verifier knows these constants, so the branches for other kernels'
 * signatures are dead code it never checks.
 */
const volatile __u32 prog_load_arg_slots = 0;
const volatile __u32 btf_load_arg_slots = 0;

/*
 * The log scan reads at most this many bytes of the caller's buffer
 * (LOG_SCAN_MAX unless Go sets less; tests do).
 */
const volatile __u32 log_scan_max = 0;

/*
 * The log tail (opt-in): with log_tail_bytes > 0 (at most LOG_TAIL_MAX) the
 * exit hook reserves a struct load_event_tail and copies up to this many
 * bytes of the end of the log the kernel left in the caller's buffer, its
 * NUL excluded. 0 reserves a struct load_event as before: the branch on
 * this constant is pruned by the verifier. Set by Go before load.
 *
 * log_rotating is set by Go where the kernel writes log_true_size back and
 * keeps a rotating log's tail (one change, Linux 6.4): only then does the
 * buffer of an ENOSPC hold the log's end, and does the true size of an
 * EINVAL say where the log ends. Before 6.4 the buffer of an ENOSPC holds
 * the log's head, and an EINVAL gets no tail.
 */
#define LOG_TAIL_MAX 4096
const volatile __u32 log_tail_bytes = 0;
const volatile __u32 log_rotating = 0;

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
 * NUL-terminated in the caller's buffer, so its length + 1 is the exact
 * need, also where the kernel writes no log_true_size. The scan reads the
 * buffer LOG_SCAN_CHUNK bytes at a time, at most LOG_SCAN_MAX bytes: libbpf's
 * and aya's largest buffer (16 MiB - 1) is read whole. The bounded loop of
 * the compat variant sets the ceiling: the 5.10 verifier walks every
 * iteration and keeps each one's exits pending (at most 8192).
 */
#define LOG_SCAN_CHUNK (32 << 10)
#define LOG_SCAN_MAX (16 << 20)
#define LOG_SCAN_CHUNKS (LOG_SCAN_MAX / LOG_SCAN_CHUNK)

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

/* A load_event with the end of its log (log_tail_bytes > 0). Go: tracer/decode.go. */
struct load_event_tail {
	struct load_event e;
	__u32 tail_len; /* bytes of tail[] that hold the log's last bytes */
	__u32 pad;
	char tail[LOG_TAIL_MAX];
};

/* Reasons a load attempt went unrecorded. Go: tracer/lost.go reads them. */
enum lost_reason {
	LOST_RINGBUF_FULL = 0,      /* exit hook could not reserve a record */
	LOST_NO_INFLIGHT = 1,       /* exit hook found no entry: not stored, or began before attach */
	LOST_INFLIGHT_UPDATE = 2,   /* enter hook could not get its thread's slot */
	LOST_STALE_INFLIGHT = 3,    /* a thread's previous entry never saw its exit */
	LOST_REASON_MAX,
};

/* Load records for user space. Read by tracer.Tracer.Run; size set by Go. */
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

#ifndef VERIFIERLOG_COMPAT
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
#else
/*
 * One entry per thread between its enter and exit hook, keyed by thread id,
 * deleted by the exit hook: an entry is busy by being there. Preallocated
 * and never evicted: when all are taken, a load is counted
 * (LOST_INFLIGHT_UPDATE), and an entry whose exit never came (a missed
 * kretprobe) is counted when its thread id loads again
 * (LOST_STALE_INFLIGHT). Only the hooks read it.
 */
#define INFLIGHT_MAX 4096
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INFLIGHT_MAX);
	__type(key, __u32);
	__type(value, struct inflight_slot);
} inflight SEC(".maps");

/* What a new entry starts from. */
static const struct inflight_slot empty_slot = {.busy = 1};
#endif

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
const struct load_event_tail *unused_load_event_tail __attribute__((unused));
const enum lost_reason *unused_lost_reason __attribute__((unused));
const struct prog_load_attr *unused_prog_load_attr __attribute__((unused));
const struct btf_load_attr *unused_btf_load_attr __attribute__((unused));

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

/* ---- the current task and its syscall's registers ------------------------ */

#ifndef VERIFIERLOG_COMPAT
static __always_inline struct task_struct *current_task(void)
{
	return bpf_get_current_task_btf();
}

static __always_inline struct pt_regs *syscall_regs(struct task_struct *task)
{
	return (struct pt_regs *)bpf_task_pt_regs(task);
}
#else
static __always_inline struct task_struct *current_task(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

/*
 * Without bpf_task_pt_regs the syscall's registers are found where the
 * kernel keeps them, at the top of the task's kernel stack: task->stack +
 * THREAD_SIZE - padding - sizeof(struct pt_regs). THREAD_SIZE (16 KiB,
 * 32 KiB with KASAN, 64 KiB with 64 KiB pages) and the padding (16 bytes on
 * x86-64 kernels built with FRED, 6.9+) are not in BTF, so the candidates
 * are tried until the syscall number there is bpf's, and the offset found
 * is kept for the next call.
 */
#if defined(__TARGET_ARCH_x86)
#define NR_BPF 321
#define STACK_TOP_PADDINGS 2
static __always_inline long syscall_nr(const struct pt_regs *regs)
{
	return BPF_CORE_READ(regs, orig_ax);
}
#elif defined(__TARGET_ARCH_arm64)
#define NR_BPF 280
#define STACK_TOP_PADDINGS 1
static __always_inline long syscall_nr(const struct pt_regs *regs)
{
	return BPF_CORE_READ(regs, syscallno);
}
#endif

/* The offset of the syscall's pt_regs from task->stack; 0 until found. Go reads it in tests. */
__u32 syscall_regs_offset = 0;

static __always_inline struct pt_regs *syscall_regs(struct task_struct *task)
{
	__u64 stack = (__u64)BPF_CORE_READ(task, stack);
	__u32 regs_size = bpf_core_type_size(struct pt_regs);
	__u32 off = syscall_regs_offset;
	int t, p;

	if (!stack)
		return 0;
	if (off && syscall_nr((struct pt_regs *)(stack + off)) == NR_BPF)
		return (struct pt_regs *)(stack + off);
	for (t = 0; t < 3; t++) {
		for (p = 0; p < STACK_TOP_PADDINGS; p++) {
			off = (16384 << t) - 16 * p - regs_size;
			if (syscall_nr((struct pt_regs *)(stack + off)) == NR_BPF) {
				syscall_regs_offset = off;
				return (struct pt_regs *)(stack + off);
			}
		}
	}
	return 0;
}
#endif

/* ---- in-flight slots -------------------------------------------------------- */

#ifndef VERIFIERLOG_COMPAT
/* slot_begin returns the thread's slot for a new load, or 0 (counted). */
static __always_inline struct inflight_slot *slot_begin(struct task_struct *task)
{
	struct inflight_slot *slot;

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
	return slot;
}

/* slot_end returns the thread's busy slot, or 0. */
static __always_inline struct inflight_slot *slot_end(struct task_struct *task)
{
	struct inflight_slot *slot = bpf_task_storage_get(&inflight, task, 0, 0);

	return slot && slot->busy ? slot : 0;
}

static __always_inline void slot_release(struct inflight_slot *slot)
{
	slot->busy = 0;
}
#else
static __always_inline __u32 current_tid(void)
{
	return (__u32)bpf_get_current_pid_tgid();
}

static __always_inline struct inflight_slot *slot_begin(struct task_struct *task)
{
	__u32 tid = current_tid();
	struct inflight_slot *slot;
	long err;

	err = bpf_map_update_elem(&inflight, &tid, &empty_slot, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* The previous load's exit never came; its count carries over. */
		count_lost(LOST_STALE_INFLIGHT);
	} else if (err) {
		count_lost(LOST_INFLIGHT_UPDATE);
		return 0;
	} else {
		__sync_fetch_and_add(&loads_in_flight, 1);
	}
	slot = bpf_map_lookup_elem(&inflight, &tid);
	if (!slot)
		count_lost(LOST_INFLIGHT_UPDATE); /* deleted under us: cannot happen for one thread */
	return slot;
}

static __always_inline struct inflight_slot *slot_end(struct task_struct *task)
{
	__u32 tid = current_tid();

	return bpf_map_lookup_elem(&inflight, &tid);
}

static __always_inline void slot_release(struct inflight_slot *slot)
{
	__u32 tid = current_tid();

	bpf_map_delete_elem(&inflight, &tid);
}
#endif

/* ---- enter ------------------------------------------------------------------ */

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

	slot = slot_begin(task);
	if (!slot)
		return 0;

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

/* ---- the log scan ----------------------------------------------------------- */

struct scan_ctx {
	__u64 buf;
	__u32 limit;
	__u32 len;
	__u32 flags;
};

/*
 * One chunk of the scan. Each reads a whole chunk, also past the end of
 * the buffer (a probe read: harmless, and it stops at the first NUL, which
 * for a log that fit lies in the buffer): a size that depends on the buffer
 * would make the verifier walk every iteration twice over. A NUL at or past
 * the limit is not the log's end. bpf_probe_read_user_str returns n <
 * CHUNK when the NUL is among the bytes read before the last; n == CHUNK
 * when the last byte read is the NUL or when there is none (it then writes
 * one over the last byte), so that byte is read again on its own. A log
 * that fills its buffer to the last byte, NUL included, is measured too.
 */
static __always_inline long scan_chunk(__u32 i, struct scan_ctx *c)
{
	__u32 key = 0;
	char *scratch = bpf_map_lookup_elem(&scan_scratch, &key);
	__u64 off = (__u64)i * LOG_SCAN_CHUNK;
	__u64 end;
	char last;
	long n;

	if (!scratch || off >= c->limit)
		return 1;
	n = bpf_probe_read_user_str(scratch, LOG_SCAN_CHUNK, (const void *)(c->buf + off));
	if (n <= 0) {
		c->flags |= FLAG_LOG_SCAN_FAULT;
		return 1;
	}
	end = off + n - 1; /* where the NUL is, if n < CHUNK */
	if (n == LOG_SCAN_CHUNK) {
		if (bpf_probe_read_user(&last, 1, (const void *)(c->buf + end))) {
			c->flags |= FLAG_LOG_SCAN_FAULT;
			return 1;
		}
		if (last != 0)
			return end + 1 >= c->limit; /* no NUL yet: go on within the limit */
	}
	if (end < c->limit) {
		c->len = end;
		c->flags |= FLAG_LOG_MEASURED;
	}
	return 1;
}

#ifndef VERIFIERLOG_COMPAT
static long scan_chunk_cb(__u32 i, struct scan_ctx *c)
{
	return scan_chunk(i, c);
}

static __always_inline void scan_log(struct scan_ctx *c)
{
	bpf_loop((c->limit + LOG_SCAN_CHUNK - 1) / LOG_SCAN_CHUNK, scan_chunk_cb, c, 0);
}
#else
/*
 * The bounded loop is a global function, which the verifier checks once on
 * its own: inlined, every iteration's exits would be walked through the
 * rest of the program. A global function takes and returns only scalars
 * here (5.10): the result is the flags in the upper half, the length in the
 * lower.
 */
__noinline __u64 scan_log_bounded(__u64 buf, __u32 limit)
{
	struct scan_ctx c = {.buf = buf, .limit = limit};
	__u32 i;

	for (i = 0; i < LOG_SCAN_CHUNKS; i++)
		if (scan_chunk(i, &c))
			break;
	return (__u64)c.flags << 32 | c.len;
}

static __always_inline void scan_log(struct scan_ctx *c)
{
	__u64 r = scan_log_bounded(c->buf, c->limit);

	c->flags = r >> 32;
	c->len = (__u32)r;
}
#endif

/* The log request of the caller's attr. */
struct log_args {
	__u64 buf;
	__u32 level;
	__u32 size;
};

/* log_args reads the log request from the attr copy; 0 if it asks for no log in a buffer. */
static __always_inline int log_args(const struct load_event *e, struct log_args *l)
{
	if (e->in.cmd == BPF_PROG_LOAD) {
		const struct prog_load_attr *a = (const void *)e->in.attr;

		if (e->in.attr_copied < offsetofend(struct prog_load_attr, log_buf))
			return 0;
		l->level = a->log_level;
		l->size = a->log_size;
		l->buf = a->log_buf;
	} else {
		const struct btf_load_attr *a = (const void *)e->in.attr;

		if (e->in.attr_copied < offsetofend(struct btf_load_attr, btf_log_level))
			return 0;
		l->buf = a->btf_log_buf;
		l->size = a->btf_log_size;
		l->level = a->btf_log_level;
	}
	return l->level && l->size && l->buf;
}

/* measure_log scans the caller's log buffer of a load whose log fit. */
static __always_inline void measure_log(struct load_event *e)
{
	struct scan_ctx c = {};
	struct log_args l;
	__u32 size, cap = log_scan_max;
	__u64 buf;

	if (!log_args(e, &l))
		return;
	buf = l.buf;
	size = l.size;
	if (!cap || cap > LOG_SCAN_MAX)
		cap = LOG_SCAN_MAX;
	c.buf = buf;
	c.limit = size < cap ? size : cap;
	scan_log(&c);
	if (!(c.flags & (FLAG_LOG_MEASURED | FLAG_LOG_SCAN_FAULT)) && size > cap) {
		c.len = cap;
		c.flags |= FLAG_LOG_SCAN_CAPPED;
	}
	e->log_used = c.len;
	e->in.flags |= c.flags;
}

/*
 * copy_log_tail copies the end of the log the kernel left in the caller's
 * buffer into t->tail: up to log_tail_bytes bytes before the log's NUL.
 * Where the NUL is:
 *   success, the verifier's EACCES  measured by measure_log (log_used);
 *   ENOSPC, rotating log (6.4+)      log_size - 1: the buffer holds the
 *                                    last log_size - 1 bytes of the log;
 *   EINVAL with a true size (6.4+)   log_true_size - 1: the log fit.
 * The last two are checked to be a NUL before anything is copied. Nothing
 * else has the kernel's log's end in the buffer: an ENOSPC in fixed mode,
 * or before 6.4, holds its head; an early error, what the caller put there.
 */
static __always_inline void copy_log_tail(struct load_event_tail *t, __s64 ret)
{
	struct load_event *e = &t->e;
	struct log_args l;
	__u64 end, n;
	char nul;

	t->tail_len = 0;
	t->pad = 0;
	if ((e->in.flags & FLAG_KERNEL_CALLER) || !log_args(e, &l))
		return;
	if (e->in.flags & FLAG_LOG_MEASURED) {
		end = e->log_used;
	} else {
		if (ret == -ENOSPC && log_rotating && !(l.level & LOG_LEVEL_FIXED))
			end = l.size - 1;
		else if (ret == -EINVAL && log_rotating && (e->in.flags & FLAG_TRUE_SIZE_READ) &&
			 e->true_size_after > 0 && e->true_size_after <= l.size)
			end = e->true_size_after - 1;
		else
			return;
		if (bpf_probe_read_user(&nul, 1, (const void *)(l.buf + end)) || nul)
			return;
	}
	n = log_tail_bytes;
	if (n > end)
		n = end;
	/* Re-bound n where the verifier can see it: at most LOG_TAIL_MAX. */
	barrier_var(n);
	n &= LOG_TAIL_MAX * 2 - 1;
	if (n > LOG_TAIL_MAX)
		n = LOG_TAIL_MAX;
	if (bpf_probe_read_user(t->tail, n, (const void *)(l.buf + end - n)) == 0)
		t->tail_len = n;
}

/* ---- exit ------------------------------------------------------------------- */

/* record_exit completes the load in slot, the thread's busy slot, and submits it. */
static __always_inline int record_exit(struct inflight_slot *slot, __s64 ret)
{
	struct load_event *e;
	__u64 id, uid_gid;
	__u32 off;

	__sync_fetch_and_add(&loads_in_flight, -1);
	if (log_tail_bytes)
		e = bpf_ringbuf_reserve(&events, sizeof(struct load_event_tail), 0);
	else
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (e)
		__builtin_memcpy(&e->in, &slot->in, sizeof(e->in));
	slot_release(slot);
	if (!e) {
		count_lost(LOST_RINGBUF_FULL);
		return 0;
	}

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

	off = e->in.cmd == BPF_PROG_LOAD ? __builtin_offsetof(struct prog_load_attr, log_true_size) :
					   __builtin_offsetof(struct btf_load_attr, btf_log_true_size);
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
	if ((ret >= 0 || (e->in.cmd == BPF_PROG_LOAD && ret == -EACCES)) &&
	    !(e->in.flags & FLAG_KERNEL_CALLER))
		measure_log(e);
	if (log_tail_bytes)
		copy_log_tail((struct load_event_tail *)e, ret);

	bpf_ringbuf_submit(e, bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ?
				       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	return 0;
}

/* hooked_exit: the exit of a load whose entry the enter hook stored. */
static __always_inline int hooked_exit(struct task_struct *task, __s64 ret)
{
	struct inflight_slot *slot = slot_end(task);

	if (!slot) {
		if (!detaching)
			count_lost(LOST_NO_INFLIGHT);
		return 0;
	}
	return record_exit(slot, ret);
}

/* ---- fentry and kprobe -------------------------------------------------------- */

/*
 * fentry and kprobe hooks see the kernel's attr copy but not, before 6.4,
 * the attr size; both come from the syscall's own registers, trusted only
 * when they match the hook's arguments (a load from user space). Loads the
 * kernel issues itself (bpf_sys_bpf) are marked and keep attr_size 0.
 * uattr is 0 where the hooked function does not take it (btf_new_fd before
 * 5.14): the syscall's registers then give it.
 */
static __always_inline int hooked_enter(__u32 cmd, const void *kattr, __u64 uattr,
					__u64 uattr_is_kernel)
{
	struct task_struct *task = current_task();
	struct pt_regs *regs = syscall_regs(task);
	__u32 attr_size = 0;
	__u32 flags = FLAG_KERNEL_CALLER;

	if (regs && !uattr_is_kernel && (__u32)PT_REGS_PARM1_CORE_SYSCALL(regs) == cmd) {
		__u64 sys_uattr = PT_REGS_PARM2_CORE_SYSCALL(regs);

		if (!uattr || sys_uattr == uattr) {
			uattr = sys_uattr;
			attr_size = PT_REGS_PARM3_CORE_SYSCALL(regs);
			flags = 0;
		}
	}
	return record_enter(task, cmd, uattr, attr_size, kattr, flags);
}

/*
 * The hook's arguments by slot: the attr, the user attr (or bpfptr_t's
 * pointer), bpfptr_t's is_kernel. Slots a signature lacks read as 0.
 */
static __always_inline int sliced_enter(__u32 cmd, __u32 slots, __u64 a0, __u64 a1, __u64 a2)
{
	return hooked_enter(cmd, (const void *)a0, slots >= 2 ? a1 : 0, slots >= 3 ? a2 & 1 : 0);
}

/*
 * fentry mode: arguments and the return value by slot of the BTF prototype.
 * Each slot is its own load at a constant offset: the verifier refuses a
 * context access at a computed one, which is what the compiler would make
 * of ctx[slots].
 */
#define CTX_SLOT(ctx, off)                                                        \
	({                                                                        \
		__u64 __v;                                                        \
		asm volatile("%0 = *(u64 *)(%1 + " #off ")" : "=r"(__v) : "r"(ctx)); \
		__v;                                                              \
	})

static __always_inline int fentry_enter(__u32 cmd, __u32 slots, __u64 *ctx)
{
	__u64 a1 = 0, a2 = 0;

	if (slots >= 2)
		a1 = CTX_SLOT(ctx, 8);
	if (slots >= 3)
		a2 = CTX_SLOT(ctx, 16);
	return sliced_enter(cmd, slots, CTX_SLOT(ctx, 0), a1, a2);
}

/* The return value follows the arguments. */
static __always_inline int fexit_exit(__u32 slots, __u64 *ctx)
{
	__u64 ret;

	if (slots <= 1)
		ret = CTX_SLOT(ctx, 8);
	else if (slots == 2)
		ret = CTX_SLOT(ctx, 16);
	else if (slots == 3)
		ret = CTX_SLOT(ctx, 24);
	else
		ret = CTX_SLOT(ctx, 32);
	return hooked_exit(current_task(), (int)ret);
}

SEC("fentry/bpf_prog_load")
int fentry_prog_load(__u64 *ctx)
{
	return fentry_enter(BPF_PROG_LOAD, prog_load_arg_slots, ctx);
}

SEC("fexit/bpf_prog_load")
int fexit_prog_load(__u64 *ctx)
{
	return fexit_exit(prog_load_arg_slots, ctx);
}

SEC("fentry/btf_new_fd")
int fentry_btf_load(__u64 *ctx)
{
	return fentry_enter(BPF_BTF_LOAD, btf_load_arg_slots, ctx);
}

SEC("fexit/btf_new_fd")
int fexit_btf_load(__u64 *ctx)
{
	return fexit_exit(btf_load_arg_slots, ctx);
}

/* kprobe mode. Slots are argument registers. */

SEC("kprobe/bpf_prog_load")
int BPF_KPROBE(kprobe_prog_load, __u64 a0, __u64 a1, __u64 a2)
{
	return sliced_enter(BPF_PROG_LOAD, prog_load_arg_slots, a0, a1, a2);
}

SEC("kretprobe/bpf_prog_load")
int BPF_KRETPROBE(kretprobe_prog_load, int ret)
{
	return hooked_exit(current_task(), ret);
}

SEC("kprobe/btf_new_fd")
int BPF_KPROBE(kprobe_btf_load, __u64 a0, __u64 a1, __u64 a2)
{
	return sliced_enter(BPF_BTF_LOAD, btf_load_arg_slots, a0, a1, a2);
}

SEC("kretprobe/btf_new_fd")
int BPF_KRETPROBE(kretprobe_btf_load, int ret)
{
	return hooked_exit(current_task(), ret);
}

/*
 * tracepoint mode. These fire on every bpf(2) call, so both leave at once for
 * commands that are not loads: the exit hook after one memory load while no
 * load is in flight; a load whose entry is missing is counted, not silently
 * skipped.
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
	return record_enter(current_task(), (__u32)ctx->cmd, ctx->uattr, (__u32)ctx->size, 0, 0);
}

SEC("tracepoint/syscalls/sys_exit_bpf")
int tracepoint_exit_bpf(struct sys_exit_bpf_ctx *ctx)
{
	struct task_struct *task;

	/* No load in flight: this call is not one (or began before attach). */
	if (!count_loads_begun_before_attach && *(volatile __u64 *)&loads_in_flight == 0)
		return 0;
	task = current_task();
#ifndef VERIFIERLOG_COMPAT
	/*
	 * bpf_task_pt_regs returns a BTF pointer: read the register directly
	 * (a CO-RE-relocated load, no helper call) on this hot path.
	 */
	if (!is_load_cmd((__u32)PT_REGS_PARM1_SYSCALL(syscall_regs(task))))
		return 0;
	return hooked_exit(task, ctx->ret);
#else
	/*
	 * A hash lookup is cheaper here than finding the registers: an entry
	 * means this thread's load is ending (a thread is in one syscall at a
	 * time). Without one, the command tells whether a load went unseen.
	 */
	struct inflight_slot *slot = slot_end(task);
	struct pt_regs *regs;

	if (slot)
		return record_exit(slot, ctx->ret);
	regs = syscall_regs(task);
	if (regs && is_load_cmd((__u32)PT_REGS_PARM1_CORE_SYSCALL(regs)) && !detaching)
		count_lost(LOST_NO_INFLIGHT);
	return 0;
#endif
}
