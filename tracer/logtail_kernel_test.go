package tracer_test

// The log tail (Options.LogTailBytes) on the running kernel: each test
// issues the load itself, so it has the buffer the kernel wrote the log
// into, and checks that the record carries exactly that log's last bytes,
// or, where the buffer holds no end of a log of the kernel's, none. Without
// the option the records are as before: no tail, the same size.

import (
	"bytes"
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

// testTailBytes is shorter than the level-2 logs below and longer than
// some level-1 logs, so that both a cut tail and a whole log are checked.
const testTailBytes = 256

// tailHarness is a harness whose tracer copies log tails. It keeps a copy
// of every record's tail (the tracer reuses its buffer) and its size in
// the ring buffer, sizes[i] for events[i].
type tailHarness struct {
	*harness
	sizes []int
}

func startTailHarness(t *testing.T, tailBytes uint32) *tailHarness {
	t.Helper()
	kerneltest.Require(t)
	opts := testOptions(t)
	opts.LogTailBytes = tailBytes
	opts.AttachGrace = time.Millisecond
	tr, err := tracer.New(opts)
	if err != nil {
		t.Fatalf("start tracer with a %d-byte log tail: %v", tailBytes, err)
	}
	h := &tailHarness{harness: &harness{tr: tr, done: make(chan error, 1)}}
	h.cond = sync.NewCond(&h.mu)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	pid := uint32(os.Getpid())
	go func() {
		h.done <- tr.Run(ctx, func(ev *tracer.LoadEvent) {
			if ev.PID != pid {
				return
			}
			e := *ev
			e.LogTail = bytes.Clone(ev.LogTail)
			size := tr.LastRecordSize()
			h.mu.Lock()
			h.events = append(h.events, e)
			h.sizes = append(h.sizes, size)
			h.cond.Broadcast()
			h.mu.Unlock()
		})
	}()
	t.Cleanup(h.stop)
	return h
}

// recordSize is the ring-buffer size of the record of the call r.
func (h *tailHarness) recordSize(t *testing.T, r loadgen.Result) int {
	t.Helper()
	h.await(t, r)
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.events {
		if matches(&h.events[i], r) {
			return h.sizes[i]
		}
	}
	t.Fatalf("no record of the call (tid %d)", r.TID)
	return 0
}

// lastBytes is what the tail of log must be: its last n bytes, or all of it.
func lastBytes(log []byte, n int) []byte {
	return log[max(0, len(log)-n):]
}

// wantTail checks that ev carries the last testTailBytes bytes of the log
// the kernel left in the caller's buffer, and that the log was long enough
// to say something.
func wantTail(t *testing.T, ev tracer.LoadEvent, r loadgen.Result) {
	t.Helper()
	if len(r.Log) == 0 {
		t.Fatalf("the kernel wrote no log (errno %v): nothing to compare", r.Errno)
	}
	want := lastBytes(r.Log, testTailBytes)
	if !bytes.Equal(ev.LogTail, want) {
		t.Errorf("log tail (%d bytes):\n%q\nwant the log's last %d bytes (of %d):\n%q",
			len(ev.LogTail), ev.LogTail, len(want), len(r.Log), want)
	}
}

func TestLogTail(t *testing.T) {
	h := startTailHarness(t, testTailBytes)

	t.Run("rejected/level1", func(t *testing.T) {
		p := loadgen.ProgLoad{Program: loadgen.Rejected, Insns: 64, Name: "vlog_tail_rej", LogLevel: loadgen.LogLevel1, LogSize: 1 << 16}
		r := loadProg(t, p)
		if r.Errno != unix.EACCES {
			t.Fatalf("kernel answered %v, want EACCES", r.Errno)
		}
		ev := checkProgRecord(t, h.harness, p, r)
		wantTail(t, ev, r)
		if size := h.recordSize(t, r); size != tracer.TailRecordSize {
			t.Errorf("record of %d bytes, want %d", size, tracer.TailRecordSize)
		}
	})

	t.Run("success/level2", func(t *testing.T) {
		p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_tail_ok", LogLevel: loadgen.LogLevel2, LogSize: 1 << 20}
		r := loadProg(t, p)
		if !r.OK() {
			t.Fatalf("load: %v", r.Errno)
		}
		ev := checkProgRecord(t, h.harness, p, r)
		if len(r.Log) <= testTailBytes {
			t.Fatalf("level-2 log of %d bytes: not longer than the tail", len(r.Log))
		}
		wantTail(t, ev, r)
	})

	t.Run("success/nolog", func(t *testing.T) {
		p := loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_tail_nolog"}
		r := loadProg(t, p)
		if !r.OK() {
			t.Fatalf("load: %v", r.Errno)
		}
		if ev := checkProgRecord(t, h.harness, p, r); ev.LogTail != nil {
			t.Errorf("a load without a log has a tail: %q", ev.LogTail)
		}
	})

	t.Run("enospc/rotating", func(t *testing.T) {
		p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_tail_rot", LogLevel: loadgen.LogLevel2, LogSize: 1024}
		r := loadProg(t, p)
		if r.Errno != unix.ENOSPC {
			t.Fatalf("kernel answered %v, want ENOSPC", r.Errno)
		}
		ev := checkProgRecord(t, h.harness, p, r)
		if !hasLogTrueSize(t) {
			// Before 6.4 the buffer holds the log's head: no tail.
			if ev.LogTail != nil {
				t.Errorf("pre-6.4 ENOSPC has a tail (the buffer holds the log's head): %q", ev.LogTail)
			}
			return
		}
		if len(r.Log) != int(p.LogSize)-1 {
			t.Fatalf("rotating log of %d bytes in a %d-byte buffer, want it full", len(r.Log), p.LogSize)
		}
		wantTail(t, ev, r)
	})

	t.Run("enospc/fixed", func(t *testing.T) {
		p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 64, Name: "vlog_tail_fix", LogLevel: loadgen.LogLevel2 | loadgen.LogLevelFixed, LogSize: 1024}
		r := loadProg(t, p)
		// BPF_LOG_FIXED came with the rotating log in 6.4; before, the
		// level is out of range and the kernel wrote no log.
		want := unix.ENOSPC
		if !hasLogTrueSize(t) {
			want = unix.EINVAL
		}
		if r.Errno != want {
			t.Fatalf("kernel answered %v, want %v", r.Errno, want)
		}
		if ev := checkProgRecord(t, h.harness, p, r); ev.LogTail != nil {
			t.Errorf("fixed-mode %v has a tail (the buffer holds the log's head, or none): %q", r.Errno, ev.LogTail)
		}
	})

	t.Run("einval/logged", func(t *testing.T) {
		p := loadgen.ProgLoad{Program: loadgen.BadJump, Name: "vlog_tail_inval", LogLevel: loadgen.LogLevel1, LogSize: 1 << 16}
		r := loadProg(t, p)
		if r.Errno != unix.EINVAL {
			t.Fatalf("kernel answered %v, want EINVAL", r.Errno)
		}
		ev := checkProgRecord(t, h.harness, p, r)
		if !hasLogTrueSize(t) {
			// Before 6.4 no log_true_size says that the log is the kernel's.
			if ev.LogTail != nil {
				t.Errorf("pre-6.4 EINVAL has a tail: %q", ev.LogTail)
			}
			return
		}
		if r.LogTrueSize != uint32(len(r.Log))+1 {
			t.Fatalf("log_true_size %d, log of %d bytes + NUL", r.LogTrueSize, len(r.Log))
		}
		wantTail(t, ev, r)
	})

	t.Run("btf", func(t *testing.T) {
		b := loadgen.BTFLoad{Types: 64, LogLevel: loadgen.LogLevel1, LogSize: 1 << 16}
		r := loadBTF(t, b)
		if !r.OK() {
			t.Fatalf("BTF load: %v", r.Errno)
		}
		ev := h.await(t, r)
		if ev.Command != tracer.CmdBTFLoad {
			t.Fatalf("command %v, want BPF_BTF_LOAD", ev.Command)
		}
		wantTail(t, ev, r)
	})
}

// TestLogTailOffKeepsTheRecord: without the option a load whose log the
// kernel left in the buffer is recorded as before, without a tail, in a
// record of the size it always had.
func TestLogTailOffKeepsTheRecord(t *testing.T) {
	h := startTailHarness(t, 0)
	p := loadgen.ProgLoad{Program: loadgen.Rejected, Insns: 64, Name: "vlog_tail_off", LogLevel: loadgen.LogLevel1, LogSize: 1 << 16}
	r := loadProg(t, p)
	if r.Errno != unix.EACCES || len(r.Log) == 0 {
		t.Fatalf("kernel answered %v with a %d-byte log, want EACCES with a log", r.Errno, len(r.Log))
	}
	ev := checkProgRecord(t, h.harness, p, r)
	if ev.LogTail != nil {
		t.Errorf("tail off, record has one: %q", ev.LogTail)
	}
	if size := h.recordSize(t, r); size != tracer.RecordSize {
		t.Errorf("tail off, record of %d bytes, want %d", size, tracer.RecordSize)
	}
}

func TestLogTailAboveTheMaximumIsRefused(t *testing.T) {
	_, err := tracer.New(tracer.Options{LogTailBytes: tracer.MaxLogTailBytes + 1})
	if err == nil {
		t.Fatalf("New accepted a %d-byte log tail", tracer.MaxLogTailBytes+1)
	}
}
