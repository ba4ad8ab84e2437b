package main

import (
	"fmt"

	"github.com/alecthomas/kingpin/v2"

	"github.com/verifierlog/exporter/tracer"
)

// tracerFlags are the flags of every command that attaches the tracer,
// defined once.
type tracerFlags struct {
	attach       *string
	variant      *string
	ringBuffer   *int
	logTailBytes *uint32
}

func addTracerFlags(cmd *kingpin.CmdClause) *tracerFlags {
	f := &tracerFlags{
		attach: cmd.Flag("attach", "Kernel hooks: auto (cheapest that works), fentry, kprobe or tracepoint.").
			Default(string(tracer.AttachAuto)).Enum("auto", "fentry", "kprobe", "tracepoint"),
		variant: cmd.Flag("bpf-variant", "BPF programs: auto (the best the kernel's features allow), modern (task storage, bpf_loop: Linux 5.17+ or backports) or compat (Linux 5.10+).").
			Envar("VERIFIERLOG_BPF_VARIANT").Default(string(tracer.VariantAuto)).Enum("auto", "modern", "compat"),
		ringBuffer: cmd.Flag("ring-buffer-bytes", "Size of the kernel ring buffer of load records.").
			Default(fmt.Sprint(tracer.DefaultRingBufferBytes)).Int(),
	}
	logTail := cmd.Flag("log-tail-bytes", fmt.Sprintf("Copy the last N bytes (at most %d) of each load's verifier log into its record, span and metrics. "+
		"The log can show the loader's program, register states and kernel pointers. 0: off.", tracer.MaxLogTailBytes)).
		Default("0")
	f.logTailBytes = logTail.Uint32()
	logTail.PreAction(func(*kingpin.ParseContext) error { return f.checkLogTailBytes() })
	return f
}

// checkLogTailBytes refuses a tail the BPF side cannot copy.
func (f *tracerFlags) checkLogTailBytes() error {
	if *f.logTailBytes > tracer.MaxLogTailBytes {
		return fmt.Errorf("--log-tail-bytes=%d: at most %d", *f.logTailBytes, tracer.MaxLogTailBytes)
	}
	return nil
}

func (f *tracerFlags) options() tracer.Options {
	return tracer.Options{
		Attach:          tracer.AttachMode(*f.attach),
		Variant:         tracer.Variant(*f.variant),
		RingBufferBytes: *f.ringBuffer,
		LogTailBytes:    *f.logTailBytes,
	}
}
