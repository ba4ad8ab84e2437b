// Package loadgen issues raw bpf(BPF_PROG_LOAD) and bpf(BPF_BTF_LOAD)
// syscalls with exactly the attr a caller asks for (log level, buffer, attr
// size, even a bad attr pointer) and returns what the kernel answered. It is
// the ground truth for the tracer's tests and benchmarks and the engine of
// `exporter loadgen`.
//
// It builds the attr by hand, not with cilium/ebpf, because the point is to
// reproduce what any loader may pass: short attr sizes, preset output
// fields, NULL or tiny log buffers.
package loadgen

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/tracer"
)

// The attr sizes that reach the log's true size: the tracer's, which
// bpf/attr.h declares.
const (
	ProgLoadAttrSize = tracer.ProgLoadAttrSize
	BTFLoadAttrSize  = tracer.BTFLoadAttrSize
)

const (
	bpfObjNameLen     = 16
	socketFilterType  = 1 // BPF_PROG_TYPE_SOCKET_FILTER
	cmdProgLoad       = 5
	cmdBTFLoad        = 18
	cmdMapCreate      = 0
	defaultLongInsns  = 64
	maxProgNameLength = bpfObjNameLen - 1
)

// Log levels: the tracer's.
const (
	LogLevel1     = tracer.LogLevel1
	LogLevel2     = tracer.LogLevel2
	LogLevelStats = tracer.LogLevelStats
	LogLevelFixed = tracer.LogLevelFixed
)

// Program is the kind of program to load.
type Program int

const (
	// Valid loads: r0 = 0; exit.
	Valid Program = iota
	// Rejected is refused by the verifier with EACCES ("R0 !read_ok");
	// ProgLoad.Insns (default 1) sets its length.
	Rejected
	// LongLog is a valid program of ProgLoad.Insns instructions; at log
	// level 2 the verifier writes a line per instruction.
	LongLog
	// BadJump jumps past its end: the verifier answers EINVAL ("jump out
	// of range") after it has begun its log, so on 6.4+ it writes
	// log_true_size back.
	BadJump
)

func (p Program) String() string {
	switch p {
	case Valid:
		return "valid"
	case Rejected:
		return "rejected"
	case LongLog:
		return "long"
	case BadJump:
		return "badjump"
	}
	return fmt.Sprintf("Program(%d)", int(p))
}

// ParseProgram is the inverse of Program.String.
func ParseProgram(s string) (Program, error) {
	for _, p := range []Program{Valid, Rejected, LongLog, BadJump} {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown program %q (want valid, rejected, long or badjump)", s)
}

// ProgLoad describes one BPF_PROG_LOAD attempt.
type ProgLoad struct {
	Program Program
	Insns   int    // LongLog (default 64) and Rejected (default 1)
	Name    string // prog_name; at most 15 bytes, passed as raw bytes
	// RawName, if set, is copied into prog_name as is (all 16 bytes may be
	// non-NUL), overriding Name.
	RawName  *[bpfObjNameLen]byte
	LogLevel uint32
	LogSize  uint32 // log_size; a buffer of this size is passed unless NoLogBuf
	NoLogBuf bool   // pass log_buf = NULL (with LogSize 0: a size query)
	// LogBufAddr, if non-zero, is passed as log_buf instead of a buffer of
	// LogSize bytes (read-only or unmapped memory).
	LogBufAddr uintptr
	// AttrSize is the size argument of bpf(2); 0 means ProgLoadAttrSize
	// unless ZeroAttrSize. Sizes above ProgLoadAttrSize are passed with a
	// zeroed tail.
	AttrSize uint32
	// ZeroAttrSize passes a size of 0.
	ZeroAttrSize bool
	// TrueSizePreset is written into log_true_size before the call, to tell
	// the kernel's write-back from what user space left there.
	TrueSizePreset uint32
	// AttrPtr, if non-zero, is passed instead of a real attr (bad pointers).
	AttrPtr uintptr
	// NullAttr passes a NULL attr pointer.
	NullAttr bool
	// ProgType is prog_type; 0 means BPF_PROG_TYPE_SOCKET_FILTER.
	ProgType uint32
	// Comm, if set, is the calling thread's name during the call: the
	// exporter's loader label (to imitate libbpf, cilium, aya, ...).
	Comm string
	// InsnsAddr, if non-zero, is passed as the insns pointer instead of the
	// program's own buffer (HoldLoad puts the program there).
	InsnsAddr uintptr
	// BeforeSyscall and AfterSyscall, if set, run on the calling thread
	// right before and after each bpf(2) attempt, EAGAIN retries included
	// (ground truth for loads killed mid-call).
	BeforeSyscall, AfterSyscall func()
}

// BTFLoad describes one BPF_BTF_LOAD attempt.
type BTFLoad struct {
	Types    int // number of int types in the blob; the log grows with it; default 1
	LogLevel uint32
	LogSize  uint32
	NoLogBuf bool
	// AttrSize is the size argument of bpf(2); 0 means BTFLoadAttrSize.
	AttrSize       uint32
	TrueSizePreset uint32
	AttrPtr        uintptr
	NullAttr       bool
	Comm           string
}

// Result is what the kernel answered.
type Result struct {
	Ret   int           // the syscall's return: a file descriptor (closed already) or -errno
	Errno syscall.Errno // 0 on success
	// LogTrueSize is the attr's log_true_size (btf_log_true_size) after the
	// call, or the preset where the attr is too short to hold it.
	LogTrueSize uint32
	Log         []byte // the log buffer up to its first NUL
	TID         int    // the thread that made the call
	AttrSize    uint32 // the size argument passed
	LogSize     uint32 // the log_size passed
	InsnCnt     uint32
	// StartNs and EndNs bracket the syscall on CLOCK_MONOTONIC, the clock
	// of the tracer's timestamps.
	StartNs, EndNs uint64
	// EAGAINRetries counts attempts before this one that the kernel
	// answered with EAGAIN (each is a load attempt the tracer records too).
	EAGAINRetries int
}

// maxEAGAINRetries is libbpf's.
const maxEAGAINRetries = 5

// OK reports whether the load succeeded.
func (r Result) OK() bool { return r.Ret >= 0 }

// Instructions returns the program p, marshalled for the kernel.
func Instructions(p Program, n int) ([]byte, error) {
	var insns asm.Instructions
	switch p {
	case Valid:
		insns = asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	case Rejected:
		// r1 = i, ...; exit with r0 never written. n > 1 lengthens the
		// level-2 log without changing the verdict.
		for i := 0; i < n-1; i++ {
			insns = append(insns, asm.Mov.Imm(asm.R1, int32(i)))
		}
		insns = append(insns, asm.Return())
	case LongLog:
		if n <= 0 {
			n = defaultLongInsns
		}
		if n < 2 {
			n = 2
		}
		for i := 0; i < n-1; i++ {
			insns = append(insns, asm.Mov.Imm(asm.R0, int32(i)))
		}
		insns = append(insns, asm.Return())
	case BadJump:
		insns = asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			{OpCode: asm.OpCode(asm.JumpClass).SetJumpOp(asm.Ja), Offset: 8},
			asm.Return(),
		}
	default:
		return nil, fmt.Errorf("unknown program %d", p)
	}
	var buf bytes.Buffer
	if err := insns.Marshal(&buf, hostByteOrder()); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

var license = []byte("GPL\x00")

// LoadProgram issues one BPF_PROG_LOAD as p describes.
func LoadProgram(p ProgLoad) (Result, error) {
	insns, err := Instructions(p.Program, p.Insns)
	if err != nil {
		return Result{}, err
	}
	if p.RawName == nil && len(p.Name) > maxProgNameLength {
		return Result{}, fmt.Errorf("program name %q is longer than %d bytes", p.Name, maxProgNameLength)
	}
	attrSize := p.AttrSize
	if attrSize == 0 && !p.ZeroAttrSize {
		attrSize = ProgLoadAttrSize
	}
	attr := make([]byte, max(int(attrSize), int(ProgLoadAttrSize)))
	var logBuf []byte
	if !p.NoLogBuf && p.LogSize > 0 && p.LogBufAddr == 0 {
		logBuf = make([]byte, p.LogSize)
	}
	a := tracer.ProgLoadAttr{
		ProgType:    p.ProgType,
		InsnCnt:     uint32(len(insns) / asm.InstructionSize),
		Insns:       uint64(uintptr(unsafe.Pointer(&insns[0]))),
		License:     uint64(uintptr(unsafe.Pointer(&license[0]))),
		LogLevel:    p.LogLevel,
		LogSize:     p.LogSize,
		LogTrueSize: p.TrueSizePreset,
	}
	if a.ProgType == 0 {
		a.ProgType = socketFilterType
	}
	if p.InsnsAddr != 0 {
		a.Insns = uint64(p.InsnsAddr)
	}
	switch {
	case p.LogBufAddr != 0:
		a.LogBuf = uint64(p.LogBufAddr)
	case logBuf != nil:
		a.LogBuf = uint64(uintptr(unsafe.Pointer(&logBuf[0])))
	}
	if p.RawName != nil {
		a.ProgName = *p.RawName
	} else {
		copy(a.ProgName[:maxProgNameLength], p.Name)
	}
	copy(attr, tracer.AttrBytes(&a))

	res := call(cmdProgLoad, attr, attrSize, p.AttrPtr, p.NullAttr, p.Comm, p.BeforeSyscall, p.AfterSyscall)
	runtime.KeepAlive(insns)
	runtime.KeepAlive(logBuf)
	res.InsnCnt = uint32(len(insns) / asm.InstructionSize)
	res.LogSize = p.LogSize
	res.LogTrueSize = p.TrueSizePreset
	if p.AttrPtr == 0 && !p.NullAttr && attrSize >= ProgLoadAttrSize {
		copy(tracer.AttrBytes(&a), attr)
		res.LogTrueSize = a.LogTrueSize
	}
	res.Log = cString(logBuf)
	return res, nil
}

// BTF returns a BTF blob of n int types (at least one).
func BTF(n int) ([]byte, error) {
	if n < 1 {
		n = 1
	}
	types := make([]btf.Type, 0, n)
	for i := range n {
		types = append(types, &btf.Int{Name: fmt.Sprintf("int%d", i), Size: 4, Encoding: btf.Signed})
	}
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		return nil, err
	}
	return b.Marshal(nil, nil)
}

// LoadBTF issues one BPF_BTF_LOAD as b describes.
func LoadBTF(b BTFLoad) (Result, error) {
	blob, err := BTF(b.Types)
	if err != nil {
		return Result{}, err
	}
	attrSize := b.AttrSize
	if attrSize == 0 {
		attrSize = BTFLoadAttrSize
	}
	attr := make([]byte, max(int(attrSize), int(BTFLoadAttrSize)))
	var logBuf []byte
	if !b.NoLogBuf && b.LogSize > 0 {
		logBuf = make([]byte, b.LogSize)
	}
	a := tracer.BTFLoadAttr{
		Btf:            uint64(uintptr(unsafe.Pointer(&blob[0]))),
		BtfSize:        uint32(len(blob)),
		BtfLogSize:     b.LogSize,
		BtfLogLevel:    b.LogLevel,
		BtfLogTrueSize: b.TrueSizePreset,
	}
	if logBuf != nil {
		a.BtfLogBuf = uint64(uintptr(unsafe.Pointer(&logBuf[0])))
	}
	copy(attr, tracer.AttrBytes(&a))

	res := call(cmdBTFLoad, attr, attrSize, b.AttrPtr, b.NullAttr, b.Comm, nil, nil)
	runtime.KeepAlive(blob)
	runtime.KeepAlive(logBuf)
	res.LogTrueSize = b.TrueSizePreset
	res.LogSize = b.LogSize
	if b.AttrPtr == 0 && !b.NullAttr && attrSize >= BTFLoadAttrSize {
		copy(tracer.AttrBytes(&a), attr)
		res.LogTrueSize = a.BtfLogTrueSize
	}
	res.Log = cString(logBuf)
	return res, nil
}

// MapCreate issues BPF_MAP_CREATE for a one-element array and closes the
// map: a bpf(2) call that is not a load.
func MapCreate() Result {
	attr := make([]byte, 72)
	ne := binary.NativeEndian
	ne.PutUint32(attr[0:], 2) // BPF_MAP_TYPE_ARRAY
	ne.PutUint32(attr[4:], 4) // key_size
	ne.PutUint32(attr[8:], 4) // value_size
	ne.PutUint32(attr[12:], 1)
	return call(cmdMapCreate, attr, uint32(len(attr)), 0, false, "", nil, nil)
}

// ReadOnlyPages maps n pages that the process can read but not write: a
// log_buf there makes the kernel's log copy fault.
func ReadOnlyPages(n int) (uintptr, func(), error) {
	b, err := unix.Mmap(-1, 0, n*os.Getpagesize(), unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, nil, err
	}
	return uintptr(unsafe.Pointer(&b[0])), func() { unix.Munmap(b) }, nil
}

// UnmappedAddress returns an address with no mapping behind it: a page
// mapped and unmapped again, so the kernel's copy of an attr there faults.
func UnmappedAddress() (uintptr, error) {
	b, err := unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, err
	}
	addr := uintptr(unsafe.Pointer(&b[0]))
	if err := unix.Munmap(b); err != nil {
		return 0, err
	}
	return addr, nil
}

// call makes the syscall on a locked thread so that the TID it reports is
// the one the kernel saw.
func call(cmd uintptr, attr []byte, size uint32, attrPtr uintptr, nullAttr bool, comm string, before, after func()) Result {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if comm != "" {
		var old [16]byte
		if err := unix.Prctl(unix.PR_GET_NAME, uintptr(unsafe.Pointer(&old[0])), 0, 0, 0); err == nil {
			defer unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&old[0])), 0, 0, 0)
		}
		name := make([]byte, 16)
		copy(name[:15], comm)
		_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0)
	}

	ptr := uintptr(unsafe.Pointer(&attr[0]))
	switch {
	case nullAttr:
		ptr = 0
	case attrPtr != 0:
		ptr = attrPtr
	}
	res := Result{TID: unix.Gettid(), AttrSize: size}
	var r uintptr
	var errno syscall.Errno
	// The kernel now and then answers EAGAIN (about one load in 20,000
	// here), which every real loader retries; so does this, and Result
	// describes the last attempt, the one whose answer counts.
	for try := 0; ; try++ {
		if before != nil {
			before()
		}
		res.StartNs = monotonicNs()
		r, _, errno = unix.Syscall(unix.SYS_BPF, cmd, ptr, uintptr(size))
		res.EndNs = monotonicNs()
		if after != nil {
			after()
		}
		if errno != unix.EAGAIN || try == maxEAGAINRetries {
			break
		}
		res.EAGAINRetries++
	}
	runtime.KeepAlive(attr)
	if errno != 0 {
		res.Ret = -int(errno)
		res.Errno = errno
		return res
	}
	res.Ret = int(r)
	unix.Close(int(r))
	return res
}

func monotonicNs() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func cString(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// hostByteOrder is the host byte order as a concrete binary.ByteOrder
// (asm.Instructions.Marshal does not accept binary.NativeEndian).
func hostByteOrder() binary.ByteOrder {
	var x uint16 = 1
	if *(*byte)(unsafe.Pointer(&x)) == 1 {
		return binary.LittleEndian
	}
	return binary.BigEndian
}

// StraddlingAttr copies the attr p would pass so that only its first
// mapped bytes lie in a mapped page and the rest in an unmapped one, and
// returns its address (for ProgLoad.AttrPtr) and a function that unmaps it.
func StraddlingAttr(mapped int) (uintptr, func(), error) {
	page := os.Getpagesize()
	b, err := unix.Mmap(-1, 0, 2*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, nil, err
	}
	binary.NativeEndian.PutUint32(b[page-mapped:], socketFilterType)
	base := uintptr(unsafe.Pointer(&b[0]))
	// Raw munmap: unix.Munmap only takes whole mappings it made.
	if _, _, errno := unix.Syscall(unix.SYS_MUNMAP, base+uintptr(page), uintptr(page), 0); errno != 0 {
		unix.Munmap(b)
		return 0, nil, errno
	}
	return base + uintptr(page-mapped), func() { unix.Syscall(unix.SYS_MUNMAP, base, uintptr(page), 0) }, nil
}
