package tracer

import "strconv"

// Record is a LoadEvent as `exporter trace --output json` prints it: the
// JSON keys are a public interface (README, "JSON records").
type Record struct {
	Time               string `json:"time"` // RFC 3339, UTC, nanoseconds
	Command            string `json:"command"`
	PID                uint32 `json:"pid"`
	TID                uint32 `json:"tid"`
	Comm               string `json:"comm"`
	UID                uint32 `json:"uid"`
	CgroupID           uint64 `json:"cgroup_id"`
	ProgType           string `json:"prog_type"`
	ExpectedAttachType uint32 `json:"expected_attach_type"`
	ProgName           string `json:"prog_name"`
	ProgFlags          uint32 `json:"prog_flags"`
	InsnCnt            uint32 `json:"insn_cnt"`
	AttrSize           uint32 `json:"attr_size"`
	LogLevel           uint32 `json:"log_level"`
	LogMode            string `json:"log_mode"`
	LogSize            uint32 `json:"log_size"`
	// LogTrueSize is null unless the kernel wrote it: an unknown size is
	// never printed as a number.
	LogTrueSize      *uint32 `json:"log_true_size"`
	LogTrueSizeKnown bool    `json:"log_true_size_known"`
	// LogUsedSize is the measured length + 1 of a log that fit; 0 when not
	// measured.
	LogUsedSize uint32 `json:"log_used_size"`
	// LogUsedAtLeast: the scan hit its cap; the need is at least
	// LogUsedSize.
	LogUsedAtLeast bool       `json:"log_used_size_at_least"`
	LogNeedSource  NeedSource `json:"log_need_source"` // "kernel", "measured" or ""
	Ret            int64      `json:"ret"`
	Errno          string     `json:"errno"`
	Truncated      bool       `json:"truncated"`
	DurationNs     uint64     `json:"duration_ns"`
	AttachMode     string     `json:"attach_mode"`
	// LogTail is the end of the log the kernel left in the caller's
	// buffer, sanitized (SanitizeLogTail); omitted when the tail is off
	// (Options.LogTailBytes) or the load left no log.
	LogTail string `json:"log_tail,omitempty"`
}

// RFC3339NanoFixed is RFC 3339 with all nine fractional digits.
const RFC3339NanoFixed = "2006-01-02T15:04:05.000000000Z07:00"

// Record converts e, with clock for its wall-clock time.
func (e *LoadEvent) Record(clock WallClock) Record {
	r := Record{
		Time:               clock.Time(e.StartNs).Format(RFC3339NanoFixed),
		Command:            e.Command.String(),
		PID:                e.PID,
		TID:                e.TID,
		Comm:               e.Comm.String(),
		UID:                e.UID,
		CgroupID:           e.CgroupID,
		ExpectedAttachType: e.ExpectedAttachType,
		ProgName:           e.ProgName.String(),
		ProgFlags:          e.ProgFlags,
		InsnCnt:            e.InsnCnt,
		AttrSize:           e.AttrSize,
		LogLevel:           e.LogLevel,
		LogMode:            e.LogMode().String(),
		LogSize:            e.LogSize,
		LogTrueSizeKnown:   e.LogTrueSizeKnown,
		Ret:                e.Ret,
		Errno:              e.ErrnoName(),
		Truncated:          e.Truncated(),
		DurationNs:         uint64(e.Duration()),
		AttachMode:         string(e.AttachMode),
	}
	if e.Command == CmdProgLoad {
		r.ProgType = ProgTypeName(e.ProgType)
	}
	if e.LogTrueSizeKnown {
		size := e.LogTrueSize
		r.LogTrueSize = &size
	}
	r.LogUsedSize, r.LogUsedAtLeast = e.LogUsedSize, e.LogUsedAtLeast
	_, r.LogNeedSource = e.Need()
	if len(e.LogTail) > 0 {
		r.LogTail = SanitizeLogTail(e.LogTail)
	}
	return r
}

// progTypeNames are enum bpf_prog_type's names without BPF_PROG_TYPE_, in
// lower case (UAPI order).
var progTypeNames = [...]string{
	"unspec", "socket_filter", "kprobe", "sched_cls", "sched_act",
	"tracepoint", "xdp", "perf_event", "cgroup_skb", "cgroup_sock",
	"lwt_in", "lwt_out", "lwt_xmit", "sock_ops", "sk_skb",
	"cgroup_device", "sk_msg", "raw_tracepoint", "cgroup_sock_addr",
	"lwt_seg6local", "lirc_mode2", "sk_reuseport", "flow_dissector",
	"cgroup_sysctl", "raw_tracepoint_writable", "cgroup_sockopt",
	"tracing", "struct_ops", "ext", "lsm", "sk_lookup", "syscall",
	"netfilter",
}

// ProgTypeName is the kernel's name of a program type ("socket_filter"),
// or its number for types this build does not know.
func ProgTypeName(t uint32) string {
	if name, ok := KnownProgType(t); ok {
		return name
	}
	return strconv.FormatUint(uint64(t), 10)
}

// KnownProgType is the kernel's name of a program type this build knows.
func KnownProgType(t uint32) (string, bool) {
	if int(t) < len(progTypeNames) {
		return progTypeNames[t], true
	}
	return "", false
}
