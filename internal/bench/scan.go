package bench

import (
	"fmt"
	"runtime"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

// ScanCost is what measuring one log costs the loader: the time the
// exporter's programs spend in a load whose log they scan, beyond the same
// load with its log off (no scan), per MiB of log. The exit hook runs in
// the loader's own bpf(2) call, so this is time the loader waits.
type ScanCost struct {
	Variant tracer.Variant
	// Insns is the program's size; LogBytes its level-2 log's.
	Insns, LogBytes int
	// LoggedNs and PlainNs are ns in the exporter's programs per load,
	// with the log scanned and with the log off (medians over the loads).
	LoggedNs, PlainNs float64
}

// NsPerMiB is the scan's cost per MiB of log.
func (c ScanCost) NsPerMiB() float64 {
	return (c.LoggedNs - c.PlainNs) / (float64(c.LogBytes) / (1 << 20))
}

// ScanSizes are the programs whose logs are scanned: a 1,000-instruction
// program (an 80 KB level-2 log) and the 100,000-instruction one whose
// 8.77 MB log fills most of libbpf's 16 MiB - 1 buffer.
var ScanSizes = []int{1000, 100000}

// ScanCosts attaches the exporter's programs of each variant in mode and,
// with the kernel's BPF run-time statistics on, loads each ScanSizes
// program loads times with a 16 MiB - 1 buffer at log level 2 and loads
// times with its log off, alternately.
func ScanCosts(mode tracer.AttachMode, loads int) ([]ScanCost, error) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF stats: %w", err)
	}
	defer stats.Close()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var out []ScanCost
	for _, v := range []tracer.Variant{tracer.VariantModern, tracer.VariantCompat} {
		tr, err := tracer.New(tracer.Options{Attach: mode, Variant: v, AttachGrace: 1})
		if err != nil {
			return nil, fmt.Errorf("%s programs: %w", v, err)
		}
		for _, insns := range ScanSizes {
			c, err := scanCost(tr, insns, loads)
			if err != nil {
				tr.Close()
				return nil, err
			}
			c.Variant = v
			out = append(out, c)
		}
		if err := tr.Close(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func scanCost(tr *tracer.Tracer, insns, loads int) (ScanCost, error) {
	c := ScanCost{Insns: insns}
	var logged, plain []float64
	for range loads {
		for _, level := range []uint32{loadgen.LogLevel2, 0} {
			p := loadgen.ProgLoad{Program: loadgen.LongLog, Insns: insns, Name: "vlbench_scan", LogLevel: level}
			if level != 0 {
				p.LogSize = 16<<20 - 1
			}
			ns, r, err := programNs(tr, p)
			if err != nil {
				return c, err
			}
			if !r.OK() {
				return c, fmt.Errorf("load of %d insns at level %d: %v", insns, level, r.Errno)
			}
			if level == 0 {
				plain = append(plain, ns)
				continue
			}
			logged = append(logged, ns)
			c.LogBytes = len(r.Log)
		}
	}
	c.LoggedNs, c.PlainNs = median(logged), median(plain)
	return c, nil
}

// programNs is the time all of tr's programs spent during one load of p.
// No other load may run meanwhile (the command runs alone).
func programNs(tr *tracer.Tracer, p loadgen.ProgLoad) (float64, loadgen.Result, error) {
	before, err := tr.ProgramStats()
	if err != nil {
		return 0, loadgen.Result{}, err
	}
	r, err := loadgen.LoadProgram(p)
	if err != nil {
		return 0, r, err
	}
	after, err := tr.ProgramStats()
	if err != nil {
		return 0, r, err
	}
	var ns float64
	for i := range after {
		ns += float64(after[i].RunTime - before[i].RunTime)
	}
	return ns, r, nil
}
