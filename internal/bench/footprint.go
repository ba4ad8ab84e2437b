package bench

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"

	"github.com/verifierlog/exporter/otel"
	"github.com/verifierlog/exporter/tracer"
)

// FootprintLoaders are the loader counts the footprint is measured for.
var FootprintLoaders = []int{1, 10, 100}

// The Accept headers of a Prometheus scrape: the text exposition
// (classic histograms only) and the protobuf one (classic and native).
const (
	AcceptText  = "text/plain;version=0.0.4"
	AcceptProto = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
)

// MetricSeries is what one metric family stores in Prometheus for one
// (command, loader).
type MetricSeries struct {
	Name string
	Type dto.MetricType
	// Sets is the label sets (dto.Metric entries) of the family.
	Sets int
	// Classic counts a series per sample line of the text exposition
	// (a histogram's buckets, +Inf included, _sum and _count); Native one
	// per native histogram, as a Prometheus with native histograms stores
	// a histogram that has native buckets (other metrics as Classic).
	Classic, Native int
}

// Footprint is the /metrics of an exporter that has seen Loaders loaders,
// each with every outcome (FootprintOutcomes).
type Footprint struct {
	Loaders int
	// PerLoader is the series of one (command, loader), by metric family,
	// in exposition order; LoaderClassic and LoaderNative are their sums.
	PerLoader                   []MetricSeries
	LoaderClassic, LoaderNative int
	// Classic and Native are every series of the scrape, Other those
	// without a loader label (go_*, process_*, the exporter's own).
	Classic, Native, OtherClassic, OtherNative int
	// Bytes of one scrape's body, and gzipped (as Prometheus asks for it).
	TextBytes, TextGzip, ProtoBytes, ProtoGzip int
	// NativeHistograms says whether the protobuf exposition has native
	// histograms at all (before the Recorder gets native buckets, Native
	// equals Classic).
	NativeHistograms bool
}

// FootprintOutcomes lists the logical loads each loader makes, in order.
var FootprintOutcomes = []string{
	"ok with a log (need measured)",
	"ok without a log",
	"ENOSPC at 64 KiB, then a retry with log_true_size that succeeds (need from the kernel)",
	"rejected: EACCES at log level 2 (need measured)",
	"ok with a log whose need stays unknown (short attr, the buffer unreadable at exit)",
}

// footprintEvents is one loader's loads, each logical load from its own pid.
func footprintEvents(comm string, pid uint32, t0 uint64) []tracer.LoadEvent {
	const us = uint64(time.Microsecond)
	ev := func(pid uint32, start uint64, level, size uint32, ret int64) tracer.LoadEvent {
		e := tracer.LoadEvent{Command: tracer.CmdProgLoad, PID: pid, TID: pid, ProgType: 1, InsnCnt: 1500,
			AttrSize: 144, LogLevel: level, LogSize: size, HasLogBuf: size > 0,
			StartNs: start, EndNs: start + 500*us, Ret: ret, AttachMode: tracer.AttachTracepoint}
		copy(e.Comm[:], comm)
		copy(e.ProgName[:], "vlbench_fp")
		return e
	}
	okLog := ev(pid, t0, 1, 1<<16, 3)
	okLog.AttrSize, okLog.LogUsedSize = 128, 4000
	okPlain := ev(pid+1, t0, 0, 0, 3)
	enospc := ev(pid+2, t0, 1, 1<<16, -int64(unix.ENOSPC))
	enospc.LogTrueSize, enospc.LogTrueSizeKnown = 121703, true
	retry := ev(pid+2, t0+1000*us, 1, 121703, 3)
	retry.LogTrueSize, retry.LogTrueSizeKnown = 121703, true
	eacces := ev(pid+3, t0, 2, 1<<20, -int64(unix.EACCES))
	eacces.AttrSize, eacces.LogUsedSize = 128, 300000
	unknown := ev(pid+4, t0, 1, 1<<16, 3)
	unknown.AttrSize, unknown.LogScanFault = 128, true
	return []tracer.LoadEvent{okLog, okPlain, enospc, retry, eacces, unknown}
}

// footprintSource stands in for the tracer in the self metrics.
type footprintSource struct{ events uint64 }

func (footprintSource) Mode() tracer.AttachMode                     { return tracer.AttachTracepoint }
func (footprintSource) Variant() tracer.Variant                     { return tracer.VariantModern }
func (footprintSource) LogTrueSizeSupported() bool                  { return true }
func (s *footprintSource) Events() uint64                           { return s.events }
func (footprintSource) LogScanFaults() uint64                       { return 0 }
func (footprintSource) Lost() (map[tracer.LostReason]uint64, error) { return nil, nil }
func (footprintSource) KernelRelease() string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	return unix.ByteSliceToString(u.Release[:])
}

// MeasureFootprint builds the serving telemetry (otel.Setup, as serve
// does; OTLP push as the OTEL_* variables say, normally off), feeds it
// loaders loaders' FootprintOutcomes as synthetic load events, ends their
// retry chains, and scrapes /metrics in both expositions.
func MeasureFootprint(ctx context.Context, loaders int) (Footprint, error) {
	fp := Footprint{Loaders: loaders}
	tel, err := otel.Setup(ctx, otel.BuildInfo{Version: "v0.0.0-bench", Revision: "0000000000000000000000000000000000000000", GoVersion: "go1.26"})
	if err != nil {
		return fp, err
	}
	defer tel.Shutdown(ctx)
	src := &footprintSource{}
	now := tracer.MonotonicNow()
	p, err := otel.New(otel.Config{MeterProvider: tel.MeterProvider, Recorder: tel.Recorder, Source: src,
		Clock: tracer.WallClockWithOffset(time.Duration(time.Now().UnixNano() - int64(now))), Now: func() uint64 { return now }})
	if err != nil {
		return fp, err
	}
	first := ""
	for i := range loaders {
		comm := fmt.Sprintf("vlbench-fp-%03d", i)
		if i == 0 {
			first = comm
		}
		evs := footprintEvents(comm, uint32(1000+10*i), now-uint64(time.Minute))
		for j := range evs {
			p.Handle(&evs[j])
			src.events++
		}
	}
	p.Flush()

	h := promhttp.HandlerFor(tel.Registry, promhttp.HandlerOpts{EnableOpenMetrics: true})
	text, err := scrapeBody(h, AcceptText)
	if err != nil {
		return fp, err
	}
	proto, err := scrapeBody(h, AcceptProto)
	if err != nil {
		return fp, err
	}
	fp.TextBytes, fp.ProtoBytes = len(text), len(proto)
	fp.TextGzip, fp.ProtoGzip = gzipLen(text), gzipLen(proto)

	dec := expfmt.NewDecoder(bytes.NewReader(proto), expfmt.NewFormat(expfmt.TypeProtoDelim))
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err == io.EOF {
			break
		} else if err != nil {
			return fp, fmt.Errorf("decode the protobuf exposition: %w", err)
		}
		ms := MetricSeries{Name: mf.GetName(), Type: mf.GetType()}
		for _, m := range mf.Metric {
			c, n := seriesOf(mf.GetType(), m)
			if n == 1 && c > 1 {
				fp.NativeHistograms = true
			}
			fp.Classic += c
			fp.Native += n
			switch loaderOf(m) {
			case "":
				fp.OtherClassic += c
				fp.OtherNative += n
			case first:
				ms.Sets++
				ms.Classic += c
				ms.Native += n
			}
		}
		if ms.Classic > 0 {
			fp.PerLoader = append(fp.PerLoader, ms)
			fp.LoaderClassic += ms.Classic
			fp.LoaderNative += ms.Native
		}
	}
	if loaders*fp.LoaderClassic != fp.Classic-fp.OtherClassic {
		return fp, fmt.Errorf("loaders' series differ: %d loaders of %d classic series, but %d in all", loaders, fp.LoaderClassic, fp.Classic-fp.OtherClassic)
	}
	return fp, nil
}

// scrapeBody is h's answer to a scrape that accepts accept.
func scrapeBody(h http.Handler, accept string) ([]byte, error) {
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept", accept)
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, req)
	if rr.Code != http.StatusOK {
		return nil, fmt.Errorf("/metrics (Accept: %s): %d %s", accept, rr.Code, rr.Body)
	}
	return rr.Body.Bytes(), nil
}

// gzipLen is the length of b gzipped at the default level.
func gzipLen(b []byte) int {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Len()
}

// loaderOf is m's loader label, "" without one.
func loaderOf(m *dto.Metric) string {
	for _, l := range m.Label {
		if l.GetName() == "loader" {
			return l.GetValue()
		}
	}
	return ""
}

// seriesOf is what m stores in a Prometheus without native histograms
// (classic) and in one with them (native).
func seriesOf(t dto.MetricType, m *dto.Metric) (classic, native int) {
	switch t {
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		h := m.GetHistogram()
		classic = len(h.Bucket) + 2 // _sum, _count
		if n := len(h.Bucket); n == 0 || !math.IsInf(h.Bucket[n-1].GetUpperBound(), 1) {
			classic++ // the +Inf bucket the text exposition adds
		}
		if isNative(h) {
			return classic, 1
		}
		return classic, classic
	case dto.MetricType_SUMMARY:
		classic = len(m.GetSummary().Quantile) + 2
		return classic, classic
	default:
		return 1, 1
	}
}

// isNative says whether a Prometheus with native histograms on ingests h as
// a native histogram: Prometheus's rule (model/textparse, protobuf parser).
func isNative(h *dto.Histogram) bool {
	return len(h.GetPositiveSpan()) > 0 || len(h.GetNegativeSpan()) > 0 ||
		h.GetZeroThreshold() > 0 || h.GetZeroCount() > 0 || h.GetZeroCountFloat() > 0 ||
		len(h.GetPositiveDelta()) > 0 || len(h.GetPositiveCount()) > 0
}

// sortedNames is fp's per-loader metric names, sorted (for tests).
func (fp Footprint) sortedNames() []string {
	var names []string
	for _, m := range fp.PerLoader {
		names = append(names, m.Name)
	}
	slices.Sort(names)
	return names
}
