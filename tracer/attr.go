package tracer

import "unsafe"

// ProgLoadAttr and BTFLoadAttr are the prefixes of union bpf_attr that the
// tracer reads, through the log's true size. bpf/attr.h declares them once;
// the BPF programs read the caller's attr through them, the decoder reads
// records with them, and the load generator builds its attrs from them.
type (
	ProgLoadAttr = verifierlogProgLoadAttr
	BTFLoadAttr  = verifierlogBtfLoadAttr
)

// The attr sizes a caller must pass for the kernel to write the log's true
// size back (offsetofend of log_true_size and btf_log_true_size).
const (
	ProgLoadAttrSize = uint32(unsafe.Sizeof(ProgLoadAttr{}))
	BTFLoadAttrSize  = uint32(unsafe.Sizeof(BTFLoadAttr{}))
)

// Where the kernel writes the log's true size back.
const (
	ProgLoadTrueSizeOffset = int(unsafe.Offsetof(ProgLoadAttr{}.LogTrueSize))
	BTFLoadTrueSizeOffset  = int(unsafe.Offsetof(BTFLoadAttr{}.BtfLogTrueSize))
)

// AttrBytes is a's memory, host-endian as the kernel reads it.
func AttrBytes[T ProgLoadAttr | BTFLoadAttr](a *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(a)), unsafe.Sizeof(*a))
}
