package loadgen

import (
	"fmt"
	"syscall"
)

// Loader is a well-known loader's verifier-log buffer strategy.
type Loader string

// The well-known loaders' strategies, as their authors ship them.
const (
	// Libbpf is libbpf 1.1 (Debian 12's bpftool): a 16,777,215-byte buffer,
	// attr size 128 (so no log_true_size), doubling on ENOSPC.
	Libbpf Loader = "libbpf"
	// CiliumEBPF is cilium/ebpf: 64 KiB first, then the kernel's
	// log_true_size (doubling where the kernel gives none).
	CiliumEBPF Loader = "cilium-ebpf"
	// Aya starts at 10 KiB and multiplies by ten up to 16 MiB.
	Aya Loader = "aya"
)

const libbpfLogSize = 1<<24 - 1 // UINT32_MAX >> 8

// Imitate loads p the way loader does, retrying on ENOSPC as it would, and
// returns every attempt. p's LogSize and AttrSize are the loader's.
func Imitate(loader Loader, p ProgLoad) ([]Result, error) {
	if p.LogLevel == 0 {
		p.LogLevel = LogLevel1
	}
	var next func(prev Result, size uint32) (uint32, bool)
	switch loader {
	case Libbpf:
		p.LogSize, p.AttrSize = libbpfLogSize, 128
		next = func(_ Result, size uint32) (uint32, bool) { return size * 2, size < 1<<30 }
	case CiliumEBPF:
		p.LogSize, p.AttrSize = 64<<10, ProgLoadAttrSize
		next = func(prev Result, size uint32) (uint32, bool) {
			if prev.LogTrueSize > size {
				return prev.LogTrueSize, true
			}
			return size * 2, size < 1<<30
		}
	case Aya:
		p.LogSize, p.AttrSize = 10<<10, ProgLoadAttrSize
		next = func(_ Result, size uint32) (uint32, bool) {
			return min(size*10, 16<<20), size < 16<<20
		}
	default:
		return nil, fmt.Errorf("unknown loader %q (want libbpf, cilium-ebpf or aya)", loader)
	}
	var out []Result
	for range 12 {
		r, err := LoadProgram(p)
		if err != nil {
			return out, err
		}
		out = append(out, r)
		if r.Errno != syscall.ENOSPC {
			return out, nil
		}
		size, more := next(r, p.LogSize)
		if !more {
			return out, nil
		}
		p.LogSize = size
	}
	return out, nil
}
