package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Record flags, as bpf/verifierlog.c sets them.
const (
	flagAttrUnreadable = 1 << 0
	flagTrueSizeRead   = 1 << 1
	flagKernelCaller   = 1 << 2
	flagLogMeasured    = 1 << 3
	flagLogScanCapped  = 1 << 4
)

// Offsets in union bpf_attr (UAPI, stable).
const (
	offProgType           = 0
	offInsnCnt            = 4
	offLogLevel           = 24
	offLogSize            = 28
	offLogBuf             = 32
	offProgFlags          = 44
	offProgName           = 48
	offExpectedAttachType = 68
	offLogTrueSize        = 140
	progLoadAttrNeed      = 144 // offsetofend(log_true_size)

	offBTFLogBuf      = 8
	offBTFLogSize     = 20
	offBTFLogLevel    = 24
	offBTFLogTrueSize = 28
	btfLoadAttrNeed   = 32 // offsetofend(btf_log_true_size)
)

// recordSize is the size of one ring-buffer record.
const recordSize = int(unsafe.Sizeof(verifierlogLoadEvent{}))

var errShortRecord = errors.New("short record")

// decoder turns ring-buffer records into LoadEvents.
type decoder struct {
	// trueSizeSupported: the kernel writes log_true_size back (6.4+),
	// probed once at start.
	trueSizeSupported bool
	mode              AttachMode
}

// decode fills ev from one raw record. It allocates nothing.
func (d *decoder) decode(raw []byte, ev *LoadEvent) error {
	if len(raw) < recordSize {
		return fmt.Errorf("%w: %d bytes, want %d", errShortRecord, len(raw), recordSize)
	}
	var r verifierlogLoadEvent
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&r)), recordSize), raw)

	*ev = LoadEvent{
		StartNs:        r.In.StartNs,
		EndNs:          r.EndNs,
		PID:            r.Pid,
		TID:            r.Tid,
		UID:            r.Uid,
		GID:            r.Gid,
		CgroupID:       r.CgroupId,
		Command:        Command(r.In.Cmd),
		AttrSize:       r.In.AttrSize,
		AttrUnreadable: r.In.Flags&flagAttrUnreadable != 0,
		KernelCaller:   r.In.Flags&flagKernelCaller != 0,
		Ret:            r.Ret,
		AttachMode:     d.mode,
	}
	copy(ev.Comm[:], unsafe.Slice((*byte)(unsafe.Pointer(&r.Comm[0])), len(r.Comm)))

	copied := min(int(r.In.AttrCopied), len(r.In.Attr))
	attr := attrView(r.In.Attr[:copied])
	var trueSizeOff, need int
	switch ev.Command {
	case CmdProgLoad:
		ev.ProgType = attr.u32(offProgType)
		ev.InsnCnt = attr.u32(offInsnCnt)
		ev.LogLevel = attr.u32(offLogLevel)
		ev.LogSize = attr.u32(offLogSize)
		ev.HasLogBuf = attr.u64(offLogBuf) != 0
		ev.ProgFlags = attr.u32(offProgFlags)
		ev.ExpectedAttachType = attr.u32(offExpectedAttachType)
		if len(attr) > offProgName {
			copy(ev.ProgName[:], attr[offProgName:])
		}
		trueSizeOff, need = offLogTrueSize, progLoadAttrNeed
	case CmdBTFLoad:
		ev.LogLevel = attr.u32(offBTFLogLevel)
		ev.LogSize = attr.u32(offBTFLogSize)
		ev.HasLogBuf = attr.u64(offBTFLogBuf) != 0
		trueSizeOff, need = offBTFLogTrueSize, btfLoadAttrNeed
	default:
		return fmt.Errorf("record for bpf command %d, which the tracer does not trace", r.In.Cmd)
	}

	// The buffer holds the kernel's log only after a success or the
	// verifier's EACCES (bpf/verifierlog.c scans only then; checked here
	// too, so that no other record can carry a measurement).
	measurable := ev.Ret >= 0 || (ev.Command == CmdProgLoad && ev.Errno() == unix.EACCES)
	switch {
	case !measurable:
	case r.In.Flags&flagLogMeasured != 0:
		ev.LogUsedSize = r.LogUsed + 1
	case r.In.Flags&flagLogScanCapped != 0:
		ev.LogUsedSize, ev.LogUsedAtLeast = r.LogUsed+1, true
	}
	if d.trueSizeKnown(ev, &r, attr, trueSizeOff, need) {
		ev.LogTrueSize = r.TrueSizeAfter
		ev.LogTrueSizeKnown = true
	}
	return nil
}

// trueSizeKnown decides whether the kernel wrote log_true_size for this
// load. It must have the feature, the caller's attr must be long enough for
// the field, a log must have been asked for, and the value must be the
// kernel's and not what user space left there: it changed during the call,
// or the load reached the verifier's log finalisation (success, ENOSPC,
// or the verifier's EACCES), which always writes it. Anything else stays
// unknown: a guess is never reported as a measurement.
func (d *decoder) trueSizeKnown(ev *LoadEvent, r *verifierlogLoadEvent, attr attrView, off, need int) bool {
	if !d.trueSizeSupported || ev.KernelCaller || ev.AttrUnreadable ||
		ev.AttrSize < uint32(need) || len(attr) < need ||
		r.In.Flags&flagTrueSizeRead == 0 || ev.LogLevel == 0 {
		return false
	}
	if r.TrueSizeAfter != attr.u32(off) {
		return true
	}
	switch ev.Errno() {
	case 0, unix.ENOSPC, unix.EACCES:
		return true
	}
	return false
}

// attrView reads host-endian fields of a partial attr copy. Bytes beyond
// its end read as zero, as the kernel zero-fills a short attr, so a field
// that the attr size cuts in two reads as the kernel saw it.
type attrView []byte

func (a attrView) u32(off int) uint32 {
	var b [4]byte
	if off < len(a) {
		copy(b[:], a[off:])
	}
	return binary.NativeEndian.Uint32(b[:])
}

func (a attrView) u64(off int) uint64 {
	var b [8]byte
	if off < len(a) {
		copy(b[:], a[off:])
	}
	return binary.NativeEndian.Uint64(b[:])
}
