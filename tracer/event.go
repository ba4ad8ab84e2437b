package tracer

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Command is the bpf(2) command of a load.
type Command uint32

// The commands the tracer records (UAPI values).
const (
	CmdProgLoad Command = 5
	CmdBTFLoad  Command = 18
)

// String is the kernel's name, used in labels, JSON and span names.
func (c Command) String() string {
	switch c {
	case CmdProgLoad:
		return "BPF_PROG_LOAD"
	case CmdBTFLoad:
		return "BPF_BTF_LOAD"
	}
	return fmt.Sprintf("BPF_CMD_%d", uint32(c))
}

// LogMode is how the loader asked for the verifier log.
type LogMode uint8

const (
	LogOff      LogMode = iota // log level 0
	LogQuery                   // level > 0, no buffer: a size query
	LogFixed                   // BPF_LOG_FIXED: the kernel keeps the head
	LogRotating                // any other level with a buffer: the kernel keeps the tail (6.4+)
)

func (m LogMode) String() string {
	switch m {
	case LogOff:
		return "off"
	case LogQuery:
		return "query"
	case LogFixed:
		return "fixed"
	case LogRotating:
		return "rotating"
	}
	return "unknown"
}

// Log level bits (UAPI).
const (
	LogLevel1     = 1
	LogLevel2     = 2
	LogLevelStats = 4
	LogLevelFixed = 8
)

// Name is a fixed 16-byte kernel name (comm, prog_name). Loaders control
// its bytes; String makes it safe for labels and terminals.
type Name [16]byte

// String returns the bytes up to the first NUL, with invalid UTF-8 and
// control characters replaced by U+FFFD.
func (n Name) String() string {
	b := n[:]
	for i, c := range b {
		if c == 0 {
			b = b[:i]
			break
		}
	}
	return sanitize(b, false)
}

// LoadEvent is one load attempt as the kernel saw it. The tracer reuses one
// LoadEvent for every record: copy it to keep it.
type LoadEvent struct {
	StartNs, EndNs uint64 // CLOCK_MONOTONIC nanoseconds around the load
	PID, TID       uint32
	UID, GID       uint32
	CgroupID       uint64
	Comm           Name // the loading thread's comm
	Command        Command

	// AttrSize is the size argument of bpf(2); 0 with KernelCaller.
	AttrSize uint32
	// AttrUnreadable: the attr pointer could not be read (EFAULT territory);
	// the attr fields below are zero.
	AttrUnreadable bool
	// KernelCaller: the load came from inside the kernel (bpf_sys_bpf, as
	// light skeletons do), so there is no user attr or attr size.
	KernelCaller bool

	ProgType           uint32 // PROG_LOAD only
	ExpectedAttachType uint32
	InsnCnt            uint32
	ProgName           Name
	ProgFlags          uint32

	LogLevel  uint32
	LogSize   uint32
	HasLogBuf bool // log_buf != NULL

	// LogTrueSize is the kernel's log_true_size (btf_log_true_size);
	// meaningful only where LogTrueSizeKnown.
	LogTrueSize      uint32
	LogTrueSizeKnown bool

	// LogUsedSize is the measured length + 1 of a log that fit: the exact
	// need, also where the kernel writes no log_true_size; 0 if not
	// measured (ENOSPC, no log, unreadable buffer). With LogUsedAtLeast the
	// scan stopped at its cap and the need is at least LogUsedSize.
	LogUsedSize    uint32
	LogUsedAtLeast bool
	// LogScanFault: the log fit, but the caller's buffer could not be read
	// back to measure it (unmapped or paged out by then), so the need is
	// unknown unless the kernel wrote log_true_size.
	LogScanFault bool

	Ret        int64 // fd or -errno
	AttachMode AttachMode

	// LogTail is the end of the log the kernel left in the caller's
	// buffer, its NUL excluded: at most Options.LogTailBytes bytes, raw
	// (the loader's text and the verifier's; SanitizeLogTail makes it
	// safe to print). nil when the tail is off or the buffer held no log
	// of the kernel's. It is the tracer's buffer, reused for the next
	// record: copy it to keep it.
	LogTail []byte
}

// Errno is the load's error, 0 on success.
func (e *LoadEvent) Errno() syscall.Errno {
	if e.Ret >= 0 {
		return 0
	}
	return syscall.Errno(-e.Ret)
}

// ErrnoName is the errno's name ("ENOSPC"), or "" on success.
func (e *LoadEvent) ErrnoName() string {
	errno := e.Errno()
	if errno == 0 {
		return ""
	}
	if name := unix.ErrnoName(errno); name != "" {
		return name
	}
	return fmt.Sprintf("errno%d", uint32(errno))
}

// OK reports whether the load succeeded.
func (e *LoadEvent) OK() bool { return e.Ret >= 0 }

// LogMode classifies the log request (README, "JSON records").
func (e *LoadEvent) LogMode() LogMode {
	switch {
	case e.LogLevel == 0:
		return LogOff
	case !e.HasLogBuf:
		return LogQuery
	case e.LogLevel&LogLevelFixed != 0:
		return LogFixed
	}
	return LogRotating
}

// Truncated reports whether the log did not fit: ENOSPC with a log buffer.
// The ENOSPC then replaced the verifier's own verdict.
func (e *LoadEvent) Truncated() bool {
	return e.Errno() == unix.ENOSPC && e.HasLogBuf && e.LogLevel > 0
}

// NeedSource says where a load's log need came from; its value is the
// source label of metrics and JSON records.
type NeedSource string

const (
	NeedUnknown  NeedSource = ""
	NeedKernel   NeedSource = "kernel"   // the kernel's log_true_size
	NeedMeasured NeedSource = "measured" // the measured length + 1 of a log that fit
)

// Need is the buffer size, NUL included, that holds the whole log, and
// where it came from; 0 with NeedUnknown when unknown.
func (e *LoadEvent) Need() (uint32, NeedSource) {
	switch {
	case e.LogLevel == 0:
		return 0, NeedUnknown
	case e.LogTrueSizeKnown:
		return e.LogTrueSize, NeedKernel
	case e.LogUsedSize > 0 && !e.LogUsedAtLeast:
		return e.LogUsedSize, NeedMeasured
	}
	return 0, NeedUnknown
}

// Duration is the time the kernel spent in the load.
func (e *LoadEvent) Duration() time.Duration {
	if e.EndNs < e.StartNs {
		return 0
	}
	return time.Duration(e.EndNs - e.StartNs)
}
