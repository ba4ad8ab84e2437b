package tracer

import (
	"encoding/json"
	"testing"
)

// TestRecordLogTail: a record with a log tail has it under log_tail,
// sanitized, and one without has no such key.
func TestRecordLogTail(t *testing.T) {
	ev := LoadEvent{Command: CmdProgLoad, Ret: -13, LogLevel: 1, LogSize: 4096, HasLogBuf: true,
		LogTail: []byte("R0 !read_ok\x1b]0;x\x07\xff\n\tprocessed 2 insns\n")}
	b, err := json.Marshal(ev.Record(WallClockWithOffset(0)))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if want := "R0 !read_ok\ufffd]0;x\ufffd\ufffd\n\tprocessed 2 insns\n"; got["log_tail"] != want {
		t.Errorf("log_tail %q, want %q", got["log_tail"], want)
	}
	ev.LogTail = nil
	b, _ = json.Marshal(ev.Record(WallClockWithOffset(0)))
	got = nil
	_ = json.Unmarshal(b, &got)
	if v, ok := got["log_tail"]; ok {
		t.Errorf("record without a tail has log_tail %q", v)
	}
	if _, ok := got["attach_mode"]; !ok {
		t.Errorf("keys lost: %s", b)
	}
}
