package tracer

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// addVerifierLogSeeds adds the real logs of testdata/verifierlog to f's
// corpus, each through add.
func addVerifierLogSeeds(f *testing.F, add func([]byte)) {
	files, err := filepath.Glob(filepath.Join("testdata", "verifierlog", "*.log"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no verifier logs in testdata: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		add(b)
	}
}

// checkSafeText fails if s is invalid UTF-8 or holds a control character
// other than the allowed ones.
func checkSafeText(t *testing.T, what, s, allowed string) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Fatalf("%s: invalid UTF-8 %q", what, s)
	}
	for _, r := range s {
		if (r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0)) && !strings.ContainsRune(allowed, r) {
			t.Fatalf("%s: control character %U in %q", what, r, s)
		}
	}
}

// FuzzSanitizeLogTail: any bytes give safe text, rune for rune (each
// decoded rune, or invalid byte, is one rune out), unchanged where there was
// nothing to replace, and by Name.String's rule; the verdict lines are
// single safe lines of at most MaxVerdictLineBytes bytes.
func FuzzSanitizeLogTail(f *testing.F) {
	addVerifierLogSeeds(f, func(b []byte) { f.Add(b) })
	for _, s := range []string{"", "a\r\nb\x00c\x1b\x7f", "\xc2\x85\xc2\x9f\xff", strings.Repeat("é", 120) + "\n", "\n\t \r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out := SanitizeLogTail(b)
		checkSafeText(t, "SanitizeLogTail", out, "\n\t")
		steps, clean := 0, true
		for rest := b; len(rest) > 0; steps++ {
			r, size := utf8.DecodeRune(rest)
			if r == utf8.RuneError || forbiddenRune(r, true) {
				clean = false
			}
			rest = rest[size:]
		}
		if n := utf8.RuneCountInString(out); n != steps {
			t.Fatalf("%d runes out of %d in %q", n, steps, b)
		}
		if clean && out != string(b) {
			t.Fatalf("clean text %q changed to %q", b, out)
		}
		if strings.Count(out, "\n") != bytes.Count(b, []byte("\n")) {
			t.Fatalf("line breaks of %q changed: %q", b, out)
		}
		checkNameRule(t, b)

		hasLine := len(bytes.Trim(bytes.ReplaceAll(b, []byte("\n"), nil), " \t\r")) > 0
		for _, fn := range []struct {
			name string
			f    func([]byte) string
		}{{"VerdictLine", VerdictLine}, {"RejectionLine", RejectionLine}} {
			v := fn.f(b)
			checkSafeText(t, fn.name, v, "\t")
			if len(v) > MaxVerdictLineBytes {
				t.Fatalf("%s: %d bytes", fn.name, len(v))
			}
			if v != strings.Trim(v, " \t") {
				t.Fatalf("%s: untrimmed %q", fn.name, v)
			}
			if v != "" && !hasLine {
				t.Fatalf("%s: %q from blank text %q", fn.name, v, b)
			}
			// What is returned is a piece of the sanitized text: a line's
			// ends are trimmed, its start kept.
			if !strings.Contains(out, v) {
				t.Fatalf("%s: %q is not in %q", fn.name, v, out)
			}
		}
		if v := VerdictLine(b); (v == "") != !hasLine {
			t.Fatalf("VerdictLine(%q) = %q", b, v)
		}
	})
}

// FuzzParseVerifierStats: any bytes parse without a panic, and what is
// parsed is in the text: a line starting "processed N insns" and each
// non-zero counter after its name. A kernel summary line appended last is
// read exactly, whatever comes before it.
func FuzzParseVerifierStats(f *testing.F) {
	addVerifierLogSeeds(f, func(b []byte) { f.Add(b, uint64(9), uint64(2), uint64(1), uint64(1), uint64(0)) })
	f.Add([]byte("processed 18446744073709551615 insns (limit 1000000) total_states 99999999999999999999\n"), uint64(1<<64-1), uint64(0), uint64(0), uint64(0), uint64(0))
	f.Add([]byte("processed 30 insns (limit 131072), stack depth 0+16\r\nprocessed 1"), uint64(0), uint64(1), uint64(2), uint64(3), uint64(4))
	f.Fuzz(func(t *testing.T, b []byte, processed, maxStates, total, peak, markRead uint64) {
		s, ok := ParseVerifierStats(b)
		if !ok {
			if s != (VerifierStats{}) {
				t.Fatalf("no summary but %+v", s)
			}
		} else {
			if !bytes.HasPrefix(b, fmt.Appendf(nil, "processed %d insns", s.ProcessedInsns)) &&
				!bytes.Contains(b, fmt.Appendf(nil, "\nprocessed %d insns", s.ProcessedInsns)) {
				t.Fatalf("processed %d insns is not in %q", s.ProcessedInsns, b)
			}
			for _, c := range []struct {
				name string
				v    uint64
			}{{"max_states_per_insn", s.MaxStatesPerInsn}, {"total_states", s.TotalStates}, {"peak_states", s.PeakStates}, {"mark_read", s.MarkRead}} {
				if c.v != 0 && !bytes.Contains(b, fmt.Appendf(nil, "%s %d", c.name, c.v)) {
					t.Fatalf("%s %d is not in %q", c.name, c.v, b)
				}
			}
		}
		if !bytes.Contains(b, []byte("processed ")) && ok {
			t.Fatalf("summary parsed from %q", b)
		}

		want := VerifierStats{ProcessedInsns: processed, MaxStatesPerInsn: maxStates, TotalStates: total, PeakStates: peak, MarkRead: markRead}
		line := fmt.Appendf(nil, "processed %d insns (limit %d) max_states_per_insn %d total_states %d peak_states %d mark_read %d",
			processed, 1000000, maxStates, total, peak, markRead)
		text := append(append(bytes.Clone(b), '\n'), line...)
		// Without its '\n', the last number may be cut: it is not read.
		cut := want
		cut.MarkRead = 0
		if got, ok := ParseVerifierStats(text); !ok || got != cut {
			t.Fatalf("%q: got %+v, %v; want %+v", text, got, ok, cut)
		}
		text = append(text, '\n')
		if got, ok := ParseVerifierStats(text); !ok || got != want {
			t.Fatalf("%q: got %+v, %v; want %+v", text, got, ok, want)
		}
		if got, ok := ParseVerifierStats(append(text, "R0 !read_ok\n"...)); !ok || got != want {
			t.Fatalf("followed by a line: got %+v, %v; want %+v", got, ok, want)
		}
		if got, want := RejectionLine(text), RejectionLine(b); got != want {
			t.Fatalf("RejectionLine did not skip the summary: %q, want %q", got, want)
		}
	})
}
