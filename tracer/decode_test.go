package tracer

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawProgLoad builds a ring-buffer record as the BPF side writes it for a
// PROG_LOAD whose caller passed attrSize bytes.
type rawProgLoad struct {
	attrSize      uint32
	logLevel      uint32
	logSize       uint32
	logBuf        uint64
	trueSizeAttr  uint32 // what the attr held at entry
	trueSizeAfter uint32
	ret           int64
	flags         uint32
	name          string
}

func (p rawProgLoad) bytes() []byte {
	var r verifierlogLoadEvent
	r.In.StartNs, r.EndNs = 1000, 251000
	r.In.Cmd = uint32(CmdProgLoad)
	r.In.AttrSize = p.attrSize
	r.In.AttrCopied = min(p.attrSize, ProgLoadAttrSize)
	r.In.Flags = p.flags
	r.Pid, r.Tid, r.Uid, r.Gid, r.CgroupId = 10, 11, 12, 13, 14
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&r.Comm[0])), 16), "loader")
	attr := ProgLoadAttr{ProgType: 1, InsnCnt: 2, LogLevel: p.logLevel, LogSize: p.logSize, LogBuf: p.logBuf,
		ProgFlags: 4, ExpectedAttachType: 7, LogTrueSize: p.trueSizeAttr}
	copy(attr.ProgName[:], p.name)
	a := r.In.Attr[:]
	copy(a, AttrBytes(&attr))
	// Bytes past the caller's attr size were never copied: poison them.
	for i := int(r.In.AttrCopied); i < len(a); i++ {
		a[i] = 0xAA
	}
	r.TrueSizeAfter = p.trueSizeAfter
	r.Ret = p.ret
	return slices.Clone(unsafe.Slice((*byte)(unsafe.Pointer(&r)), recordSize))
}

func decodeOne(t *testing.T, d decoder, raw []byte) LoadEvent {
	t.Helper()
	var ev LoadEvent
	if err := d.decode(raw, &ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestDecodeCopiesEveryProgLoadField(t *testing.T) {
	d := decoder{trueSizeSupported: true, mode: AttachTracepoint}
	ev := decodeOne(t, d, rawProgLoad{
		attrSize: 144, logLevel: 2, logSize: 4096, logBuf: 0xdead0000,
		trueSizeAfter: 5000, ret: -int64(unix.ENOSPC), flags: flagTrueSizeRead, name: "my_prog",
	}.bytes())
	want := LoadEvent{
		StartNs: 1000, EndNs: 251000, PID: 10, TID: 11, UID: 12, GID: 13, CgroupID: 14,
		Command: CmdProgLoad, AttrSize: 144, ProgType: 1, ExpectedAttachType: 7, InsnCnt: 2,
		ProgFlags: 4, LogLevel: 2, LogSize: 4096, HasLogBuf: true,
		LogTrueSize: 5000, LogTrueSizeKnown: true, Ret: -int64(unix.ENOSPC), AttachMode: AttachTracepoint,
	}
	copy(want.Comm[:], "loader")
	copy(want.ProgName[:], "my_prog")
	if !reflect.DeepEqual(ev, want) {
		t.Fatalf("decoded\n %+v\nwant\n %+v", ev, want)
	}
	if ev.Duration() != 250*time.Microsecond || !ev.Truncated() || ev.ErrnoName() != "ENOSPC" {
		t.Errorf("duration %v truncated %v errno %q", ev.Duration(), ev.Truncated(), ev.ErrnoName())
	}
}

func TestDecodeShortAttrReadsOnlyWhatTheKernelSaw(t *testing.T) {
	d := decoder{trueSizeSupported: true}
	// 30 bytes: log_size (28..31) is cut in two, log_buf is absent.
	ev := decodeOne(t, d, rawProgLoad{attrSize: 30, logLevel: 1, logSize: 0x00050100, logBuf: 1, flags: flagTrueSizeRead}.bytes())
	if ev.LogLevel != 1 || ev.LogSize != 0x0100 || ev.HasLogBuf || ev.ProgName != (Name{}) {
		t.Fatalf("30-byte attr decoded as level %d size %#x buf %v name %q", ev.LogLevel, ev.LogSize, ev.HasLogBuf, ev.ProgName)
	}
	ev = decodeOne(t, d, rawProgLoad{attrSize: 0}.bytes())
	if ev.ProgType != 0 || ev.InsnCnt != 0 || ev.LogLevel != 0 {
		t.Fatalf("empty attr decoded as %+v", ev)
	}
}

func TestTrueSizeKnownOnlyWhereTheKernelWroteIt(t *testing.T) {
	enospc, einval, eacces := -int64(unix.ENOSPC), -int64(unix.EINVAL), -int64(unix.EACCES)
	base := rawProgLoad{attrSize: 144, logLevel: 1, logSize: 256, logBuf: 1, flags: flagTrueSizeRead, trueSizeAfter: 900}
	cases := []struct {
		name      string
		supported bool
		mod       func(*rawProgLoad)
		known     bool
	}{
		{"kernel wrote a new value", true, func(p *rawProgLoad) { p.ret = einval }, true},
		{"kernel lacks the feature", false, func(p *rawProgLoad) { p.ret = enospc }, false},
		{"attr too short for the field", true, func(p *rawProgLoad) { p.attrSize = 143; p.ret = enospc }, false},
		{"attr size 128", true, func(p *rawProgLoad) { p.attrSize = 128; p.ret = enospc }, false},
		{"log off", true, func(p *rawProgLoad) { p.logLevel = 0; p.logBuf = 0; p.logSize = 0 }, false},
		{"post-call read failed", true, func(p *rawProgLoad) { p.flags = 0; p.ret = enospc }, false},
		{"kernel caller", true, func(p *rawProgLoad) { p.flags |= flagKernelCaller; p.ret = enospc }, false},
		{"attr unreadable", true, func(p *rawProgLoad) { p.flags |= flagAttrUnreadable; p.ret = -int64(unix.EFAULT) }, false},
		{"unchanged, success", true, func(p *rawProgLoad) { p.trueSizeAttr = 900; p.ret = 5 }, true},
		{"unchanged, ENOSPC", true, func(p *rawProgLoad) { p.trueSizeAttr = 900; p.ret = enospc }, true},
		{"unchanged, verifier EACCES", true, func(p *rawProgLoad) { p.trueSizeAttr = 900; p.ret = eacces }, true},
		{"unchanged, EINVAL before the verifier", true, func(p *rawProgLoad) { p.trueSizeAttr = 900; p.ret = einval }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := base
			c.mod(&p)
			ev := decodeOne(t, decoder{trueSizeSupported: c.supported}, p.bytes())
			if ev.LogTrueSizeKnown != c.known {
				t.Fatalf("known %v, want %v", ev.LogTrueSizeKnown, c.known)
			}
			if !c.known && ev.LogTrueSize != 0 {
				t.Fatalf("unknown true size carries a number: %d", ev.LogTrueSize)
			}
		})
	}
}

func TestDecodeBTFLoad(t *testing.T) {
	var r verifierlogLoadEvent
	r.In.Cmd = uint32(CmdBTFLoad)
	r.In.AttrSize, r.In.AttrCopied = 40, BTFLoadAttrSize
	r.In.Flags = flagTrueSizeRead
	attr := BTFLoadAttr{BtfLogBuf: 0x1000, BtfLogSize: 128, BtfLogLevel: 1}
	copy(r.In.Attr[:], AttrBytes(&attr))
	r.TrueSizeAfter = 1109
	r.Ret = -int64(unix.ENOSPC)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&r)), recordSize)
	ev := decodeOne(t, decoder{trueSizeSupported: true}, raw)
	if ev.Command != CmdBTFLoad || ev.LogSize != 128 || ev.LogLevel != 1 || !ev.HasLogBuf ||
		!ev.LogTrueSizeKnown || ev.LogTrueSize != 1109 || !ev.Truncated() || ev.ProgType != 0 {
		t.Fatalf("decoded %+v", ev)
	}
}

func TestDecodeRejectsShortAndForeignRecords(t *testing.T) {
	var ev LoadEvent
	d := decoder{}
	if err := d.decode(make([]byte, recordSize-1), &ev); !errors.Is(err, errShortRecord) {
		t.Fatalf("short record: %v", err)
	}
	raw := rawProgLoad{attrSize: 144}.bytes()
	binary.NativeEndian.PutUint32(raw[unsafe.Offsetof(verifierlogLoadEvent{}.In.Cmd):], 0) // BPF_MAP_CREATE
	if err := d.decode(raw, &ev); err == nil {
		t.Fatal("record of a non-load command decoded")
	}
}

func TestLogModeClassification(t *testing.T) {
	cases := []struct {
		level uint32
		buf   bool
		want  LogMode
	}{
		{0, false, LogOff},
		{0, true, LogOff},
		{1, false, LogQuery},
		{2 | LogLevelFixed, false, LogQuery},
		{1 | LogLevelFixed, true, LogFixed},
		{1, true, LogRotating},
		{2 | LogLevelStats, true, LogRotating},
	}
	for _, c := range cases {
		ev := LoadEvent{LogLevel: c.level, HasLogBuf: c.buf}
		if got := ev.LogMode(); got != c.want {
			t.Errorf("level %d buf %v: %v, want %v", c.level, c.buf, got, c.want)
		}
	}
}

func TestTruncatedNeedsENOSPCWithALogBuffer(t *testing.T) {
	enospc := -int64(unix.ENOSPC)
	for _, c := range []struct {
		ev   LoadEvent
		want bool
	}{
		{LoadEvent{Ret: enospc, LogLevel: 1, HasLogBuf: true}, true},
		{LoadEvent{Ret: enospc, LogLevel: 1}, false},     // query: ENOSPC is not about the log
		{LoadEvent{Ret: enospc, HasLogBuf: true}, false}, // log off
		{LoadEvent{Ret: -int64(unix.EACCES), LogLevel: 1, HasLogBuf: true}, false},
		{LoadEvent{Ret: 3, LogLevel: 1, HasLogBuf: true}, false},
	} {
		if got := c.ev.Truncated(); got != c.want {
			t.Errorf("%+v: truncated %v, want %v", c.ev, got, c.want)
		}
	}
}

func TestErrnoNames(t *testing.T) {
	for ret, want := range map[int64]string{7: "", 0: "", -28: "ENOSPC", -13: "EACCES", -14: "EFAULT", -4000: "errno4000"} {
		ev := LoadEvent{Ret: ret}
		if got := ev.ErrnoName(); got != want {
			t.Errorf("ret %d: %q, want %q", ret, got, want)
		}
	}
}

func TestNameSanitisesLoaderBytes(t *testing.T) {
	for raw, want := range map[string]string{
		"plain_name":        "plain_name",
		"with\x00tail":      "with",
		"ctl\x1b[31mred":    "ctl\uFFFD[31mred",
		"bad\xffutf8":       "bad\uFFFDutf8",
		"caf\xc3\xa9":       "café",
		"sixteen_bytes_xx":  "sixteen_bytes_xx", // no NUL at all
		"del\x7f":           "del\uFFFD",
		"c1\xc2\x85control": "c1\uFFFDcontrol",
	} {
		var n Name
		copy(n[:], raw)
		if got := n.String(); got != want {
			t.Errorf("%q: %q, want %q", raw, got, want)
		}
	}
}

func TestRecordJSONHasTheDocumentedKeys(t *testing.T) {
	d := decoder{trueSizeSupported: true, mode: AttachTracepoint}
	ev := decodeOne(t, d, rawProgLoad{attrSize: 144, logLevel: 1, logSize: 256, logBuf: 1, trueSizeAfter: 300, ret: -28, flags: flagTrueSizeRead, name: "p"}.bytes())
	clock := WallClockWithOffset(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Sub(time.Unix(0, 0)))
	b, err := json.Marshal(ev.Record(clock))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	documented := []string{"time", "command", "pid", "tid", "comm", "uid", "cgroup_id", "prog_type", "prog_name",
		"insn_cnt", "attr_size", "log_level", "log_mode", "log_size", "log_true_size", "log_true_size_known",
		"log_used_size", "log_need_source", "ret", "errno", "truncated", "duration_ns", "attach_mode"}
	extra := []string{"expected_attach_type", "prog_flags", "log_used_size_at_least"}
	for _, k := range documented {
		if _, ok := got[k]; !ok {
			t.Errorf("key %q missing", k)
		}
	}
	for k := range got {
		if !slices.Contains(documented, k) && !slices.Contains(extra, k) {
			t.Errorf("unexpected key %q", k)
		}
	}
	checks := map[string]any{
		"time": "2026-01-02T03:04:05.000001000Z", "command": "BPF_PROG_LOAD", "prog_type": "socket_filter",
		"log_mode": "rotating", "log_true_size": 300.0, "log_true_size_known": true, "log_need_source": "kernel",
		"errno": "ENOSPC", "truncated": true, "duration_ns": 250000.0, "attach_mode": "tracepoint", "comm": "loader",
	}
	for k, want := range checks {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}

	ev.LogTrueSizeKnown, ev.LogTrueSize = false, 0
	b, _ = json.Marshal(ev.Record(clock))
	got = nil
	_ = json.Unmarshal(b, &got)
	if got["log_true_size"] != nil || got["log_need_source"] != "" {
		t.Errorf("unknown true size printed as %v (source %q), want null and empty", got["log_true_size"], got["log_need_source"])
	}
}

func TestWallClockMatchesTimeNow(t *testing.T) {
	c := NewWallClock()
	got := c.Time(MonotonicNow())
	if d := time.Since(got); d < -time.Second || d > time.Second {
		t.Fatalf("converted monotonic now is %v away from time.Now()", d)
	}
}

func TestRingBufferSizeIsAPowerOfTwoOfPages(t *testing.T) {
	for in, want := range map[int]uint32{0: DefaultRingBufferBytes, 1: 4096, 4097: 8192, 1 << 20: 1 << 20} {
		if got := ringBufferSize(in); got != want {
			t.Errorf("ringBufferSize(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestParseAttachMode(t *testing.T) {
	for _, s := range []string{"auto", "fentry", "kprobe", "tracepoint"} {
		if m, err := ParseAttachMode(s); err != nil || string(m) != s {
			t.Errorf("%q: %v %v", s, m, err)
		}
	}
	if _, err := ParseAttachMode("uprobe"); err == nil {
		t.Error("uprobe accepted")
	}
}

// BenchmarkDecode is the per-record cost of turning a ring-buffer record
// into a LoadEvent.
func BenchmarkDecode(b *testing.B) {
	raw := rawProgLoad{attrSize: 144, logLevel: 2, logSize: 65536, logBuf: 1, trueSizeAfter: 70000,
		ret: -int64(unix.ENOSPC), flags: flagTrueSizeRead, name: "bench"}.bytes()
	d := decoder{trueSizeSupported: true, mode: AttachTracepoint}
	var ev LoadEvent
	b.ReportAllocs()
	for b.Loop() {
		if err := d.decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
	}
}

func TestMeasuredNeedOnlyWhereTheKernelWroteTheLog(t *testing.T) {
	d := decoder{trueSizeSupported: false}
	for ret, want := range map[int64]uint32{3: 101, -int64(unix.EACCES): 101, -int64(unix.EINVAL): 0, -int64(unix.ENOSPC): 0} {
		raw := rawProgLoad{attrSize: 128, logLevel: 1, logSize: 4096, logBuf: 1, ret: ret, flags: flagLogMeasured}.bytes()
		binary.NativeEndian.PutUint32(raw[unsafe.Offsetof(verifierlogLoadEvent{}.LogUsed):], 100)
		ev := decodeOne(t, d, raw)
		if ev.LogUsedSize != want {
			t.Errorf("ret %d: measured %d, want %d", ret, ev.LogUsedSize, want)
		}
	}
}

// A scan that faulted leaves the need unknown and says so; only a load
// whose log fit is scanned, so only such a record can carry the fault.
func TestLogScanFaultIsDecodedOnlyWhereTheLogFit(t *testing.T) {
	d := decoder{}
	for ret, want := range map[int64]bool{3: true, -int64(unix.EACCES): true, -int64(unix.EINVAL): false, -int64(unix.ENOSPC): false} {
		ev := decodeOne(t, d, rawProgLoad{attrSize: 128, logLevel: 1, logSize: 4096, logBuf: 1, ret: ret, flags: flagLogScanFault}.bytes())
		if ev.LogScanFault != want || ev.LogUsedSize != 0 {
			t.Errorf("ret %d: scan fault %v, measured %d; want fault %v, nothing measured", ret, ev.LogScanFault, ev.LogUsedSize, want)
		}
		if need, src := ev.Need(); need != 0 || src != NeedUnknown {
			t.Errorf("ret %d: need %d from %q after a faulted scan", ret, need, src)
		}
	}
}

// tailRecord is the record p describes followed, as with
// Options.LogTailBytes, by a tail of n bytes in a tail[] that holds fill.
func tailRecord(p rawProgLoad, n uint32, fill string) []byte {
	raw := make([]byte, tailRecordSize)
	copy(raw, p.bytes())
	binary.NativeEndian.PutUint32(raw[tailLenOffset:], n)
	copy(raw[tailOffset:], fill)
	return raw
}

func TestDecodeLogTail(t *testing.T) {
	p := rawProgLoad{attrSize: 144, logLevel: 1, logSize: 4096, logBuf: 0x1000, ret: -int64(unix.EACCES)}
	d := decoder{}
	var ev LoadEvent
	if err := d.decode(tailRecord(p, 9, "R0 !read_ok and more"), &ev); err != nil {
		t.Fatal(err)
	}
	if string(ev.LogTail) != "R0 !read_" {
		t.Errorf("tail %q, want the record's 9 bytes %q", ev.LogTail, "R0 !read_")
	}
	// The next record reuses the buffer: a tail is valid until then.
	if err := d.decode(tailRecord(p, 3, "abc"), &ev); err != nil || string(ev.LogTail) != "abc" {
		t.Errorf("second tail %q (%v), want %q", ev.LogTail, err, "abc")
	}
	for _, c := range []struct {
		name string
		raw  []byte
	}{
		{"record without a tail", p.bytes()},
		{"tail record, no tail", tailRecord(p, 0, "")},
		{"tail length past the record", tailRecord(p, MaxLogTailBytes+1, "x")},
	} {
		ev.LogTail = []byte("stale")
		if err := d.decode(c.raw, &ev); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ev.LogTail != nil {
			t.Errorf("%s: tail %q, want nil", c.name, ev.LogTail)
		}
	}
}
