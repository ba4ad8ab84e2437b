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
	flagLogScanFault   = 1 << 5
)

// recordSize is the size of one ring-buffer record; tailRecordSize, with
// Options.LogTailBytes, of one that carries the log's end.
const (
	recordSize     = int(unsafe.Sizeof(verifierlogLoadEvent{}))
	tailRecordSize = int(unsafe.Sizeof(verifierlogLoadEventTail{}))
	tailLenOffset  = int(unsafe.Offsetof(verifierlogLoadEventTail{}.TailLen))
	tailOffset     = int(unsafe.Offsetof(verifierlogLoadEventTail{}.Tail))
)

var errShortRecord = errors.New("short record")

// decoder turns ring-buffer records into LoadEvents.
type decoder struct {
	// trueSizeSupported: the kernel writes log_true_size back (6.4+),
	// probed once at start.
	trueSizeSupported bool
	mode              AttachMode
	// tail holds the last record's log tail: LoadEvent.LogTail.
	tail [MaxLogTailBytes]byte
	// lastSize is the size of the last record decoded (tests).
	lastSize int
}

// decode fills ev from one raw record. It allocates nothing.
func (d *decoder) decode(raw []byte, ev *LoadEvent) error {
	d.lastSize = len(raw)
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

	// Bytes past what was copied read as zero, as the kernel zero-fills a
	// short attr, so a field that the attr size cuts in two reads as the
	// kernel saw it.
	attr := r.In.Attr[:min(int(r.In.AttrCopied), len(r.In.Attr))]
	var presetTrueSize uint32 // what the caller left in the true-size field
	var trueSizeCopied bool
	switch ev.Command {
	case CmdProgLoad:
		var a ProgLoadAttr
		copy(AttrBytes(&a), attr)
		ev.ProgType = a.ProgType
		ev.InsnCnt = a.InsnCnt
		ev.LogLevel = a.LogLevel
		ev.LogSize = a.LogSize
		ev.HasLogBuf = a.LogBuf != 0
		ev.ProgFlags = a.ProgFlags
		ev.ExpectedAttachType = a.ExpectedAttachType
		ev.ProgName = a.ProgName
		presetTrueSize, trueSizeCopied = a.LogTrueSize, len(attr) >= int(ProgLoadAttrSize)
	case CmdBTFLoad:
		var a BTFLoadAttr
		copy(AttrBytes(&a), attr)
		ev.LogLevel = a.BtfLogLevel
		ev.LogSize = a.BtfLogSize
		ev.HasLogBuf = a.BtfLogBuf != 0
		presetTrueSize, trueSizeCopied = a.BtfLogTrueSize, len(attr) >= int(BTFLoadAttrSize)
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
	case r.In.Flags&flagLogScanFault != 0:
		ev.LogScanFault = true
	}
	if d.trueSizeKnown(ev, &r, presetTrueSize, trueSizeCopied) {
		ev.LogTrueSize = r.TrueSizeAfter
		ev.LogTrueSizeKnown = true
	}
	ev.LogTail = d.decodeTail(raw)
	return nil
}

// decodeTail returns the log tail of a record that has one (its length
// tells: a struct load_event_tail), as a slice of d.tail; nil otherwise.
func (d *decoder) decodeTail(raw []byte) []byte {
	if len(raw) < tailRecordSize {
		return nil
	}
	n := int(binary.NativeEndian.Uint32(raw[tailLenOffset:]))
	if n == 0 || n > len(d.tail) {
		return nil
	}
	return d.tail[:copy(d.tail[:], raw[tailOffset:tailOffset+n])]
}

// trueSizeKnown decides whether the kernel wrote log_true_size for this
// load. It must have the feature, the caller's attr must be long enough for
// the field, a log must have been asked for, and the value must be the
// kernel's and not what user space left there: it changed during the call,
// or the load reached the verifier's log finalisation (success, ENOSPC,
// or the verifier's EACCES), which always writes it. Anything else stays
// unknown: a guess is never reported as a measurement.
func (d *decoder) trueSizeKnown(ev *LoadEvent, r *verifierlogLoadEvent, preset uint32, copied bool) bool {
	need := ProgLoadAttrSize
	if ev.Command == CmdBTFLoad {
		need = BTFLoadAttrSize
	}
	if !d.trueSizeSupported || ev.KernelCaller || ev.AttrUnreadable ||
		ev.AttrSize < need || !copied ||
		r.In.Flags&flagTrueSizeRead == 0 || ev.LogLevel == 0 {
		return false
	}
	if r.TrueSizeAfter != preset {
		return true
	}
	switch ev.Errno() {
	case 0, unix.ENOSPC, unix.EACCES:
		return true
	}
	return false
}
