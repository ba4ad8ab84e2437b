package fleet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/verifierlog/exporter/sizing"
)

// DefaultWindow is how far back Query looks without Options.Window.
const DefaultWindow = 30 * 24 * time.Hour

// Histograms says which of a histogram's two forms Query reads.
type Histograms string

const (
	// HistogramsAuto reads native histograms if any native series exists in
	// the window, else classic ones.
	HistogramsAuto Histograms = "auto"
	// HistogramsClassic reads the _bucket, _count and _sum series.
	HistogramsClassic Histograms = "classic"
	// HistogramsNative reads the native (schema 0) histograms that a
	// Prometheus with --enable-feature=native-histograms stores.
	HistogramsNative Histograms = "native"
)

// Options say what Query reports on.
type Options struct {
	// Selector is label matchers every series must match: `{cluster="prod"}`
	// or `cluster="prod"`; "" selects every series.
	Selector string
	// Window is how far back to look (0: DefaultWindow).
	Window time.Duration
	// Time is when every query is evaluated (zero: now), so that they all
	// see the same window.
	Time time.Time
	// Histograms is "" or HistogramsAuto, HistogramsClassic, HistogramsNative.
	Histograms Histograms
	// Defaults are the buffer sizes to report on (nil: sizing.WellKnownDefaults).
	Defaults []sizing.Default
}

// Report is the fleet's recommendations: what `exporter recommend
// --prometheus` prints as JSON.
type Report struct {
	// Source is "prometheus".
	Source string `json:"source"`
	// Selector is the label matchers the series matched, in braces.
	Selector string `json:"selector"`
	// Histograms is which form was read: "classic" or "native".
	Histograms    Histograms `json:"histograms"`
	WindowSeconds float64    `json:"window_seconds"`
	// Time is the evaluation time: the window is (Time-Window, Time].
	Time time.Time `json:"time"`
	// Nodes is the number of instances (the instance label's values) that
	// exported a matching series within the window.
	Nodes   int            `json:"nodes"`
	Loaders []LoaderReport `json:"loaders"`
}

// ErrNoSeries is wrapped by Query's error when no exporter series matches
// the selector within the window.
var ErrNoSeries = errors.New("no verifierlog exporter series")

// Query reports on the fleet by PromQL through api, every query evaluated
// at o.Time over o.Window. Counts are exact across exporter restarts (a
// counter reset), nodes that joined within the window (their series start
// at 0, the exporter's new-series hold) and nodes that left: each series'
// increase() is rounded to the integer it extrapolates, then added.
func Query(ctx context.Context, api v1.API, o Options) (Report, error) {
	q := querier{api: api, at: o.Time, window: o.Window, matchers: normalizeSelector(o.Selector)}
	if q.at.IsZero() {
		q.at = time.Now()
	}
	if q.window <= 0 {
		q.window = DefaultWindow
	}
	defaults := o.Defaults
	if defaults == nil {
		defaults = sizing.WellKnownDefaults
	}
	rep := Report{Source: "prometheus", Selector: "{" + q.matchers + "}", WindowSeconds: q.window.Seconds(), Time: q.at.UTC(), Loaders: []LoaderReport{}}

	nodes, err := q.vector(ctx, "count(group by (instance) (last_over_time("+q.sel("verifierlog_exporter_build_info")+"[%w])) or group by (instance) (last_over_time("+q.sel("bpf_prog_loads_total")+"[%w])))")
	if err != nil {
		var apiErr *v1.Error
		if errors.As(err, &apiErr) && apiErr.Type == v1.ErrBadData && q.matchers != "" {
			return rep, fmt.Errorf("selector %s: %s", rep.Selector, apiErr.Msg)
		}
		return rep, err
	}
	if len(nodes) == 1 {
		rep.Nodes = int(nodes[0].Value)
	}
	if rep.Nodes == 0 {
		return rep, fmt.Errorf("%w matches %s in the %s before %s", ErrNoSeries, rep.Selector, model.Duration(q.window), q.at.UTC().Format(time.RFC3339))
	}

	mode := o.Histograms
	switch mode {
	case "", HistogramsAuto:
		native, err := q.vector(ctx, "count(histogram_count(increase("+q.sel("bpf_prog_load_attempts")+"[%w])))")
		if err != nil {
			return rep, err
		}
		mode = HistogramsClassic
		if len(native) > 0 && native[0].Value > 0 {
			mode = HistogramsNative
		}
	case HistogramsClassic, HistogramsNative:
	default:
		return rep, fmt.Errorf("histograms %q: want auto, classic or native", mode)
	}
	rep.Histograms = mode

	counts := map[loaderKey]*Counts{}
	get := func(m model.Metric) *Counts {
		k := loaderKey{string(m["command"]), string(m["loader"])}
		c := counts[k]
		if c == nil {
			c = &Counts{Command: k.command, Loader: k.loader}
			counts[k] = c
		}
		return c
	}
	sumCounter := func(name, extra string, into func(*Counts, uint64)) error {
		v, err := q.vector(ctx, "sum by (command, loader) (round(increase("+q.sel(name, extra)+"[%w])))")
		for _, s := range v {
			into(get(s.Metric), count(float64(s.Value)))
		}
		return err
	}
	if err := sumCounter("bpf_prog_loads_total", `result="ENOSPC"`, func(c *Counts, n uint64) { c.Truncated += n }); err != nil {
		return rep, err
	}
	if err := sumCounter("bpf_verifier_log_unknown_size_total", "", func(c *Counts, n uint64) { c.Unknown += n }); err != nil {
		return rep, err
	}

	const (
		attempts = "bpf_prog_load_attempts"
		required = "bpf_verifier_log_required_bytes"
		buffers  = "bpf_verifier_log_buffer_bytes"
	)
	if mode == HistogramsClassic {
		if err := sumCounter(attempts+"_count", "", func(c *Counts, n uint64) { c.Loads += n }); err != nil {
			return rep, err
		}
		for _, h := range []struct {
			name string
			into func(*Counts) *Classes
		}{{required, func(c *Counts) *Classes { return &c.Needs }}, {buffers, func(c *Counts) *Classes { return &c.Buffers }}} {
			v, err := q.vector(ctx, "sum by (command, loader, le) (round(increase("+q.sel(h.name+"_bucket")+"[%w])))")
			if err != nil {
				return rep, err
			}
			addCumulative(v, func(m model.Metric) *Classes { return h.into(get(m)) })
		}
	} else {
		v, err := q.vector(ctx, "sum by (command, loader) (round(histogram_count(increase("+q.sel(attempts)+"[%w]))))")
		if err != nil {
			return rep, err
		}
		for _, s := range v {
			get(s.Metric).Loads += count(float64(s.Value))
		}
		for _, h := range []struct {
			name string
			into func(*Counts) *Classes
		}{{required, func(c *Counts) *Classes { return &c.Needs }}, {buffers, func(c *Counts) *Classes { return &c.Buffers }}} {
			v, err := q.vector(ctx, "increase("+q.sel(h.name)+"[%w])")
			if err != nil {
				return rep, err
			}
			for _, s := range v {
				if s.Histogram != nil {
					AddNative(h.into(get(s.Metric)), s.Histogram)
				}
			}
		}
	}
	// The sum of the needs: each series' increase() of the sum is
	// extrapolated as its count's is, so it is scaled back by the ratio of
	// the count's rounded increase to its increase.
	sumQuery := "sum by (command, loader) (increase(" + q.sel(required+"_sum") + "[%w]) / (increase(" + q.sel(required+"_count") + "[%w]) > 0) * round(increase(" + q.sel(required+"_count") + "[%w])))"
	if mode == HistogramsNative {
		inc := "increase(" + q.sel(required) + "[%w])"
		sumQuery = "sum by (command, loader) (histogram_sum(" + inc + ") / (histogram_count(" + inc + ") > 0) * round(histogram_count(" + inc + ")))"
	}
	v, err := q.vector(ctx, sumQuery)
	if err != nil {
		return rep, err
	}
	for _, s := range v {
		if f := float64(s.Value); !math.IsNaN(f) && !math.IsInf(f, 0) {
			c := get(s.Metric)
			c.NeedSum, c.HasNeedSum = f, true
		}
	}

	for _, c := range counts {
		if c.Loads == 0 && c.Truncated == 0 && c.Unknown == 0 && c.Needs.Total() == 0 && c.Buffers.Total() == 0 {
			continue // series in the window, but nothing happened in it
		}
		rep.Loaders = append(rep.Loaders, NewLoaderReport(*c, defaults))
	}
	sort.Slice(rep.Loaders, func(i, j int) bool {
		a, b := rep.Loaders[i], rep.Loaders[j]
		if a.Loads != b.Loads {
			return a.Loads > b.Loads
		}
		return a.Command+a.Loader < b.Command+b.Loader
	})
	return rep, nil
}

type loaderKey struct{ command, loader string }

// querier runs instant queries at one time over one window.
type querier struct {
	api      v1.API
	at       time.Time
	window   time.Duration
	matchers string
}

// normalizeSelector is sel's label matchers without braces.
func normalizeSelector(sel string) string {
	sel = strings.TrimSpace(sel)
	if strings.HasPrefix(sel, "{") && strings.HasSuffix(sel, "}") {
		sel = strings.TrimSpace(sel[1 : len(sel)-1])
	}
	return sel
}

// sel is name{extra, the selector's matchers}.
func (q querier) sel(name string, extra ...string) string {
	var ms []string
	for _, e := range append(extra, q.matchers) {
		if e != "" {
			ms = append(ms, e)
		}
	}
	if len(ms) == 0 {
		return name
	}
	return name + "{" + strings.Join(ms, ", ") + "}"
}

// vector runs promql, every %w in it replaced by the window, at q.at.
func (q querier) vector(ctx context.Context, promql string) (model.Vector, error) {
	promql = strings.ReplaceAll(promql, "%w", model.Duration(q.window).String())
	val, _, _, err := q.api.Query(ctx, promql, q.at)
	var apiErr *v1.Error
	switch {
	case errors.As(err, &apiErr) && apiErr.Type != v1.ErrClient:
		// An error response: the query is what it is about.
		return nil, fmt.Errorf("query %s: %w", promql, err)
	case err != nil:
		return nil, err // the server did not answer as Prometheus does
	}
	v, ok := val.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("query %s: a %s, not an instant vector", promql, val.Type())
	}
	return v, nil
}

// count is a rounded increase as a count (0 if negative or NaN).
func count(f float64) uint64 {
	if !(f > 0) {
		return 0
	}
	return uint64(math.Round(f))
}

// addCumulative adds classic cumulative bucket counts (one sample per le,
// for each command and loader) to the classes into picks.
func addCumulative(v model.Vector, into func(model.Metric) *Classes) {
	type bucket struct {
		le float64
		n  uint64
	}
	// By the bound's value, not its text: a Prometheus 2.x writes le="65536"
	// for a text scrape and le="65536.0" for a protobuf one, and a fleet
	// scraped both ways has both.
	byLoader := map[loaderKey]map[float64]uint64{}
	metrics := map[loaderKey]model.Metric{}
	for _, s := range v {
		le, err := strconv.ParseFloat(string(s.Metric["le"]), 64)
		if err != nil {
			continue
		}
		k := loaderKey{string(s.Metric["command"]), string(s.Metric["loader"])}
		if byLoader[k] == nil {
			byLoader[k] = map[float64]uint64{}
		}
		byLoader[k][le] += count(float64(s.Value))
		metrics[k] = s.Metric
	}
	for k, byLe := range byLoader {
		bs := make([]bucket, 0, len(byLe))
		for le, n := range byLe {
			bs = append(bs, bucket{le, n})
		}
		sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
		c := into(metrics[k])
		var below uint64
		for _, b := range bs {
			if b.n > below {
				c[ClassOf(b.le)] += b.n - below
				below = b.n
			}
		}
	}
}

// AddNative adds a native histogram's buckets (an increase(), so counts are
// rounded to integers) to c by their upper bounds: at schema 0 bucket index
// i covers (2^(i-1), 2^i], which is class ClassOf(2^i); the zero bucket
// goes to class 0. Buckets of negative values (a size is never negative)
// are left out.
func AddNative(c *Classes, h *model.SampleHistogram) {
	for _, b := range h.Buckets {
		upper := float64(b.Upper)
		if upper < 0 {
			continue
		}
		c[ClassOf(upper)] += count(float64(b.Count))
	}
}
