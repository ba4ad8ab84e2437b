package otel

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/verifierlog/exporter/tracer"
)

// registerRecommendations exports
// bpf_verifier_log_recommended_buffer_bytes{command,loader,coverage}: the
// smallest power of two that would have held that fraction of the needs
// seen in the window (sizing.Ledger.RecommendedSizes).
func (p *Pipeline) registerRecommendations(m metric.Meter) error {
	gauge, err := m.Int64ObservableGauge("bpf_verifier_log_recommended_buffer_bytes",
		metric.WithDescription("Smallest power-of-two verifier-log buffer that would have held the given fraction (coverage) of this loader's logs in the recommendation window."),
		metric.WithUnit("By"))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.ledger.RecommendedSizes(p.now(), func(command tracer.Command, loader, coverage string, bytes uint64) {
			o.ObserveInt64(gauge, int64(bytes), metric.WithAttributes(
				attribute.String(keyCommand, command.String()), attribute.String(keyLoader, loader),
				attribute.String(keyCoverage, coverage)))
		})
		return nil
	}, gauge)
	return err
}
