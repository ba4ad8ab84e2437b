package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// userfaultfd(2) ABI (linux/userfaultfd.h).
const (
	uffdAPI             = 0xaa
	uffdioAPI           = 0xc018aa3f // _IOWR(0xaa, 0x3f, struct uffdio_api)
	uffdioRegister      = 0xc020aa00 // _IOWR(0xaa, 0x00, struct uffdio_register)
	uffdioCopy          = 0xc028aa03 // _IOWR(0xaa, 0x03, struct uffdio_copy)
	uffdRegisterMissing = 1
	uffdEventPagefault  = 0x12
	uffdMsgSize         = 32
	uffdEventOffset     = 0
	uffdRegisterSize    = 32
	uffdCopySize        = 40
	uffdAPIStructSize   = 24
)

// HeldLoad is a BPF_PROG_LOAD held inside the kernel: its instructions sit
// on a page that is not there yet, registered with userfaultfd, so the
// kernel's copy of them waits until Release supplies the page. Tests use it
// to have a load in flight while something else happens (a tracer
// attaching), deterministically.
type HeldLoad struct {
	uffd  int
	page  []byte
	insns []byte
	done  chan heldResult
}

type heldResult struct {
	r   Result
	err error
}

// HoldLoad issues p with its instructions on a userfaultfd page and returns
// once the kernel is waiting for that page, inside bpf_prog_load. The
// program must fit in a page. Needs userfaultfd for kernel faults (root, or
// vm.unprivileged_userfaultfd=1).
func HoldLoad(p ProgLoad) (*HeldLoad, error) {
	insns, err := Instructions(p.Program, p.Insns)
	if err != nil {
		return nil, err
	}
	pageSize := os.Getpagesize()
	if len(insns) > pageSize {
		return nil, fmt.Errorf("program of %d bytes does not fit in a page", len(insns))
	}
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC, 0, 0)
	if errno != 0 {
		return nil, fmt.Errorf("userfaultfd: %w", errno)
	}
	h := &HeldLoad{uffd: int(fd), insns: insns, done: make(chan heldResult, 1)}
	fail := func(err error) (*HeldLoad, error) {
		h.close()
		return nil, err
	}
	api := make([]byte, uffdAPIStructSize)
	binary.NativeEndian.PutUint64(api, uffdAPI)
	if err := ioctl(h.uffd, uffdioAPI, api); err != nil {
		return fail(fmt.Errorf("UFFDIO_API: %w", err))
	}
	if h.page, err = unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fail(err)
	}
	addr := uintptr(unsafe.Pointer(&h.page[0]))
	reg := make([]byte, uffdRegisterSize)
	binary.NativeEndian.PutUint64(reg[0:], uint64(addr))
	binary.NativeEndian.PutUint64(reg[8:], uint64(pageSize))
	binary.NativeEndian.PutUint64(reg[16:], uffdRegisterMissing)
	if err := ioctl(h.uffd, uffdioRegister, reg); err != nil {
		return fail(fmt.Errorf("UFFDIO_REGISTER: %w", err))
	}

	p.InsnsAddr = addr
	go func() {
		// A thread of its own, which exits with this goroutine: per-thread
		// state the held load leaves behind (a tracer's in-flight slot whose
		// exit hook the kernel skipped) goes with it.
		runtime.LockOSThread()
		r, err := LoadProgram(p)
		h.done <- heldResult{r, err}
	}()
	msg := make([]byte, uffdMsgSize)
	for {
		n, err := unix.Read(h.uffd, msg)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n != uffdMsgSize {
			return fail(fmt.Errorf("read userfaultfd: %d bytes, %v", n, err))
		}
		break
	}
	if msg[uffdEventOffset] != uffdEventPagefault {
		return fail(fmt.Errorf("userfaultfd event %#x, want a page fault", msg[uffdEventOffset]))
	}
	return h, nil
}

// Release supplies the page, lets the load finish, and returns its result.
func (h *HeldLoad) Release() (Result, error) {
	src := make([]byte, len(h.page))
	copy(src, h.insns)
	c := make([]byte, uffdCopySize)
	binary.NativeEndian.PutUint64(c[0:], uint64(uintptr(unsafe.Pointer(&h.page[0]))))
	binary.NativeEndian.PutUint64(c[8:], uint64(uintptr(unsafe.Pointer(&src[0]))))
	binary.NativeEndian.PutUint64(c[16:], uint64(len(h.page)))
	err := ioctl(h.uffd, uffdioCopy, c)
	res := <-h.done
	h.close()
	return res.r, errors.Join(err, res.err)
}

func (h *HeldLoad) close() {
	if h.page != nil {
		unix.Munmap(h.page)
		h.page = nil
	}
	unix.Close(h.uffd)
}

func ioctl(fd int, req uintptr, arg []byte) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&arg[0]))); errno != 0 {
		return errno
	}
	return nil
}
