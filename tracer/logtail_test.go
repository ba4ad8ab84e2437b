package tracer

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// The logs in testdata/verifierlog were written by Linux 6.18 for
// internal/loadgen's programs (valid, rejected, long) and, for
// branches_level2.log, a socket filter with two conditional jumps loaded
// with cilium/ebpf at log level 2, so that the verifier stores states:
//
//	valid_level1.log        Valid, log level 1: the summary line alone
//	valid_level2.log        Valid, log level 2
//	valid_stats.log         Valid, log level 1|4: verification time, stack depth, summary
//	rejected_level1.log     Rejected (EACCES "R0 !read_ok"), log level 1
//	rejected_level2.log     Rejected with 4 instructions, log level 2
//	long_level2_enospc.log  LongLog of 64 instructions, log level 2, log_size 1024:
//	                        ENOSPC, the buffer holds the log's last 1023 bytes
//	branches_level2.log     two branches, log level 2: total_states 1 peak_states 1
func readVerifierLog(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "verifierlog", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseVerifierStatsRealLogs(t *testing.T) {
	for _, c := range []struct {
		file string
		want VerifierStats
	}{
		{"valid_level1.log", VerifierStats{ProcessedInsns: 2}},
		{"valid_level2.log", VerifierStats{ProcessedInsns: 2}},
		{"valid_stats.log", VerifierStats{ProcessedInsns: 2}},
		{"rejected_level1.log", VerifierStats{ProcessedInsns: 1}},
		{"rejected_level2.log", VerifierStats{ProcessedInsns: 4}},
		{"long_level2_enospc.log", VerifierStats{ProcessedInsns: 64}},
		{"branches_level2.log", VerifierStats{ProcessedInsns: 9, TotalStates: 1, PeakStates: 1}},
	} {
		log := readVerifierLog(t, c.file)
		got, ok := ParseVerifierStats(log)
		if !ok || got != c.want {
			t.Errorf("%s: got %+v, %v; want %+v", c.file, got, ok, c.want)
		}
		// Every tail of the log: the summary is read exactly when the tail
		// reaches back to the start of its line, and then in full.
		line := len(log) - (bytes.LastIndex(log, []byte("\nprocessed ")) + 1)
		for n := 0; n <= len(log); n++ {
			got, ok := ParseVerifierStats(log[len(log)-n:])
			if want := n >= line; ok != want || (ok && got != c.want) {
				t.Fatalf("%s: last %d bytes (summary line %d bytes): got %+v, %v", c.file, n, line, got, ok)
			}
		}
	}
}

func TestParseVerifierStatsKernelFormats(t *testing.T) {
	for _, c := range []struct {
		name, text string
		want       VerifierStats
		ok         bool
	}{
		// print_verification_stats: 5.10 and 6.1 sources, 6.18 output
		// (see ParseVerifierStats).
		{"5.10-6.18", "processed 520 insns (limit 1000000) max_states_per_insn 3 total_states 46 peak_states 44 mark_read 7\n",
			VerifierStats{ProcessedInsns: 520, MaxStatesPerInsn: 3, TotalStates: 46, PeakStates: 44, MarkRead: 7}, true},
		{"with stats lines", "verification time 355643 usec\nstack depth 8+0+16\nprocessed 1000001 insns (limit 1000000) max_states_per_insn 31 total_states 20005 peak_states 5003 mark_read 12\n",
			VerifierStats{ProcessedInsns: 1000001, MaxStatesPerInsn: 31, TotalStates: 20005, PeakStates: 5003, MarkRead: 12}, true},
		// do_check's own line before 5.2, and shorter forms before it.
		{"do_check with limit", "processed 30 insns (limit 131072), stack depth 0+16\n", VerifierStats{ProcessedInsns: 30}, true},
		{"stack depth only", "processed 30 insns, stack depth 16\n", VerifierStats{ProcessedInsns: 30}, true},
		{"count only", "processed 30 insns\n", VerifierStats{ProcessedInsns: 30}, true},
		// Fields in another order, an unknown one among them, one missing.
		{"reordered", "processed 7 insns (limit 1000000) total_states 5 jmp_allocs 9 peak_states 4 max_states_per_insn 2\n",
			VerifierStats{ProcessedInsns: 7, TotalStates: 5, PeakStates: 4, MaxStatesPerInsn: 2}, true},
		{"first occurrence", "processed 7 insns total_states 0 total_states 5\n", VerifierStats{ProcessedInsns: 7}, true},
	} {
		got, ok := ParseVerifierStats([]byte(c.text))
		if ok != c.ok || got != c.want {
			t.Errorf("%s: got %+v, %v; want %+v, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestParseVerifierStatsEdges(t *testing.T) {
	full := "processed 9 insns (limit 1000000) max_states_per_insn 2 total_states 3 peak_states 4 mark_read 5"
	all := VerifierStats{ProcessedInsns: 9, MaxStatesPerInsn: 2, TotalStates: 3, PeakStates: 4, MarkRead: 5}
	cutLast := all
	cutLast.MarkRead = 0
	for _, c := range []struct {
		name, text string
		want       VerifierStats
		ok         bool
	}{
		{"empty", "", VerifierStats{}, false},
		{"newline only", "\n", VerifierStats{}, false},
		{"no summary", "0: (95) exit\nR0 !read_ok\n", VerifierStats{}, false},
		// Without its '\n' the line may have been cut inside its last number.
		{"no newline", full, cutLast, true},
		{"newline", full + "\n", all, true},
		{"CRLF", strings.ReplaceAll("R0 !read_ok\n"+full+"\n", "\n", "\r\n"), all, true},
		{"NUL before", "R0\x00 !read_ok\n" + full + "\n", all, true},
		{"NUL inside the line", "processed 9 insns (limit 1000000) max_states_per_insn 2\x00 total_states 3\n",
			VerifierStats{ProcessedInsns: 9, TotalStates: 3}, true},
		{"followed by other lines", full + "\nlibbpf: prog 'x': failed to load\n\n", all, true},
		{"last summary wins", "processed 1 insns (limit 1000000) total_states 8\n" + full + "\nmore\n", all, true},
		{"processed count overflows", "processed 18446744073709551616 insns (limit 1000000) total_states 3\n", VerifierStats{}, false},
		{"processed count at max", "processed 18446744073709551615 insns\n", VerifierStats{ProcessedInsns: 1<<64 - 1}, true},
		{"overflowing counter left 0", "processed 9 insns (limit 1000000) max_states_per_insn 2 total_states 99999999999999999999 peak_states 4 mark_read 5\n",
			VerifierStats{ProcessedInsns: 9, MaxStatesPerInsn: 2, PeakStates: 4, MarkRead: 5}, true},
		{"earlier summary behind an overflowing one", full + "\nprocessed 99999999999999999999 insns\n", all, true},
		{"not at the line start", "reprocessed 9 insns\n", VerifierStats{}, false},
		{"indented", " processed 9 insns\n", VerifierStats{}, false},
		{"no insns", "processed 9\n", VerifierStats{}, false},
		{"insns cut", "processed 9 ins", VerifierStats{}, false},
		{"insnsX", "processed 9 insnsX\n", VerifierStats{}, false},
		{"negative", "processed -1 insns\n", VerifierStats{}, false},
		{"not a number", "processed 9x insns\n", VerifierStats{}, false},
		{"counter not a number", "processed 9 insns total_states 3x peak_states 4\n", VerifierStats{ProcessedInsns: 9, PeakStates: 4}, true},
		{"leading zero", "processed 09 insns\n", VerifierStats{}, false},
		{"counter with a leading zero", "processed 0 insns peak_states 010 total_states 0 mark_read 3\n", VerifierStats{MarkRead: 3}, true},
		{"two spaces before a value", "processed 0 insns total_states  1 peak_states 2\n", VerifierStats{PeakStates: 2}, true},
		{"counter without value", "processed 9 insns total_states\n", VerifierStats{ProcessedInsns: 9}, true},
	} {
		got, ok := ParseVerifierStats([]byte(c.text))
		if ok != c.ok || got != c.want {
			t.Errorf("%s: got %+v, %v; want %+v, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestSanitizeLogTail(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"0: (95) exit\nR0 !read_ok\n", "0: (95) exit\nR0 !read_ok\n"},
		{"a\tb\n", "a\tb\n"},
		{"a\r\nb", "a\uFFFD\nb"},
		{"a\x00b", "a\uFFFDb"},
		{"\x1b[31mred", "\uFFFD[31mred"},
		{"del\x7f", "del\uFFFD"},
		{"c1\u0085\u009b", "c1\uFFFD\uFFFD"},
		{"bad\xff\xfe", "bad\uFFFD\uFFFD"},
		{"cut \xe2\x82", "cut \uFFFD\uFFFD"},
		{"é\u00a0€ 😀", "é\u00a0€ 😀"},
		{"\u2028 kept", "\u2028 kept"},
	} {
		if got := SanitizeLogTail([]byte(c.in)); got != c.want {
			t.Errorf("SanitizeLogTail(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	for _, f := range []string{"valid_level2.log", "rejected_level2.log", "branches_level2.log", "long_level2_enospc.log"} {
		log := readVerifierLog(t, f)
		if got := SanitizeLogTail(log); got != string(log) {
			t.Errorf("%s changed: %q", f, got)
		}
	}
}

// Names and tails share one rule (sanitize): for what fits in a Name (no
// NUL, which ends a name) and holds no '\n' or '\t' (which a name does
// not keep), both give the same text.
func TestSanitizeLogTailIsNameRule(t *testing.T) {
	for _, in := range []string{"", "bpftool", "a\x01b", "\x7f\x80\x9f\xa0", "é€", "\xff\xfe\xfd", "\xe2\x82", "0123456789abcdef", "\u0085x\u009fy", "\r"} {
		checkNameRule(t, []byte(in))
	}
}

func checkNameRule(t *testing.T, b []byte) {
	t.Helper()
	if len(b) > len(Name{}) || bytes.ContainsAny(b, "\x00\n\t") {
		return
	}
	var n Name
	copy(n[:], b)
	if got, want := SanitizeLogTail(b), n.String(); got != want {
		t.Fatalf("SanitizeLogTail(%q) = %q, Name.String = %q", b, got, want)
	}
}

func TestVerdictLine(t *testing.T) {
	long := strings.Repeat("x", 300)
	for _, c := range []struct{ name, in, verdict, rejection string }{
		{"empty", "", "", ""},
		{"blank lines", "\n \n\t\r\n\n", "", ""},
		{"no newline", "R0 !read_ok", "R0 !read_ok", "R0 !read_ok"},
		{"CRLF", "a\r\nR0 !read_ok\r\n", "R0 !read_ok", "R0 !read_ok"},
		{"trailing blank lines", "R0 !read_ok\n\n  \n", "R0 !read_ok", "R0 !read_ok"},
		{"NUL and controls", "bad\x00line\x1b[0m\n", "bad\uFFFDline\uFFFD[0m", "bad\uFFFDline\uFFFD[0m"},
		{"invalid UTF-8", "r1 \xff\n", "r1 \uFFFD", "r1 \uFFFD"},
		{"tab inside kept", "; x =\t1; @ prog.c:12\n", "; x =\t1; @ prog.c:12", "; x =\t1; @ prog.c:12"},
		{"spaces trimmed", "  last line\t \n", "last line", "last line"},
		{"summary last", "R0 !read_ok\nprocessed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n",
			"processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0", "R0 !read_ok"},
		{"statistics lines skipped", "invalid access\nverification time 12 usec\nstack depth 0+8\nprocessed 3 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n",
			"processed 3 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0", "invalid access"},
		{"summary alone", "processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n",
			"processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0", ""},
		{"long line cut", "first\n" + long + "\n", long[:200], long[:200]},
		{"cut at a rune boundary", strings.Repeat("é", 150), strings.Repeat("é", 100), strings.Repeat("é", 100)},
		{"cut before a replacement", strings.Repeat("a", 199) + "\xff", strings.Repeat("a", 199), strings.Repeat("a", 199)},
		{"no space at the cut", strings.Repeat("a", 199) + " b", strings.Repeat("a", 199), strings.Repeat("a", 199)},
		{"replacement that fits", strings.Repeat("a", 197) + "\xff", strings.Repeat("a", 197) + "\uFFFD", strings.Repeat("a", 197) + "\uFFFD"},
	} {
		if got := VerdictLine([]byte(c.in)); got != c.verdict {
			t.Errorf("%s: VerdictLine = %q, want %q", c.name, got, c.verdict)
		}
		if got := RejectionLine([]byte(c.in)); got != c.rejection {
			t.Errorf("%s: RejectionLine = %q, want %q", c.name, got, c.rejection)
		}
	}
}

func TestVerdictLineRealLogs(t *testing.T) {
	const summary2 = "processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0"
	for _, c := range []struct{ file, verdict, rejection string }{
		{"valid_level1.log", summary2, ""},
		{"valid_stats.log", summary2, ""},
		{"valid_level2.log", summary2, "1: (95) exit"},
		{"rejected_level1.log", "processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0", "R0 !read_ok"},
		{"rejected_level2.log", "processed 4 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0", "R0 !read_ok"},
		{"long_level2_enospc.log", "processed 64 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0", "63: (95) exit"},
	} {
		log := readVerifierLog(t, c.file)
		if got := VerdictLine(log); got != c.verdict {
			t.Errorf("%s: VerdictLine = %q, want %q", c.file, got, c.verdict)
		}
		if got := RejectionLine(log); got != c.rejection {
			t.Errorf("%s: RejectionLine = %q, want %q", c.file, got, c.rejection)
		}
		if !utf8.ValidString(VerdictLine(log)) {
			t.Errorf("%s: invalid UTF-8", c.file)
		}
	}
}
