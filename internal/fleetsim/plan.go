package fleetsim

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sort"
	"time"
)

// The simulated loaders. Their needs are chosen so that no need falls in a
// power-of-two bucket that a well-known default lies strictly inside
// ((8, 16] KiB: aya's 10 KiB; (512 KiB, 1 MiB]: OBI's 640 KiB and
// bpftrace's 1,000,000; (8, 16] MiB: libbpf's 16 MiB - 1), so that every
// default's truncated fraction is exact from the buckets too.
const (
	// LoaderLibbpf is libbpf-like: needs 5-8 KiB or 16-400 KiB, around a
	// per-node scale, with libbpf's 16 MiB - 1 buffer.
	LoaderLibbpf = "libbpf-agent"
	// LoaderCilium is Cilium-like: needs of 1-6 MiB, a 4 MiB (on some
	// nodes 2 MiB) first buffer doubled after each ENOSPC.
	LoaderCilium = "cilium-agent"
	// LoaderTiny loads small programs (needs below 4 KiB) with a 64 KiB
	// buffer (4 KiB on some nodes).
	LoaderTiny = "tiny-loader"
)

// Loaders are the simulated loaders, in the order of their PIDs.
var Loaders = []string{LoaderLibbpf, LoaderCilium, LoaderTiny}

// NeedMode is what a load's events tell of its need.
type NeedMode uint8

const (
	// NeedKernel: every attempt carries log_true_size (kernel 6.4+).
	NeedKernel NeedMode = iota
	// NeedMeasured: no log_true_size; the successful attempt's log was
	// measured (LogUsedSize).
	NeedMeasured
	// NeedUnknown: no log_true_size, and the log could not be measured
	// (a scan fault): the exporter counts an unknown need.
	NeedUnknown
)

// Load is one logical load: one program loaded with buffers that double
// after each ENOSPC until the last, which holds the need and succeeds.
type Load struct {
	Loader  string
	Prog    string
	Need    uint32
	Mode    NeedMode
	Buffers []uint32 // log_size of each attempt; all but the last get ENOSPC
}

// Step is what a node does at one moment of the run: an exporter restart
// (its Recorder and Pipeline replaced, the loaders then loading again, as
// at an agent's boot) and/or loads.
type Step struct {
	At      time.Duration // after the fleet's boot
	Restart bool
	Loads   []Load
}

// NodePlan is one node's life in the window.
type NodePlan struct {
	ID int
	// Join is when the node's target appears and its exporter starts
	// (after the boot; 0: present from the start).
	Join time.Duration
	// Leave is when its target is removed (0: present to the end).
	Leave time.Duration
	Steps []Step
}

// Timeline is the plan's schedule, relative to the boot, the moment the
// initial nodes' loaders first load (every initial target has been scraped
// before it, so every series starts within the window at zero).
type Timeline struct {
	Scrape time.Duration // scrape interval
	Hold   time.Duration // the Recorder's new-series hold
	// Wave: restarts, joins and further loads.
	Wave time.Duration
	// Leave: the leaving nodes' targets are removed.
	Leave time.Duration
	// End: the evaluation time of the fleet report.
	End time.Duration
}

// NewTimeline spaces the events so that every load is visible (past the
// hold, and past the discovery of a joining target, whose first scrape
// the hold must wait for) a few scrape intervals before the next event
// that depends on it: a restart, a leave, the end.
func NewTimeline(scrape, hold time.Duration) Timeline {
	margin := 3 * scrape
	tl := Timeline{Scrape: scrape, Hold: hold}
	tl.Wave = hold + margin
	tl.Leave = tl.Wave + hold + margin
	tl.End = tl.Leave + margin
	return tl
}

// Plan is the whole fleet's life.
type Plan struct {
	Timeline Timeline
	Nodes    []NodePlan
}

// Node roles, by id. Every node runs LoaderLibbpf; every third also
// Cilium, every second the tiny loader; one in ten has a kernel without
// log_true_size. At the wave, one node in 20 joins, 3 in 20 restart their
// exporter and 2 in 5 load new programs; at the leave, one in 20 leaves.
func joins(id int) bool          { return id%20 == 3 }
func leaves(id int) bool         { return id%20 == 11 }
func restarts(id int) bool       { return id%10 == 5 || id%20 == 9 }
func extra(id int) bool          { return id%5 == 1 || id%5 == 2 }
func oldKernel(id int) bool      { return id%10 == 6 }
func runsCilium(id int) bool     { return id%3 == 0 }
func runsTiny(id int) bool       { return id%2 == 0 }
func smallCiliumBuf(id int) bool { return id%4 == 0 }

// NewPlan makes the plan of n nodes, the same for the same n and seed.
func NewPlan(n int, tl Timeline, seed uint64) Plan {
	p := Plan{Timeline: tl}
	for id := range n {
		rng := rand.New(rand.NewPCG(seed, uint64(id)))
		np := NodePlan{ID: id}
		boot := Step{At: 0}
		if joins(id) {
			np.Join = tl.Wave
			boot.At = tl.Wave
		}
		if leaves(id) {
			np.Leave = tl.Leave
		}
		mode := NeedKernel
		if oldKernel(id) {
			mode = NeedMeasured
		}
		g := nodeGen{id: id, rng: rng, mode: mode,
			libbpfScale: 16<<10 + rng.Uint32N(184<<10),
			ciliumScale: 1536<<10 + rng.Uint32N(3<<20),
		}
		// Up to 3 programs per loader, 2 on a joining node: a restarted
		// node loads them twice, a joiner's series are the shortest, and
		// RoundingBound must stay below 0.5.
		most := 3
		if np.Join > 0 {
			most = 2
		}
		progs := map[string]int{LoaderLibbpf: 1 + rng.IntN(most)}
		if runsCilium(id) {
			progs[LoaderCilium] = 1 + rng.IntN(most)
		}
		if runsTiny(id) {
			progs[LoaderTiny] = 1 + rng.IntN(most)
		}
		// The boot programs: loaded at the boot (or join), and again
		// after a restart, with the same needs.
		var bootLoads []Load
		for _, l := range Loaders {
			for i := range progs[l] {
				bootLoads = append(bootLoads, g.load(l, fmt.Sprintf("%s_%d", progName(l), i)))
			}
		}
		boot.Loads = bootLoads
		np.Steps = append(np.Steps, boot)
		switch {
		case np.Join > 0: // joiners only boot
		case restarts(id):
			np.Steps = append(np.Steps, Step{At: tl.Wave, Restart: true, Loads: bootLoads})
		case extra(id):
			// A reload of one of its loaders' programs, new versions with
			// new needs.
			l := LoaderLibbpf
			if runsCilium(id) && rng.IntN(2) == 0 {
				l = LoaderCilium
			}
			var loads []Load
			for i := range 1 + rng.IntN(2) {
				loads = append(loads, g.load(l, fmt.Sprintf("%s_v2_%d", progName(l), i)))
			}
			np.Steps = append(np.Steps, Step{At: tl.Wave, Loads: loads})
		}
		p.Nodes = append(p.Nodes, np)
	}
	return p
}

func progName(loader string) string {
	switch loader {
	case LoaderLibbpf:
		return "kprobe"
	case LoaderCilium:
		return "tail_call"
	}
	return "filter"
}

// nodeGen draws one node's needs from its own distributions.
type nodeGen struct {
	id                       int
	rng                      *rand.Rand
	mode                     NeedMode
	libbpfScale, ciliumScale uint32
	tinyLoads                int
}

func (g *nodeGen) load(loader, prog string) Load {
	l := Load{Loader: loader, Prog: prog, Mode: g.mode}
	var first uint32
	switch loader {
	case LoaderLibbpf:
		if g.rng.IntN(5) == 0 {
			l.Need = 5<<10 + g.rng.Uint32N(3<<10+1) // 5-8 KiB
		} else {
			s := g.libbpfScale
			l.Need = min(max(s/2+g.rng.Uint32N(s+s/2), 16<<10+1), 400<<10)
		}
		first = 1<<24 - 1
	case LoaderCilium:
		s := g.ciliumScale
		l.Need = min(max(s-512<<10+g.rng.Uint32N(2<<20), 1<<20+1), 6<<20)
		first = 4 << 20
		if smallCiliumBuf(g.id) {
			first = 2 << 20
		}
	case LoaderTiny:
		l.Need = 200 + g.rng.Uint32N(3800)
		first = 64 << 10
		if g.id%7 == 0 {
			first = 4 << 10
		}
		// On a kernel without log_true_size, the tiny loader's first
		// program's log cannot be measured: an unknown need.
		if g.mode != NeedKernel && g.tinyLoads == 0 {
			l.Mode = NeedUnknown
		}
		g.tinyLoads++
	}
	for b := first; ; b *= 2 {
		l.Buffers = append(l.Buffers, b)
		if b >= l.Need {
			break
		}
	}
	return l
}

// Sizes are counted by power-of-two class as the exporter's buckets do:
// class 0 holds (0, 128], class i (2^(i+6), 2^(i+7)], up to 1 GiB.
const numClasses = 30 - 7 + 2

func classOf(n uint32) int {
	if n <= 128 {
		return 0
	}
	return min(bits.Len32(n-1)-7, numClasses-1)
}

func classUpper(i int) uint64 { return 1 << (i + 7) }

func classLower(i int) uint64 {
	if i == 0 {
		return 0
	}
	return 1 << (i + 6)
}

// Truth is what the plan did, per loader, over the whole window: the
// figures fleet.Query must report, computed from the plan's exact needs
// and buffers, not from any exporter code.
type Truth struct {
	Nodes   int
	Loaders map[string]*LoaderTruth
}

// LoaderTruth is one loader's truth.
type LoaderTruth struct {
	Loads, NeedsKnown, Truncated, Unknown uint64
	Needs                                 []uint32 // every known need, sorted
	needClasses                           [numClasses]uint64
	bufferClasses                         [numClasses]uint64
}

// Truth adds up the plan. Every load of the plan lies in the window.
func (p Plan) Truth() Truth {
	t := Truth{Nodes: len(p.Nodes), Loaders: map[string]*LoaderTruth{}}
	for _, n := range p.Nodes {
		for _, s := range n.Steps {
			for _, l := range s.Loads {
				lt := t.Loaders[l.Loader]
				if lt == nil {
					lt = &LoaderTruth{}
					t.Loaders[l.Loader] = lt
				}
				lt.Loads++
				lt.Truncated += uint64(len(l.Buffers) - 1)
				for _, b := range l.Buffers {
					lt.bufferClasses[classOf(b)]++
				}
				if l.Mode == NeedUnknown {
					lt.Unknown++
					continue
				}
				lt.NeedsKnown++
				lt.Needs = append(lt.Needs, l.Need)
				lt.needClasses[classOf(l.Need)]++
			}
		}
	}
	for _, lt := range t.Loaders {
		sort.Slice(lt.Needs, func(i, j int) bool { return lt.Needs[i] < lt.Needs[j] })
	}
	return t
}

// Quantile is the smallest power of two (at least 128) that holds
// fraction of the known needs.
func (lt *LoaderTruth) Quantile(fraction float64) uint64 {
	if len(lt.Needs) == 0 {
		return 0
	}
	k := int(ceilMul(len(lt.Needs), fraction))
	return classUpper(classOf(lt.Needs[max(k, 1)-1]))
}

// ceilMul is ceil(n * f), as sizing computes it.
func ceilMul(n int, f float64) float64 {
	x := float64(n) * f
	if c := float64(int(x)); c < x {
		return c + 1
	}
	return x
}

// MaxNeedBucket is the (above, at most] bucket of the largest need.
func (lt *LoaderTruth) MaxNeedBucket() (above, atMost uint64) {
	if len(lt.Needs) == 0 {
		return 0, 0
	}
	c := classOf(lt.Needs[len(lt.Needs)-1])
	return classLower(c), classUpper(c)
}

// TypicalBufferBucket is the bucket most attempts' buffers fell in (the
// larger of a tie).
func (lt *LoaderTruth) TypicalBufferBucket() (above, atMost uint64) {
	best := -1
	for i, n := range lt.bufferClasses {
		if n > 0 && (best < 0 || n >= lt.bufferClasses[best]) {
			best = i
		}
	}
	if best < 0 {
		return 0, 0
	}
	return classLower(best), classUpper(best)
}

// TruncatedFraction is the share of known needs above size.
func (lt *LoaderTruth) TruncatedFraction(size uint32) float64 {
	if len(lt.Needs) == 0 {
		return 0
	}
	i := sort.Search(len(lt.Needs), func(i int) bool { return lt.Needs[i] > size })
	return float64(len(lt.Needs)-i) / float64(len(lt.Needs))
}

// Straddles reports whether a known need lies in the bucket that size is
// strictly inside, so that the buckets cannot tell whether size held it.
func (lt *LoaderTruth) Straddles(size uint32) bool {
	c := classOf(size)
	if uint64(size) == classUpper(c) {
		return false
	}
	return lt.needClasses[c] > 0
}

// AvgWaste is the mean of size - need over the known needs size held, and
// false if it held none.
func (lt *LoaderTruth) AvgWaste(size uint32) (float64, bool) {
	var sum float64
	var held int
	for _, n := range lt.Needs {
		if n <= size {
			sum += float64(size - n)
			held++
		}
	}
	if held == 0 {
		return 0, false
	}
	return sum / float64(held), true
}

// RoundingBound is the largest error the window's extrapolation can add
// to one series' count of loads, of needs in a bucket or of ENOSPC
// attempts, in counts: increase() stretches a series' rise by up to one
// scrape interval at its end, and a histogram's by half an interval more
// at its start (a native histogram's first sample is not taken as its
// zero point, unlike a counter's), over the series' sampled span.
// Per-series round() is exact while this stays below 0.5. A series' span
// starts at its node's first scrape (up to 5 s of discovery and an
// interval after a join) and ends at its leave or the end. (The buffers'
// counts, whose bucket of most attempts is the typical buffer, may be off
// by one per series: they count attempts, retries included.)
func (p Plan) RoundingBound() float64 {
	var worst float64
	for _, n := range p.Nodes {
		// A loader's ENOSPC counter is born with its first truncation,
		// maybe at a wave, and its span is shorter than its node's.
		loads, enospc := map[string]int{}, map[string]int{}
		born := map[string]time.Duration{}
		for _, s := range n.Steps {
			for _, l := range s.Loads {
				loads[l.Loader]++
				if len(l.Buffers) > 1 && enospc[l.Loader] == 0 {
					born[l.Loader] = s.At
				}
				enospc[l.Loader] += len(l.Buffers) - 1
			}
		}
		for _, c := range loads {
			worst = max(worst, float64(c)*p.stretch(n, 0)*3/2)
		}
		for l, c := range enospc {
			worst = max(worst, float64(c)*p.stretch(n, born[l]))
		}
	}
	return worst
}

// MaxStretch is the largest relative error the window's extrapolation can
// give a histogram's increase(): the bound on the error of a histogram
// sum's increase, which cannot be rounded, and so of the mean need the
// fleet report's AvgWasteBytes derives from it.
func (p Plan) MaxStretch() float64 {
	var worst float64
	for _, n := range p.Nodes {
		worst = max(worst, p.stretch(n, 0)*3/2)
	}
	return worst
}

// stretch is a scrape interval relative to the sampled span of a series of
// node n born at born.
func (p Plan) stretch(n NodePlan, born time.Duration) float64 {
	tl := p.Timeline
	from := born + tl.Scrape
	if n.Join > 0 {
		from = n.Join + 5*time.Second + 2*tl.Scrape
	}
	to := tl.End
	if n.Leave > 0 {
		to = n.Leave
	}
	return float64(tl.Scrape) / float64(to-from)
}
