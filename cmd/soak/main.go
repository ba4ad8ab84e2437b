// Command soak runs the exporter binary under a steady mix of loads (plain
// loads, libbpf, cilium/ebpf and aya retry chains, rejected programs, BTF
// loads) for a long time, samples its RSS, goroutines and counters, prints
// a summary, and exits 1 unless nothing was lost, every attempt was
// recorded, RSS and goroutines stayed flat and the exporter exited cleanly
// (internal/soak). Run as root from the repository:
//
//	go run ./cmd/soak -duration 10m
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/verifierlog/exporter/internal/soak"
)

func main() {
	cfg := soak.Config{Progress: os.Stderr}
	flag.DurationVar(&cfg.Duration, "duration", 10*time.Minute, "how long to load")
	flag.IntVar(&cfg.Threads, "threads", runtime.NumCPU(), "load threads")
	flag.DurationVar(&cfg.Interval, "interval", 10*time.Second, "time between samples")
	flag.StringVar(&cfg.Attach, "attach", "auto", "the exporter's --attach mode: auto, fentry, kprobe or tracepoint")
	flag.StringVar(&cfg.Exporter, "exporter", "", "a prebuilt exporter binary (default: build ./cmd/exporter)")
	flag.StringVar(&cfg.OTel, "otel", "console", "console: the exporter also builds spans and OTLP metrics (written to /dev/null); none: Prometheus only")
	flag.Parse()
	ok, err := run(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

func run(cfg soak.Config) (bool, error) {
	if cfg.Exporter == "" {
		dir, err := os.MkdirTemp("", "vlsoak")
		if err != nil {
			return false, err
		}
		defer os.RemoveAll(dir)
		if cfg.Exporter, err = soak.BuildExporter(dir); err != nil {
			return false, err
		}
	}
	res, err := soak.Run(cfg)
	if err != nil {
		return false, err
	}
	fmt.Println()
	res.WriteSummary(os.Stdout)
	return res.OK(), nil
}
