package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/internal/loadgen"
)

// defaultLoadgenComm is loadgen's thread name during its loads (at most 15
// bytes), so that they are not counted as loader="exporter", where they
// would look like the exporter's own buffers.
const defaultLoadgenComm = "vl-loadgen"

type loadgenCommand struct {
	cmd        *kingpin.CmdClause
	program    *string
	insns      *int
	name       *string
	logLevel   *uint32
	logSize    *uint32
	noLogBuf   *bool
	attrSize   *uint32
	btf        *bool
	btfTypes   *int
	count      *int
	threads    *int
	perAttempt *bool
	imitate    *string
	comm       *string
}

func newLoadgenCommand(app *kingpin.Application) *loadgenCommand {
	c := &loadgenCommand{cmd: app.Command("loadgen", "Issue raw BPF_PROG_LOAD or BPF_BTF_LOAD calls with chosen log settings and print what the kernel answered.")}
	c.program = c.cmd.Flag("program", "Program: valid, rejected (EACCES) or long (one log line per instruction at log level 2).").Default("valid").Enum("valid", "rejected", "long")
	c.insns = c.cmd.Flag("insns", "Instructions in a long or rejected program.").Default("64").Int()
	c.name = c.cmd.Flag("name", "prog_name (at most 15 bytes).").Default("vlog_loadgen").String()
	c.logLevel = c.cmd.Flag("log-level", "log_level: 0 off, 1, 2; add 4 for stats, 8 for BPF_LOG_FIXED.").Default("1").Uint32()
	c.logSize = c.cmd.Flag("log-size", "log_size, and the size of the buffer passed.").Default("65536").Uint32()
	c.noLogBuf = c.cmd.Flag("no-log-buf", "Pass log_buf = NULL (with --log-size=0: a size query).").Bool()
	c.attrSize = c.cmd.Flag("attr-size", fmt.Sprintf("The size argument of bpf(2); 0 means up to log_true_size (%d, BTF %d).", loadgen.ProgLoadAttrSize, loadgen.BTFLoadAttrSize)).Default("0").Uint32()
	c.btf = c.cmd.Flag("btf", "Load BTF instead of a program.").Bool()
	c.btfTypes = c.cmd.Flag("btf-types", "Types in the BTF blob (the log grows with it).").Default("16").Int()
	c.count = c.cmd.Flag("count", "Loads per thread.").Default("1").Int()
	c.threads = c.cmd.Flag("threads", "Threads loading at once.").Default("1").Int()
	c.perAttempt = c.cmd.Flag("each", "Print every attempt, not only the summary (default when --count=1 and --threads=1).").Bool()
	c.imitate = c.cmd.Flag("imitate", "Size the log buffer and retry on ENOSPC as this loader does: libbpf, cilium-ebpf or aya (overrides --log-size and --attr-size).").Enum("libbpf", "cilium-ebpf", "aya")
	c.comm = c.cmd.Flag("comm", "Thread name during the loads: the exporter's loader label. The default keeps them apart from the exporter's own.").Default(defaultLoadgenComm).String()
	return c
}

func (c *loadgenCommand) run(ctx context.Context, out io.Writer) error {
	prog, err := loadgen.ParseProgram(*c.program)
	if err != nil {
		return err
	}
	load := func() ([]loadgen.Result, error) {
		if *c.btf {
			r, err := loadgen.LoadBTF(loadgen.BTFLoad{Types: *c.btfTypes, LogLevel: *c.logLevel, LogSize: *c.logSize, NoLogBuf: *c.noLogBuf, AttrSize: *c.attrSize, Comm: *c.comm})
			return []loadgen.Result{r}, err
		}
		p := loadgen.ProgLoad{Program: prog, Insns: *c.insns, Name: *c.name, LogLevel: *c.logLevel, LogSize: *c.logSize, NoLogBuf: *c.noLogBuf, AttrSize: *c.attrSize, Comm: *c.comm}
		if *c.imitate != "" {
			return loadgen.Imitate(loadgen.Loader(*c.imitate), p)
		}
		r, err := loadgen.LoadProgram(p)
		return []loadgen.Result{r}, err
	}
	each := *c.perAttempt || (*c.count == 1 && *c.threads == 1)

	var (
		mu       sync.Mutex
		byResult = map[string]int{}
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range max(*c.threads, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range max(*c.count, 1) {
				if ctx.Err() != nil {
					return
				}
				rs, err := load()
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				for _, r := range rs {
					result := "ok"
					if r.Errno != 0 {
						result = unix.ErrnoName(r.Errno)
					}
					byResult[result]++
					if each {
						// loadgen presets log_true_size to 0: 0 after the call
						// is a size the kernel did not write (before 6.4, a
						// short attr, log level 0, an early error).
						trueSize := "?"
						if r.LogTrueSize > 0 {
							trueSize = strconv.FormatUint(uint64(r.LogTrueSize), 10)
						}
						fmt.Fprintf(out, "tid=%d ret=%d result=%s log_size=%d log_true_size=%s log_len=%d\n", r.TID, r.Ret, result, r.LogSize, trueSize, len(r.Log))
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	elapsed := time.Since(start)
	total := 0
	keys := make([]string, 0, len(byResult))
	for k, n := range byResult {
		keys = append(keys, k)
		total += n
	}
	sort.Strings(keys)
	if !each || total > 1 {
		fmt.Fprintf(out, "%d loads in %v (%.0f/s):", total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds())
		for _, k := range keys {
			fmt.Fprintf(out, " %s=%d", k, byResult[k])
		}
		fmt.Fprintln(out)
	}
	return nil
}
