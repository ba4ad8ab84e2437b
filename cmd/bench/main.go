// Command bench measures the exporter's cost on this node and writes
// BENCHMARKS.md: syscall costs with no tracer, with empty programs on the
// same hooks (the floor) and with the exporter, in alternating rounds; the
// user-space pipeline's per-event cost (go test -bench); and a load storm
// against the exporter binary (records seen vs loads issued, lost events,
// CPU, RSS); and the footprint: series and bytes per scrape of /metrics, and
// RSS under the storm with OTLP push off and on. Sections of the file it
// does not generate (another's, such as "## Fleet") are kept. Run as root
// from the repository root:
//
//	go run ./cmd/bench -o BENCHMARKS.md
//	go run ./cmd/bench -only footprint -o BENCHMARKS.md   # only the Footprint section
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/bench"
	"github.com/verifierlog/exporter/tracer"
)

func main() {
	out := flag.String("o", "", "write the report here (default: stdout)")
	loads := flag.Int("loads", 40, "times the syscall benchmark loads every setup afresh")
	rounds := flag.Int("rounds", 6, "alternating rounds of the syscall benchmark per loading")
	storm := flag.Duration("storm", 10*time.Second, "length of the load storm")
	attach := flag.String("attach", "auto", "attach mode to measure (auto: what the exporter would choose here)")
	only := flag.String("only", "", "footprint: measure only the footprint (series, bytes per scrape, RSS with OTLP push off and on) and replace only that section of -o")
	flag.IntVar(&fp.stormRuns, "footprint-storms", 3, "storms of each kind (OTLP push off, on) in the footprint's RSS comparison")
	flag.StringVar(&fp.profiles, "heap-profiles", "", "write the exporter's heap profile after each footprint storm into this directory")
	flag.Parse()
	var err error
	switch *only {
	case "":
		err = run(*out, *loads, *rounds, *storm, *attach)
	case "footprint":
		err = runFootprint(*out, *storm, *attach)
	default:
		err = fmt.Errorf("-only %q: want footprint", *only)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// statsLoads is how many loadings the BPF-statistics figures are the
// median of: one loading's figure can be off by tens of ns.
const statsLoads = 9

// scanLoads is how many loads of each size the scan's cost is the median of.
const scanLoads = 15

func run(out string, loads, rounds int, stormFor time.Duration, attach string) error {
	mode, err := resolveMode(attach)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: attach mode %s; %d loadings of %d rounds\n", mode, loads, rounds)
	sys, switching, err := bench.Syscalls(mode, loads, rounds, os.Stderr)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "bench: time in BPF programs (kernel BPF stats)")
	progTimes, err := bench.ProgramTimes(mode, statsLoads)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "bench: the log scan's cost (kernel BPF stats)")
	scans, err := bench.ScanCosts(mode, scanLoads)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "bench: pipeline benchmarks (go test -bench)")
	pipeline, err := goBench()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "vlbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := buildExporter(dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: load storm, %v on %d threads\n", stormFor, runtime.NumCPU())
	st, err := bench.Storm(bin, string(mode), runtime.NumCPU(), stormFor)
	if err != nil {
		return err
	}

	footprint, err := measureFootprint(string(mode), stormFor)
	if err != nil {
		return err
	}

	var b strings.Builder
	report(&b, mode, loads, rounds, sys, switching, progTimes, scans, pipeline, st)
	b.WriteString("\n" + footprint)
	if out == "" {
		_, err = os.Stdout.WriteString(b.String())
		return err
	}
	// Sections others write into the file (not generated here) stay.
	old, err := os.ReadFile(out)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.WriteFile(out, []byte(keepSections(b.String(), string(old))), 0o644)
}

// buildExporter builds the exporter binary into dir.
func buildExporter(dir string) (string, error) {
	bin := filepath.Join(dir, "exporter")
	if b, err := exec.Command("go", "build", "-o", bin, "./cmd/exporter").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/exporter: %v\n%s", err, b)
	}
	return bin, nil
}

// resolveMode is the mode auto would pick (or the one asked for).
func resolveMode(attach string) (tracer.AttachMode, error) {
	m, err := tracer.ParseAttachMode(attach)
	if err != nil || m != tracer.AttachAuto {
		return m, err
	}
	tr, err := tracer.New(tracer.Options{Attach: tracer.AttachAuto, RingBufferBytes: 1 << 16})
	if err != nil {
		return "", err
	}
	defer tr.Close()
	return tr.Mode(), nil
}

// goBench runs the per-event benchmarks and returns their result lines.
func goBench() ([]string, error) {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "BenchmarkDecode|BenchmarkPipelineHandle", "-benchmem", "-count", "5", "-cpu", "1", "./tracer", "./otel")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -bench: %v\n%s", err, b)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "Benchmark") {
			lines = append(lines, sc.Text())
		}
	}
	return lines, nil
}

func machine() string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("Linux %s, %s, %d CPUs, %s", unix.ByteSliceToString(u.Release[:]), cpu, runtime.NumCPU(), runtime.Version())
}

func report(w io.Writer, mode tracer.AttachMode, loads, rounds int, sys []bench.Result, switching time.Duration, progTimes []bench.ProgramTime, scans []bench.ScanCost, pipeline []string, st bench.StormResult) {
	setups := bench.SetupsFor(mode)
	fmt.Fprintf(w, `# Benchmarks

Generated by `+"`go run ./cmd/bench -o BENCHMARKS.md`"+` (as root, %d loadings of %d rounds) on %s.
Every figure below comes from that command; rerun it to refresh the file.

Machine: %s. Attach mode: **%s**.

## Method

- **Syscall cost.** Setups of the node, each attached in turn for one
  slice of calls (internal/bench.Iterations calls of each operation; times
  its ns/op below, the slice's length), in rounds whose order is
  shuffled each round: *no tracer*; *empty programs (floor)*:
  bpf/floor.c's empty programs on the same hooks the exporter uses in this
  mode, the physical limit of the hook;`, loads, rounds, time.Now().UTC().Format("2006-01-02"), machine(), mode)
	if slices.Contains(setups, bench.FloorExitOnly) {
		fmt.Fprintf(w, ` *one empty exit program*: an empty program on sys_exit_bpf
  alone, the least that any single-program design (reading the syscall's
  arguments from the saved registers at exit) could cost;`)
	}
	fmt.Fprintf(w, ` *exporter*: the tracer and the serve
  pipeline (metrics through the OpenTelemetry SDK and the Prometheus
  exporter) consuming every record, its hooks detached between its slices
  (tracer.Suspend/Resume), with the program variant auto picks here;
  *exporter, compat programs*: the same with the compat variant (in-flight
  loads in a thread-keyed hash map, the syscall's registers found on the
  kernel stack, a bounded log scan), which auto picks on kernels without
  task storage, bpf_task_pt_regs or bpf_loop. Every setup is loaded afresh %d times, with
  %d rounds each time. Each slice times a fixed number of calls, after a
  tenth as many untimed ones, on one thread pinned to one CPU, with the
  process's other threads (the in-process exporter's among them) kept off
  that CPU (internal/bench).
  Why this shape: on this shared VM a syscall's cost drifts by up to a
  third over hundreds of milliseconds, so setups are measured a slice
  apart (attaching and then detaching a setup took %.0f ms here, the
  median over the run's slices, which sets how close); and where a
  loading's programs and maps land in kernel memory moves a call's cost by
  tens of ns for as long as they stay loaded, so the setups are loaded
  many times. The table shows medians over all rounds; *added* is the
  setup's ns/op minus no tracer's; the *ratio* is the exporter's added cost
  over the floor's (target: at most 1.10). The paired ratio below it takes,
  for each loading, the median of the exporter's figure minus the floor's
  in the same round, and gives its mean over the loadings with a 95%%
  confidence interval. The exporter is measured in its steady state, past
  the attach grace, when the tracepoint exit hook leaves a non-load call
  after one memory load.
- **Time in BPF programs.** The same calls with the kernel's BPF run-time
  statistics on (BPF_ENABLE_STATS): program runs and ns spent in the
  programs per call, read from each program's run_cnt and run_time_ns, the
  median of %d loadings. These barely move with the machine's noise, so
  they show what the exporter's programs cost over empty ones on the same
  hooks (an empty program's figure, below, is what the measurement itself
  reads: compare setups, not absolute figures). The
  hook's own cost (the syscall slow path, the perf-event dispatch) is the
  same for both, so the floor's added cost plus this difference is the
  exporter's added cost without the wall clock's noise: the last ratio
  below.
- **Log scan.** The exit hook measures a log that fit by scanning the
  caller's buffer for its NUL, in the loader's own bpf(2) call. Per
  variant, with BPF run-time statistics on, %d loads of a %s-instruction
  program at log level 2 with a 16 MiB - 1 buffer alternate with the same
  load with its log off; the time in the exporter's programs (all hooks) per
  logged load minus per plain load, medians, divided by the log's size, is
  the scan's cost per MiB.
- **Pipeline.** `+"`go test -bench 'BenchmarkDecode|BenchmarkPipelineHandle' -benchmem -count 5 -cpu 1 ./tracer ./otel`"+`:
  decoding one ring-buffer record, and classifying, chaining and recording
  metrics for one event (a cilium/ebpf-style ENOSPC + retry and a log-off
  load, in turn), on one core.
- **Load storm.** The exporter binary (serve, attach mode above) runs as its
  own process; %d threads load a 2-instruction program as fast as they can
  for %v; then the exporter's `+"`bpf_prog_loads_total{loader=\"%s\"}`"+` is
  compared with the loads issued, `+"`verifierlog_exporter_events_lost_total`"+`
  is summed, and the exporter's CPU time (/proc/PID/stat) and RSS (VmRSS,
  VmHWM) are read.

## Syscall cost (ns/op, median of %d rounds)

`, loads, rounds, float64(switching)/1e6, statsLoads, scanLoads, scanSizes(), st.Threads, st.Duration.Round(time.Second), bench.StormComm, loads*rounds)
	costTable(w, setups, sys, func(r bench.Result) map[bench.Setup]float64 { return r.NsPerOp })
	fmt.Fprintf(w, "\nPaired, over %d loadings:\n\n", loads)
	for _, r := range sys {
		if ratio, lo, hi, ok := r.PairedRatio(); ok && measurable(r) {
			fmt.Fprintf(w, "- %s: the floor adds %+.0f ns, the exporter %+.1f ns more; ratio %.2f (95%% interval %.2f-%.2f)\n",
				r.Op, r.FloorOverNoTracer, (ratio-1)*r.FloorOverNoTracer, ratio, lo, hi)
		} else {
			fmt.Fprintf(w, "- %s: - (*)\n", r.Op)
		}
	}
	fmt.Fprintf(w, "\n(*) The floor's added cost is within the spread (interquartile range) of the no-tracer rounds, so no ratio to it means anything; the exporter's own cost on such a call is its time in programs, below.\n")
	fmt.Fprintf(w, "\nThe spread of the rounds (ns/op):\n\n| operation | setup | min | p10 | p25 | median | p75 | p90 | max |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range sys {
		for _, s := range setups {
			v := r.Rounds[s]
			fmt.Fprintf(w, "| %s | %s |", r.Op, s)
			for _, q := range []float64{0, 0.1, 0.25, 0.5, 0.75, 0.9, 1} {
				fmt.Fprintf(w, " %.0f |", bench.Quantile(v, q))
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintf(w, "\n## Time in BPF programs (per call, kernel BPF stats, median of %d loadings)\n\n| operation | setup | program runs | ns in programs |\n| --- | --- | ---: | ---: |\n", statsLoads)
	for _, p := range progTimes {
		fmt.Fprintf(w, "| %s | %s | %.2f | %.1f |\n", p.Op, p.Setup, p.Runs, p.Ns)
	}
	for _, exp := range setups {
		if exp != bench.Exporter && exp != bench.ExporterCompat {
			continue
		}
		fmt.Fprintf(w, "\n%s: the programs over the floor's, added to the floor's median added cost (the hook is the same):\n\n", exp)
		for _, r := range sys {
			floorNs, exporterNs := programNs(progTimes, r.Op, bench.Floor), programNs(progTimes, r.Op, exp)
			if added := r.Added(bench.Floor); measurable(r) {
				fmt.Fprintf(w, "- %s: %+.1f ns in programs per call; ratio (%.0f %+.1f) / %.0f = %.2f\n", r.Op, exporterNs-floorNs, added, exporterNs-floorNs, added, (added+exporterNs-floorNs)/added)
			} else {
				fmt.Fprintf(w, "- %s: %+.1f ns in programs per call, %.1f%% of the call (*)\n", r.Op, exporterNs-floorNs, 100*(exporterNs-floorNs)/r.NsPerOp[bench.NoTracer])
			}
		}
	}
	fmt.Fprintf(w, "\n## Log scan (per load, kernel BPF stats, median of %d loads)\n\n| variant | program | log | ns in programs, log scanned | ns in programs, log off | scan per MiB |\n| --- | ---: | ---: | ---: | ---: | ---: |\n", scanLoads)
	for _, c := range scans {
		fmt.Fprintf(w, "| %s | %d insns | %.2f MB | %.0f | %.0f | %.0f ns (%.2f ms) |\n", c.Variant, c.Insns, float64(c.LogBytes)/1e6, c.LoggedNs, c.PlainNs, c.NsPerMiB(), c.NsPerMiB()/1e6)
	}
	fmt.Fprintf(w, "\n## Pipeline (one core)\n\n```\n%s\n```\n", strings.Join(pipeline, "\n"))
	fmt.Fprintf(w, `
## Load storm

| threads | duration | loads issued | loads/s | records seen | lost | exporter CPU | RSS after | peak RSS |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| %d | %v | %d | %.0f | %d | %d | %.1f%% of a core | %.1f MiB | %.1f MiB |
`, st.Threads, st.Duration.Round(time.Millisecond), st.Issued, st.LoadsPerSecond(), st.Seen, st.Lost,
		100*st.ExporterCPU, float64(st.RSS)/(1<<20), float64(st.PeakRSS)/(1<<20))
}

// programNs is setup's time in programs per call of op.
func programNs(progTimes []bench.ProgramTime, op string, setup bench.Setup) float64 {
	for _, p := range progTimes {
		if p.Op == op && p.Setup == setup {
			return p.Ns
		}
	}
	return 0
}

// scanSizes lists bench.ScanSizes for the method.
func scanSizes() string {
	var s []string
	for _, n := range bench.ScanSizes {
		s = append(s, fmt.Sprintf("%d", n))
	}
	return strings.Join(s, " and a ")
}

// costTable writes one row per op of the figures of, the cost each setup
// adds to no tracer, and the exporter's ratio to the floor.
func costTable(w io.Writer, setups []bench.Setup, sys []bench.Result, of func(bench.Result) map[bench.Setup]float64) {
	head, sep := "| operation |", "| --- |"
	for _, s := range setups {
		head += " " + string(s) + " |"
		sep += " ---: |"
	}
	for _, s := range setups[1:] {
		head += " " + string(s) + " added |"
		sep += " ---: |"
	}
	fmt.Fprintf(w, "%s ratio |\n%s ---: |\n", head, sep)
	for _, r := range sys {
		figures := of(r)
		line := "| " + r.Op + " |"
		for _, s := range setups {
			line += fmt.Sprintf(" %.0f |", figures[s])
		}
		for _, s := range setups[1:] {
			line += fmt.Sprintf(" %+.0f |", figures[s]-figures[bench.NoTracer])
		}
		ratio := "- (*)"
		if measurable(r) && figures[bench.Floor] > figures[bench.NoTracer] {
			ratio = fmt.Sprintf("%.2f", bench.Ratio(figures))
		}
		fmt.Fprintf(w, "%s %s |\n", line, ratio)
	}
}

// measurable says whether the floor's median added cost stands out of the
// no-tracer rounds' interquartile range.
func measurable(r bench.Result) bool {
	v := r.Rounds[bench.NoTracer]
	if len(v) < 4 {
		return r.Added(bench.Floor) > 0
	}
	return r.Added(bench.Floor) > bench.Quantile(v, 0.75)-bench.Quantile(v, 0.25)
}
