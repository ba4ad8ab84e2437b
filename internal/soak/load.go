package soak

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/verifierlog/exporter/internal/loadgen"
)

// The soak's loader labels: each kind of load in the mix runs under its own
// comm, so the exporter counts it under its own loader label.
const (
	CommPlain    = "vlsoak-plain"  // a 2-instruction program, log off
	CommLibbpf   = "vlsoak-libbpf" // libbpf's strategy (16 MiB, attr size 128)
	CommCilium   = "vlsoak-cilium" // cilium/ebpf's (64 KiB, then log_true_size)
	CommAya      = "vlsoak-aya"    // aya's (10 KiB, x10)
	CommRejected = "vlsoak-reject" // programs the verifier refuses (EACCES)
	CommBTF      = "vlsoak-btf"    // BTF loads: 128 B, ENOSPC, retried at log_true_size
)

// Comms lists the soak's loader labels.
var Comms = []string{CommPlain, CommLibbpf, CommCilium, CommAya, CommRejected, CommBTF}

// The mix, per thread and round.
const (
	// plainPerRound plain loads per round keep the record rate high (the
	// chains take most of a round's time).
	plainPerRound = 500
	// chainInsns gives a level-2 log of about 120 KiB (MAX_NEED of
	// `exporter recommend` over `exporter loadgen --program long --insns
	// 1500 --log-level 2`): two attempts for cilium/ebpf, three for aya,
	// one for libbpf.
	chainInsns = 1500
	// bigChainInsns gives a level-2 log past libbpf's 16 MiB - 1 buffer:
	// its ENOSPC and the retry at twice that (TestShortSoakPasses checks
	// that libbpf's loads retried). The verifier works long on it, so each
	// thread makes one only every bigChainEvery.
	bigChainInsns = 240_000
	bigChainEvery = 30 * time.Second
	// rejectedShapes distinct lengths of rejected programs: each is its own
	// chain, which fails and ends when the chain window passes (the
	// exporter's sweep), not on success.
	rejectedShapes = 512
)

// counts are the soak's loads and attempts per loader label.
type counts map[string]*count

type count struct {
	loads    atomic.Uint64 // logical loads (one Imitate, one BTF load and its retry)
	attempts atomic.Uint64 // bpf(2) calls, EAGAIN retries included
}

func newCounts() counts {
	c := counts{}
	for _, comm := range Comms {
		c[comm] = new(count)
	}
	return c
}

// add counts one logical load made of the attempts rs.
func (c counts) add(comm string, rs ...loadgen.Result) {
	n := uint64(0)
	for _, r := range rs {
		n += 1 + uint64(r.EAGAINRetries)
	}
	c[comm].loads.Add(1)
	c[comm].attempts.Add(n)
}

// attempts is the attempts issued so far, all loaders.
func (c counts) attempts() uint64 {
	n := uint64(0)
	for _, x := range c {
		n += x.attempts.Load()
	}
	return n
}

// worker is one load thread.
type worker struct {
	id      int
	counts  counts
	round   int
	nextBig time.Time
}

// name is the worker's prog_name for a kind of load: threads do not share
// chains.
func (w *worker) name(kind string) string { return fmt.Sprintf("vs%d_%s", w.id, kind) }

// run issues rounds of the mix until ctx ends.
func (w *worker) run(ctx context.Context) error {
	for ; ctx.Err() == nil; w.round++ {
		if err := w.mix(); err != nil {
			return err
		}
	}
	return nil
}

// mix issues one round: plain loads, a retry chain per imitated loader, a
// rejected program, a BTF load with its retry, and now and then libbpf's
// big chain.
func (w *worker) mix() error {
	for range plainPerRound {
		r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Valid, Name: w.name("plain"), Comm: CommPlain})
		if err != nil {
			return err
		}
		w.counts.add(CommPlain, r)
	}
	imitate := func(l loadgen.Loader, comm, kind string, insns int) error {
		rs, err := loadgen.Imitate(l, loadgen.ProgLoad{Program: loadgen.LongLog, Insns: insns, LogLevel: loadgen.LogLevel2, Name: w.name(kind), Comm: comm})
		if err != nil {
			return err
		}
		w.counts.add(comm, rs...)
		return nil
	}
	if err := imitate(loadgen.Libbpf, CommLibbpf, "libbpf", chainInsns); err != nil {
		return err
	}
	if err := imitate(loadgen.CiliumEBPF, CommCilium, "cilium", chainInsns); err != nil {
		return err
	}
	if err := imitate(loadgen.Aya, CommAya, "aya", chainInsns); err != nil {
		return err
	}
	r, err := loadgen.LoadProgram(loadgen.ProgLoad{Program: loadgen.Rejected, Insns: 1 + w.round%rejectedShapes,
		LogLevel: loadgen.LogLevel1, LogSize: 64 << 10, Name: w.name("reject"), Comm: CommRejected})
	if err != nil {
		return err
	}
	w.counts.add(CommRejected, r)
	if err := w.btf(); err != nil {
		return err
	}
	if now := time.Now(); !now.Before(w.nextBig) {
		w.nextBig = now.Add(bigChainEvery)
		return imitate(loadgen.Libbpf, CommLibbpf, "libbpf", bigChainInsns)
	}
	return nil
}

// btf loads a BTF blob with a 128-byte log buffer, which is too small, and
// retries with the kernel's btf_log_true_size (64 KiB where it gave none).
func (w *worker) btf() error {
	b := loadgen.BTFLoad{LogLevel: loadgen.LogLevel1, LogSize: 128, Comm: CommBTF}
	first, err := loadgen.LoadBTF(b)
	if err != nil {
		return err
	}
	if first.Errno != syscall.ENOSPC {
		w.counts.add(CommBTF, first)
		return nil
	}
	b.LogSize = 64 << 10
	if first.LogTrueSize > 128 {
		b.LogSize = first.LogTrueSize
	}
	retry, err := loadgen.LoadBTF(b)
	if err != nil {
		return err
	}
	w.counts.add(CommBTF, first, retry)
	return nil
}
