package tracer

import (
	"testing"
	"unicode/utf8"
)

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic,
// must reject what it cannot decode, and must never report a true size it
// did not decide was the kernel's, nor an invalid string.
func FuzzDecode(f *testing.F) {
	f.Add(rawProgLoad{attrSize: 144, logLevel: 2, logSize: 256, logBuf: 1, trueSizeAfter: 5153, ret: -28, flags: flagTrueSizeRead, name: "p"}.bytes(), true)
	f.Add(rawProgLoad{attrSize: 30, logLevel: 1, flags: flagAttrUnreadable}.bytes(), false)
	f.Add(make([]byte, recordSize), true)
	f.Fuzz(func(t *testing.T, raw []byte, supported bool) {
		d := decoder{trueSizeSupported: supported, mode: AttachTracepoint}
		var ev LoadEvent
		if err := d.decode(raw, &ev); err != nil {
			return
		}
		if ev.Command != CmdProgLoad && ev.Command != CmdBTFLoad {
			t.Fatalf("decoded a record of command %d", ev.Command)
		}
		if ev.LogTrueSizeKnown && (!supported || ev.LogLevel == 0 || ev.AttrUnreadable || ev.KernelCaller) {
			t.Fatalf("true size known where it cannot be: %+v", ev)
		}
		if !ev.LogTrueSizeKnown && ev.LogTrueSize != 0 {
			t.Fatalf("unknown true size carries %d", ev.LogTrueSize)
		}
		for _, s := range []string{ev.Comm.String(), ev.ProgName.String()} {
			if !utf8.ValidString(s) {
				t.Fatalf("invalid UTF-8 %q", s)
			}
			for _, r := range s {
				if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
					t.Fatalf("control character in %q", s)
				}
			}
		}
		_ = ev.Record(WallClock{})
	})
}
