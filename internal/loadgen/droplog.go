package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// LoadDroppingLogHead issues p with a log buffer whose first page is gone
// again by the time the load returns: the buffer's second page is
// registered with userfaultfd, so the kernel's log writes wait there once
// the first page is full; the first page is then dropped (MADV_DONTNEED)
// before the second is supplied. The kernel never writes the first page
// again (a log that fits is written front to back), so the log is intact
// but for its first page, which reads as absent to anything that cannot
// fault it back in, as a tracer's probe reads. dropped reports whether the
// log reached the second page, so that the first was dropped. p's log must
// be longer than a page. Needs userfaultfd for kernel faults (root, or
// vm.unprivileged_userfaultfd=1).
func LoadDroppingLogHead(p ProgLoad) (r Result, dropped bool, err error) {
	pageSize := os.Getpagesize()
	if p.LogSize < uint32(2*pageSize) {
		return Result{}, false, fmt.Errorf("log buffer of %d bytes: want at least two pages", p.LogSize)
	}
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if errno != 0 {
		return Result{}, false, fmt.Errorf("userfaultfd: %w", errno)
	}
	defer unix.Close(int(fd))
	uffd := int(fd)
	api := make([]byte, uffdAPIStructSize)
	binary.NativeEndian.PutUint64(api, uffdAPI)
	if err := ioctl(uffd, uffdioAPI, api); err != nil {
		return Result{}, false, fmt.Errorf("UFFDIO_API: %w", err)
	}
	buf, err := unix.Mmap(-1, 0, int(p.LogSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return Result{}, false, err
	}
	defer unix.Munmap(buf)
	second := uintptr(unsafe.Pointer(&buf[pageSize]))
	reg := make([]byte, uffdRegisterSize)
	binary.NativeEndian.PutUint64(reg[0:], uint64(second))
	binary.NativeEndian.PutUint64(reg[8:], uint64(pageSize))
	binary.NativeEndian.PutUint64(reg[16:], uffdRegisterMissing)
	if err := ioctl(uffd, uffdioRegister, reg); err != nil {
		return Result{}, false, fmt.Errorf("UFFDIO_REGISTER: %w", err)
	}

	p.LogBufAddr = uintptr(unsafe.Pointer(&buf[0]))
	p.NoLogBuf = false
	done := make(chan heldResult, 1)
	go func() {
		runtime.LockOSThread()
		r, err := LoadProgram(p)
		done <- heldResult{r, err}
	}()
	msg := make([]byte, uffdMsgSize)
	for {
		select {
		case res := <-done:
			res.r.Log = cString(buf)
			return res.r, dropped, res.err
		default:
		}
		n, err := unix.Read(uffd, msg)
		if err == unix.EAGAIN || err == unix.EINTR {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil || n != uffdMsgSize || msg[uffdEventOffset] != uffdEventPagefault {
			return Result{}, false, errors.Join(fmt.Errorf("read userfaultfd: %d bytes, event %#x", n, msg[uffdEventOffset]), err)
		}
		if err := unix.Madvise(buf[:pageSize], unix.MADV_DONTNEED); err != nil {
			return Result{}, false, fmt.Errorf("drop the log's first page: %w", err)
		}
		dropped = true
		zero := make([]byte, pageSize)
		c := make([]byte, uffdCopySize)
		binary.NativeEndian.PutUint64(c[0:], uint64(second))
		binary.NativeEndian.PutUint64(c[8:], uint64(uintptr(unsafe.Pointer(&zero[0]))))
		binary.NativeEndian.PutUint64(c[16:], uint64(pageSize))
		if err := ioctl(uffd, uffdioCopy, c); err != nil {
			return Result{}, false, fmt.Errorf("UFFDIO_COPY: %w", err)
		}
	}
}
