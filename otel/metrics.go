package otel

import (
	"context"
	"runtime/debug"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/verifierlog/exporter/tracer"
)

// ScopeName is the instrumentation scope of every instrument and span.
const ScopeName = "github.com/verifierlog/exporter/otel"

// SizeBuckets are the size histograms' bounds: powers of two from 128 B to
// 1 GiB, so that every well-known loader default falls on a boundary.
var SizeBuckets = func() []float64 {
	var b []float64
	for s := 128; s <= 1<<30; s <<= 1 {
		b = append(b, float64(s))
	}
	return b
}()

// DurationBuckets bound bpf_prog_load_duration_seconds: 10 µs to 40 s.
var DurationBuckets = []float64{1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40}

// ProcessedInsnsBuckets bound bpf_verifier_processed_insns: powers of two
// from 1 to 2^21, past the verifier's limit of one million processed
// instructions.
var ProcessedInsnsBuckets = func() []float64 {
	var b []float64
	for n := 1; n <= 1<<21; n <<= 1 {
		b = append(b, float64(n))
	}
	return b
}()

// AttemptBuckets bound bpf_prog_load_attempts.
var AttemptBuckets = []float64{1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32}

// Attribute keys of the metrics (Prometheus labels).
const (
	keyCommand  = "command"
	keyLoader   = "loader"
	keyProgType = "prog_type"
	keyLogMode  = "log_mode"
	keyResult   = "result"
	keySource   = "source"
	keyReason   = "reason"
	keyCoverage = "coverage"
)

// instruments are the per-event metrics of the README's metrics table, by their
// Prometheus names, recorded through the Recorder.
type instruments struct {
	loads         *instrument // bpf_prog_loads_total
	bufferBytes   *instrument // bpf_verifier_log_buffer_bytes
	requiredBytes *instrument // bpf_verifier_log_required_bytes
	undersized    *instrument // bpf_verifier_log_undersized_total
	shortfall     *instrument // bpf_verifier_log_shortfall_bytes
	unknownSize   *instrument // bpf_verifier_log_unknown_size_total
	duration      *instrument // bpf_prog_load_duration_seconds
	attempts      *instrument // bpf_prog_load_attempts
	processed     *instrument // bpf_verifier_processed_insns
}

func newInstruments(r *Recorder) *instruments {
	return &instruments{
		loads: r.newInstrument("bpf_prog_loads",
			"BPF program and BTF load attempts, by command, loader, program type, log mode and result (ok or the errno).", "{attempt}", kindSum, nil),
		bufferBytes: r.newInstrument("bpf_verifier_log_buffer_bytes",
			"log_size of load attempts that passed a verifier-log buffer.", "By", kindIntHistogram, SizeBuckets),
		requiredBytes: r.newInstrument("bpf_verifier_log_required_bytes",
			"Verifier-log buffer size, NUL included, that holds a load's whole log; one observation per load (retry chain); source kernel (log_true_size) or measured.", "By", kindIntHistogram, SizeBuckets),
		undersized: r.newInstrument("bpf_verifier_log_undersized",
			"Load attempts whose log buffer was too small: ENOSPC, or a known need above log_size.", "{attempt}", kindSum, nil),
		shortfall: r.newInstrument("bpf_verifier_log_shortfall_bytes",
			"Need minus buffer size of undersized attempts whose need is known.", "By", kindIntHistogram, SizeBuckets),
		unknownSize: r.newInstrument("bpf_verifier_log_unknown_size",
			"Loads (retry chains) that asked for a log but whose need stayed unknown (kernel before 6.4, attr too short for log_true_size).", "{load}", kindSum, nil),
		duration: r.newInstrument("bpf_prog_load_duration_seconds",
			"Time the kernel spent in each load attempt, whatever its result (bpf_prog_loads_total has the result).", "s", kindFloatHistogram, DurationBuckets),
		attempts: r.newInstrument("bpf_prog_load_attempts",
			"Attempts per logical load (retry chain).", "{attempt}", kindIntHistogram, AttemptBuckets),
		processed: r.newInstrument("bpf_verifier_processed_insns",
			"Instructions the verifier processed in successful load attempts whose log tail (--log-tail-bytes) holds its summary line.", "{instruction}", kindIntHistogram, ProcessedInsnsBuckets),
	}
}

// Source is what the self metrics read from the tracer.
type Source interface {
	Mode() tracer.AttachMode
	Variant() tracer.Variant
	KernelRelease() string
	LogTrueSizeSupported() bool
	Events() uint64
	LogScanFaults() uint64
	Lost() (map[tracer.LostReason]uint64, error)
}

// BuildInfo describes this binary for verifierlog_exporter_build_info.
type BuildInfo struct {
	Version, Revision, GoVersion string
}

// ReadBuildInfo fills BuildInfo from the binary's embedded build info.
func ReadBuildInfo(version string) BuildInfo {
	b := BuildInfo{Version: version, Revision: "unknown", GoVersion: "unknown"}
	if info, ok := debug.ReadBuildInfo(); ok {
		b.GoVersion = info.GoVersion
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				b.Revision = s.Value
			}
		}
		if b.Version == "" {
			b.Version = info.Main.Version
		}
	}
	if b.Version == "" {
		b.Version = "unknown"
	}
	return b
}

// registerSelfMetrics registers the exporter's own observable metrics:
// build info, events read, log scans that faulted, events lost by reason,
// tracer info.
func registerSelfMetrics(m metric.Meter, src Source, build BuildInfo) error {
	buildInfo, err := m.Int64ObservableGauge("verifierlog_exporter_build_info",
		metric.WithDescription("Always 1; labels describe the exporter build."))
	if err != nil {
		return err
	}
	events, err := m.Int64ObservableCounter("verifierlog_exporter_events",
		metric.WithDescription("Load records read from the kernel."), metric.WithUnit("{event}"))
	if err != nil {
		return err
	}
	scanFaults, err := m.Int64ObservableCounter("verifierlog_exporter_log_scan_faults",
		metric.WithDescription("Loads whose log fit but whose buffer could not be read back to measure it (unmapped or paged out by then); their need is unknown unless the kernel wrote log_true_size."), metric.WithUnit("{event}"))
	if err != nil {
		return err
	}
	lost, err := m.Int64ObservableCounter("verifierlog_exporter_events_lost",
		metric.WithDescription("Load attempts that went unrecorded, by reason (ringbuf_full, inflight_missing, ...)."), metric.WithUnit("{event}"))
	if err != nil {
		return err
	}
	info, err := m.Int64ObservableGauge("verifierlog_exporter_tracer_info",
		metric.WithDescription("Always 1; labels say how the tracer is attached on this node."))
	if err != nil {
		return err
	}
	buildAttrs := metric.WithAttributes(attribute.String("version", build.Version),
		attribute.String("revision", build.Revision), attribute.String("goversion", build.GoVersion))
	infoAttrs := metric.WithAttributes(attribute.String("attach_mode", string(src.Mode())),
		attribute.String("bpf_variant", string(src.Variant())),
		attribute.String("kernel_release", src.KernelRelease()),
		attribute.Bool("log_true_size_supported", src.LogTrueSizeSupported()))
	reasons := tracer.LostReasons()
	reasonAttrs := make([]metric.ObserveOption, len(reasons))
	for i, r := range reasons {
		reasonAttrs[i] = metric.WithAttributes(attribute.String(keyReason, string(r)))
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(buildInfo, 1, buildAttrs)
		o.ObserveInt64(info, 1, infoAttrs)
		o.ObserveInt64(events, int64(src.Events()))
		o.ObserveInt64(scanFaults, int64(src.LogScanFaults()))
		counts, err := src.Lost()
		if err != nil {
			return err
		}
		for i, r := range reasons {
			o.ObserveInt64(lost, int64(counts[r]), reasonAttrs[i])
		}
		return nil
	}, buildInfo, events, scanFaults, lost, info)
	return err
}
