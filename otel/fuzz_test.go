package otel

import (
	"encoding/binary"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/verifierlog/exporter/tracer"
)

// FuzzPipeline drives classification and retry chains with arbitrary
// event sequences: no panic, bounded state, and every chain ended by Flush.
func FuzzPipeline(f *testing.F) {
	f.Add([]byte{1, 2, 0, 0, 1, 0, 0, 0, 9, 9, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0})
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, data []byte) {
		spans := tracetest.NewInMemoryExporter()
		p, err := New(Config{
			MeterProvider:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())),
			TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans)),
			LoaderLimit:    3,
		})
		if err != nil {
			t.Fatal(err)
		}
		var now uint64
		for len(data) >= 12 {
			b := data[:12]
			data = data[12:]
			var ev tracer.LoadEvent
			ev.Command = tracer.CmdProgLoad
			if b[0]&1 == 1 {
				ev.Command = tracer.CmdBTFLoad
			}
			ev.PID = uint32(b[1] % 4)
			ev.Comm[0] = 'a' + b[2]%8
			ev.ProgName[0] = b[3]
			ev.ProgType = uint32(b[4])
			ev.LogLevel = uint32(b[5] % 16)
			ev.LogSize = uint32(binary.LittleEndian.Uint16(b[6:]))
			ev.HasLogBuf = b[8]&1 == 1
			ev.Ret = -int64(b[9] % 40)
			if b[9]&0x80 != 0 {
				ev.Ret = 3
			}
			ev.LogTrueSizeKnown = b[10]&1 == 1
			if ev.LogTrueSizeKnown {
				ev.LogTrueSize = uint32(b[11]) << 8
			}
			now += uint64(b[11]) * 100_000_000
			ev.StartNs, ev.EndNs = now, now+uint64(b[10])
			p.Handle(&ev)
			p.Sweep(now)
		}
		if n := p.ledger.Loaders(); n > 3 {
			t.Fatalf("%d loader labels, limit 3", n)
		}
		p.Flush()
		if p.OpenChains() != 0 {
			t.Fatal("Flush left chains open")
		}
		_ = p.Recommendations()
	})
}
