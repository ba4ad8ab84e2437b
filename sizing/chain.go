package sizing

import (
	"time"

	"github.com/verifierlog/exporter/tracer"
)

// DefaultChainWindow is how long after an attempt's end a retry still
// belongs to the same logical load.
const DefaultChainWindow = 5 * time.Second

// maxOpenChains bounds the open retry chains: past it a new chain is ended
// right after its attempt, so hostile loaders cannot grow the table.
const maxOpenChains = 1 << 16

// ChainKey identifies a logical load: one process loading the same
// program (or BTF) again.
type ChainKey struct {
	PID      uint32
	Command  tracer.Command
	ProgType uint32
	ProgName tracer.Name
	InsnCnt  uint32
}

func keyOf(ev *tracer.LoadEvent) ChainKey {
	return ChainKey{PID: ev.PID, Command: ev.Command, ProgType: ev.ProgType, ProgName: ev.ProgName, InsnCnt: ev.InsnCnt}
}

// Chain is one logical load: its attempts so far, and what they proved
// about its log's need. A Sink may read it while it is told of it, and
// must not keep it after ChainEnded: the Ledger reuses it.
type Chain struct {
	Key          ChainKey
	Loader       string
	FirstStartNs uint64
	LastEndNs    uint64
	Attempts     int
	// FailedNs is the kernel time spent in the attempts that failed.
	FailedNs uint64
	// LastOK and LastErrno are the last attempt's outcome.
	LastOK    bool
	LastErrno string
	// Need is the last known need of any attempt (NeedSource says from
	// where; tracer.NeedUnknown if no attempt knew it).
	Need       uint32
	NeedSource tracer.NeedSource
	// LogRequested: some attempt asked for a log.
	LogRequested bool
	// NeedAbove is the largest buffer that ended in ENOSPC: the need is
	// above it (0: none).
	NeedAbove uint32
	// LastBuffer is the log_size of the last attempt with a buffer.
	LastBuffer uint32
	// FirstBuffer is the log_size of the first attempt, if FirstHasBuffer:
	// the loader's default, whatever its retries pass.
	FirstBuffer    uint32
	FirstHasBuffer bool
}

func (c *Chain) add(ev *tracer.LoadEvent, class Class) {
	c.Attempts++
	if c.Attempts == 1 && ev.HasLogBuf && ev.LogLevel > 0 {
		c.FirstBuffer, c.FirstHasBuffer = ev.LogSize, true
	}
	if ev.EndNs > c.LastEndNs {
		c.LastEndNs = ev.EndNs
	}
	c.LastOK = ev.OK()
	c.LastErrno = ev.ErrnoName()
	if !c.LastOK {
		c.FailedNs += uint64(ev.Duration())
	}
	if class.LogRequested {
		c.LogRequested = true
	}
	if class.Truncated {
		c.NeedAbove = max(c.NeedAbove, ev.LogSize)
	}
	if ev.HasLogBuf {
		c.LastBuffer = ev.LogSize
	}
	if class.NeedSource != tracer.NeedUnknown {
		c.Need, c.NeedSource = class.Need, class.NeedSource
	}
}

// NeedAtMost is the buffer that proved big enough for a chain whose need
// nobody measured: the last buffer of a chain that ended in success.
func (c *Chain) NeedAtMost() (uint32, bool) {
	return c.LastBuffer, c.LastOK && c.LastBuffer > 0
}
