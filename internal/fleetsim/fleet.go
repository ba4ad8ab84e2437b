package fleetsim

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/otel"
	"github.com/verifierlog/exporter/tracer"
)

// Job is the scrape job of the fleet's targets.
const Job = "fleetsim"

// Fleet serves every node of a plan on its own path of one HTTP server
// and keeps the file_sd targets file listing the nodes present.
type Fleet struct {
	plan    Plan
	hold    time.Duration
	nodes   []*node
	addr    string
	srv     *http.Server
	sdPath  string
	sdMu    sync.Mutex
	present map[int]bool
}

// node is one simulated exporter: its Pipeline and Recorder (replaced at a
// restart), its fake CLOCK_MONOTONIC, and the handler its path serves
// (nil: not present, 404).
type node struct {
	id      int
	handler atomic.Pointer[http.Handler]
	mu      sync.Mutex
	pipe    *otel.Pipeline
	ns      uint64 // fake CLOCK_MONOTONIC, advanced by each attempt
}

// NewFleet listens on a free loopback port and serves plan's nodes, none
// of them present yet; dir receives the file_sd targets file.
func NewFleet(plan Plan, hold time.Duration, dir string) (*Fleet, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &Fleet{plan: plan, hold: hold, addr: l.Addr().String(), sdPath: filepath.Join(dir, "targets.json"), present: map[int]bool{}}
	for _, np := range plan.Nodes {
		f.nodes = append(f.nodes, &node{id: np.ID, ns: uint64(1000+np.ID) * uint64(time.Second)})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /node/{id}/metrics", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		if err != nil || id < 0 || id >= len(f.nodes) {
			http.NotFound(w, r)
			return
		}
		h := f.nodes[id].handler.Load()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		(*h).ServeHTTP(w, r)
	})
	f.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = f.srv.Serve(l) }()
	if err := f.writeTargets(); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// SDPath is the file_sd targets file.
func (f *Fleet) SDPath() string { return f.sdPath }

// Close stops the HTTP server.
func (f *Fleet) Close() error { return f.srv.Close() }

// Present is the number of nodes whose targets are listed.
func (f *Fleet) Present() int {
	f.sdMu.Lock()
	defer f.sdMu.Unlock()
	return len(f.present)
}

// StartInitial starts the exporters of the nodes present from the start,
// with nothing loaded yet, and lists their targets.
func (f *Fleet) StartInitial() error {
	for _, np := range f.plan.Nodes {
		if np.Join == 0 {
			if err := f.nodes[np.ID].start(f.hold); err != nil {
				return err
			}
			f.setPresent(np.ID, true)
		}
	}
	return f.writeTargets()
}

// Run plays the plan's steps, joins and leaves at their times after boot,
// and returns once the last has been played (or ctx is done).
func (f *Fleet) Run(ctx context.Context, boot time.Time) error {
	type moment struct {
		joins, leaves []int
		steps         []struct {
			node int
			step Step
		}
	}
	at := map[time.Duration]*moment{}
	get := func(d time.Duration) *moment {
		if at[d] == nil {
			at[d] = &moment{}
		}
		return at[d]
	}
	for _, np := range f.plan.Nodes {
		if np.Join > 0 {
			get(np.Join).joins = append(get(np.Join).joins, np.ID)
		}
		if np.Leave > 0 {
			get(np.Leave).leaves = append(get(np.Leave).leaves, np.ID)
		}
		for _, s := range np.Steps {
			m := get(s.At)
			m.steps = append(m.steps, struct {
				node int
				step Step
			}{np.ID, s})
		}
	}
	var times []time.Duration
	for d := range at {
		times = append(times, d)
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	for _, d := range times {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(boot.Add(d))):
		}
		m := at[d]
		// A joining node's exporter starts and its loaders load before
		// Prometheus has discovered it: its first scrape already finds
		// the loads, which the new-series hold shows as zero.
		for _, id := range m.joins {
			if err := f.nodes[id].start(f.hold); err != nil {
				return err
			}
		}
		for _, s := range m.steps {
			n := f.nodes[s.node]
			if s.step.Restart {
				if err := n.start(f.hold); err != nil {
					return err
				}
			}
			for _, l := range s.step.Loads {
				n.load(l)
			}
		}
		for _, id := range m.joins {
			f.setPresent(id, true)
		}
		for _, id := range m.leaves {
			f.setPresent(id, false)
			f.nodes[id].handler.Store(nil)
		}
		if len(m.joins)+len(m.leaves) > 0 {
			if err := f.writeTargets(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f *Fleet) setPresent(id int, on bool) {
	f.sdMu.Lock()
	defer f.sdMu.Unlock()
	if on {
		f.present[id] = true
	} else {
		delete(f.present, id)
	}
}

// writeTargets replaces the file_sd file (by a rename, which file_sd's
// watch sees as one change) with a target per present node: the fleet's
// address, the node's path, and instance="node-<id>".
func (f *Fleet) writeTargets() error {
	f.sdMu.Lock()
	defer f.sdMu.Unlock()
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	groups := []group{}
	ids := make([]int, 0, len(f.present))
	for id := range f.present {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		groups = append(groups, group{Targets: []string{f.addr}, Labels: map[string]string{
			"__metrics_path__": fmt.Sprintf("/node/%d/metrics", id),
			"instance":         fmt.Sprintf("node-%d", id),
		}})
	}
	b, err := json.Marshal(groups)
	if err != nil {
		return err
	}
	tmp := f.sdPath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, f.sdPath)
}

// start (re)starts the node's exporter: a new Recorder with the hold, a
// Pipeline recording into it, and a registry serving it.
func (n *node) start(hold time.Duration) error {
	rec := otel.NewRecorder()
	rec.SetNewSeriesHold(hold)
	reg := prometheus.NewRegistry()
	if err := reg.Register(rec); err != nil {
		return err
	}
	p, err := otel.New(otel.Config{
		MeterProvider: noop.NewMeterProvider(),
		Recorder:      rec,
		Clock:         tracer.WallClockWithOffset(time.Duration(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano())),
		Now:           n.now,
	})
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.pipe = p
	n.mu.Unlock()
	var h http.Handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	n.handler.Store(&h)
	return nil
}

func (n *node) now() uint64 { return atomic.LoadUint64(&n.ns) }

// load feeds the Pipeline the attempts of one logical load, each 1 ms
// after the last one's end: buffers that get ENOSPC, then the one that
// holds the need.
func (n *node) load(l Load) {
	n.mu.Lock()
	defer n.mu.Unlock()
	pid := uint32(1000 + n.id*10)
	for i, name := range Loaders {
		if name == l.Loader {
			pid += uint32(i)
		}
	}
	for i, buf := range l.Buffers {
		last := i == len(l.Buffers)-1
		start := atomic.AddUint64(&n.ns, uint64(time.Millisecond))
		end := atomic.AddUint64(&n.ns, uint64(time.Millisecond)+uint64(l.Need)*10) // ~10 ns per log byte
		ev := tracer.LoadEvent{Command: tracer.CmdProgLoad, PID: pid, TID: pid, ProgType: 2, InsnCnt: 1000 + l.Need/64,
			LogLevel: 1, LogSize: buf, HasLogBuf: true, StartNs: start, EndNs: end, Ret: 7, AttachMode: tracer.AttachTracepoint}
		copy(ev.Comm[:], l.Loader)
		copy(ev.ProgName[:], l.Prog)
		if !last {
			ev.Ret = -int64(unix.ENOSPC)
		}
		switch l.Mode {
		case NeedKernel:
			ev.LogTrueSize, ev.LogTrueSizeKnown = l.Need, true
		case NeedMeasured:
			if last {
				ev.LogUsedSize = l.Need
			}
		case NeedUnknown:
			ev.LogScanFault = last
		}
		n.pipe.Handle(&ev)
	}
}
