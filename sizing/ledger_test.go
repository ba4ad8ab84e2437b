package sizing

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/tracer"
)

const ms = uint64(time.Millisecond)

var enospc = -int64(unix.ENOSPC)

// event builds a PROG_LOAD attempt of loader comm from pid.
func event(comm string, pid uint32, name string, startNs, endNs uint64, logSize uint32, ret int64) tracer.LoadEvent {
	ev := tracer.LoadEvent{Command: tracer.CmdProgLoad, PID: pid, TID: pid, ProgType: 1, InsnCnt: 100,
		LogLevel: 1, LogSize: logSize, HasLogBuf: logSize > 0, StartNs: startNs, EndNs: endNs, Ret: ret}
	copy(ev.Comm[:], comm)
	copy(ev.ProgName[:], name)
	return ev
}

func withTrueSize(ev tracer.LoadEvent, n uint32) tracer.LoadEvent {
	ev.LogTrueSize, ev.LogTrueSizeKnown = n, true
	return ev
}

// recording is a Sink that keeps copies of what it is told.
type recording struct {
	attempts []string // "loader/prog#attempt"
	ended    []Chain
}

func (r *recording) Attempt(ev *tracer.LoadEvent, _ Class, c *Chain) {
	r.attempts = append(r.attempts, fmt.Sprintf("%s/%s#%d", c.Loader, ev.ProgName, c.Attempts))
}

func (r *recording) ChainEnded(c *Chain) { r.ended = append(r.ended, *c) }

func newLedger(cfg Config) (*Ledger, *recording) {
	r := &recording{}
	return NewLedger(cfg, r), r
}

func add(l *Ledger, evs ...tracer.LoadEvent) {
	for i := range evs {
		l.Add(&evs[i])
	}
}

// A cilium/ebpf-style retry: ENOSPC at 64 KiB, then a buffer of the true
// size, is one logical load of two attempts whose need is the kernel's.
func TestRetryIsOneChainWithWhatItProved(t *testing.T) {
	l, r := newLedger(Config{})
	add(l,
		withTrueSize(event("cilium-agent", 10, "a", 0, 2*ms, 65536, enospc), 70000),
		withTrueSize(event("cilium-agent", 10, "a", 3*ms, 5*ms, 70000, 7), 70000))
	if fmt.Sprint(r.attempts) != "[cilium-agent/a#1 cilium-agent/a#2]" || len(r.ended) != 1 || l.OpenChains() != 0 {
		t.Fatalf("attempts %v, ended %d, open %d", r.attempts, len(r.ended), l.OpenChains())
	}
	c := r.ended[0]
	want := Chain{Key: ChainKey{PID: 10, Command: tracer.CmdProgLoad, ProgType: 1, ProgName: c.Key.ProgName, InsnCnt: 100},
		Loader: "cilium-agent", FirstStartNs: 0, LastEndNs: 5 * ms, Attempts: 2, FailedNs: 2 * ms, LastOK: true,
		Need: 70000, NeedSource: tracer.NeedKernel, LogRequested: true, NeedAbove: 65536, LastBuffer: 70000,
		FirstBuffer: 65536, FirstHasBuffer: true}
	if c != want {
		t.Errorf("chain\n %+v\nwant\n %+v", c, want)
	}
}

func TestChainEndsOnlyPastItsWindow(t *testing.T) {
	l, r := newLedger(Config{})
	w := uint64(DefaultChainWindow)
	add(l,
		event("l", 1, "p", 0, 10*ms, 128, enospc),
		event("l", 1, "p", 10*ms+w, 11*ms+w, 256, enospc),         // exactly one window after: same chain
		event("l", 1, "p", 11*ms+2*w+1, 12*ms+2*w+1, 512, enospc)) // one ns past: a new chain
	if len(r.ended) != 1 || r.ended[0].Attempts != 2 || r.ended[0].NeedAbove != 256 || l.OpenChains() != 1 {
		t.Fatalf("ended %+v, open %d", r.ended, l.OpenChains())
	}
	l.Sweep(12*ms + 3*w + 1) // exactly at the edge: still open
	if l.OpenChains() != 1 {
		t.Fatal("chain ended exactly at its window edge")
	}
	l.Sweep(12*ms + 3*w + 2)
	if l.OpenChains() != 0 || len(r.ended) != 2 || r.ended[1].LastOK || r.ended[1].LastErrno != "ENOSPC" {
		t.Fatalf("after the window: open %d, ended %+v", l.OpenChains(), r.ended)
	}
	if _, ok := r.ended[1].NeedAtMost(); ok {
		t.Error("a chain that never succeeded proves no upper bound")
	}
}

func TestInterleavedLoadsKeepSeparateChainsAndFlushEndsAll(t *testing.T) {
	l, r := newLedger(Config{})
	add(l,
		event("l", 1, "p", 0, 1*ms, 128, enospc),
		event("l", 2, "p", 1*ms, 2*ms, 128, enospc), // other process, same program
		event("l", 1, "q", 2*ms, 3*ms, 128, enospc), // same process, other program
		event("l", 1, "p", 3*ms, 4*ms, 4096, 5),
		event("l", 2, "p", 4*ms, 5*ms, 4096, 6))
	if len(r.ended) != 2 || l.OpenChains() != 1 {
		t.Fatalf("ended %d, open %d, want 2 and pid 1's q", len(r.ended), l.OpenChains())
	}
	for _, c := range r.ended {
		if atMost, ok := c.NeedAtMost(); c.Attempts != 2 || !ok || atMost != 4096 {
			t.Errorf("chain %+v: need at most %d (%v)", c.Key, atMost, ok)
		}
	}
	l.Flush()
	if l.OpenChains() != 0 || len(r.ended) != 3 {
		t.Fatalf("Flush left %d open, ended %d", l.OpenChains(), len(r.ended))
	}
}

func TestOpenChainsAreBounded(t *testing.T) {
	l, r := newLedger(Config{})
	for pid := range uint32(maxOpenChains + 10) {
		add(l, event("l", pid, "p", 0, 1, 128, enospc))
	}
	if l.OpenChains() != maxOpenChains || len(r.ended) != 10 {
		t.Fatalf("open %d ended %d, want the table capped at %d and the 10 past it ended at once", l.OpenChains(), len(r.ended), maxOpenChains)
	}
}

func TestLoadersAreCapped(t *testing.T) {
	l := NewLoaders(3)
	var got []string
	for _, comm := range []string{"a", "b", "", "other", "c", "a"} {
		var n tracer.Name
		copy(n[:], comm)
		got = append(got, l.Name(n))
	}
	if fmt.Sprint(got) != "[a b unnamed other other a]" || l.Len() != 3 {
		t.Errorf("names %v (%d kept)", got, l.Len())
	}
	var other tracer.Name
	copy(other[:], "other")
	if n := NewLoaders(5).Name(other); n != "comm_other" {
		t.Errorf("a loader named other is %q", n)
	}
}

func TestRecommendationsPerLoader(t *testing.T) {
	l, _ := newLedger(Config{})
	for i := range 10 {
		start := uint64(i) * 10 * ms
		add(l, withTrueSize(event("cilium-agent", 7, "p", start, start+ms, 65536, enospc), 70000),
			withTrueSize(event("cilium-agent", 7, "p", start+2*ms, start+3*ms, 70000, 3), 70000))
	}
	add(l, event("old", 8, "q", 0, ms, 4096, enospc))
	add(l, event("open", 9, "r", 0, ms, 2048, enospc))
	l.Sweep(uint64(DefaultChainWindow) + 2*ms)
	add(l, event("open", 9, "r", uint64(DefaultChainWindow)+3*ms, uint64(DefaultChainWindow)+4*ms, 8192, enospc))

	now := uint64(time.Hour)
	rec := l.Recommendations(now)
	if len(rec.Loaders) != 3 || rec.WindowSeconds != 86400 {
		t.Fatalf("report %+v", rec)
	}
	byLoader := map[string]LoaderReport{}
	for _, r := range rec.Loaders {
		byLoader[r.Loader] = r
	}
	c := byLoader["cilium-agent"]
	if c.Loads != 10 || c.NeedsKnown != 10 || c.Truncated != 10 || c.NeedMaxBytes != 70000 ||
		c.Recommended["1"] != 131072 || c.Recommended["0.99"] != 131072 || c.TypicalBufferBytes != 70000 ||
		c.FirstBufferBytes != 65536 || c.Verdict != VerdictUndersized {
		t.Errorf("cilium-agent: %+v", c)
	}
	if o := byLoader["old"]; o.UnknownNeeds != 1 || o.UnknownNeedAboveBytes != 4096 || o.Verdict != VerdictUndersized || len(o.Recommended) != 0 {
		t.Errorf("old: %+v", o)
	}
	if o := byLoader["open"]; o.Loads != 1 || o.OpenChains != 1 || o.OpenNeedAboveBytes != 8192 {
		t.Errorf("open: %+v", o)
	}
	sizes := map[string]uint64{}
	l.RecommendedSizes(now, func(command tracer.Command, loader, coverage string, bytes uint64) {
		sizes[command.String()+"/"+loader+"/"+coverage] = bytes
	})
	if fmt.Sprint(sizes) != "map[BPF_PROG_LOAD/cilium-agent/0.99:131072 BPF_PROG_LOAD/cilium-agent/1:131072]" {
		t.Errorf("recommended sizes %v", sizes)
	}
	l.Flush()
	if rec := l.Recommendations(now + uint64(25*time.Hour)); len(rec.Loaders) != 0 {
		t.Errorf("recommendations outlived the window: %+v", rec.Loaders)
	}
}

func TestOversizedVerdictSaysByHowMuch(t *testing.T) {
	if v := VerdictOf(131072, 16<<20-1, 0); v != Oversized(128) || v != "oversized by 128x" {
		t.Errorf("16 MiB for 128 KiB: %q", v)
	}
}
