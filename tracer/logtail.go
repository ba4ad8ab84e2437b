package tracer

import (
	"bytes"
	"strings"
	"unicode/utf8"
)

// The verifier log tail (LoadEvent.LogTail) is the end of the text the
// kernel left in the loader's buffer: whatever the loader's program made
// the verifier print, up to and including the statistics the verifier
// prints last. These functions read it without trusting it: any bytes at
// all are handled, and nothing they return carries a control character
// other than a newline or a tab, nor invalid UTF-8.

// SanitizeLogTail returns b as text that is safe to print, log or export:
// invalid UTF-8 and every control character other than '\n' and '\t' (C0,
// DEL, C1; NUL and '\r' included) become U+FFFD. It is the rule Name.String
// applies to comm and prog_name, with line breaks and tabs kept.
func SanitizeLogTail(b []byte) string {
	return sanitize(b, true)
}

// sanitize replaces invalid UTF-8 and control characters with U+FFFD;
// with keepLines, '\n' and '\t' are kept. The check for a clean ASCII
// text first spares the copy rune by rune in the usual case.
func sanitize(b []byte, keepLines bool) string {
	clean := true
	for _, c := range b {
		if forbiddenByte(c, keepLines) {
			clean = false
			break
		}
	}
	if clean {
		return string(b)
	}
	out := make([]rune, 0, len(b))
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError || forbiddenRune(r, keepLines) {
			r = utf8.RuneError
		}
		out = append(out, r)
		b = b[size:]
	}
	return string(out)
}

// forbiddenByte reports whether c needs a closer look: a control
// character or the start of a multi-byte sequence.
func forbiddenByte(c byte, keepLines bool) bool {
	if keepLines && (c == '\n' || c == '\t') {
		return false
	}
	return c < 0x20 || c == 0x7f || c >= utf8.RuneSelf
}

// forbiddenRune reports whether r is a control character (C0, DEL, C1)
// that must not pass.
func forbiddenRune(r rune, keepLines bool) bool {
	if keepLines && (r == '\n' || r == '\t') {
		return false
	}
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0)
}

// MaxVerdictLineBytes bounds VerdictLine's result.
const MaxVerdictLineBytes = 200

// VerdictLine returns the last non-empty line of the tail, sanitized as
// SanitizeLogTail does (tabs, from source lines, kept), at most
// MaxVerdictLineBytes bytes long (cut at a rune boundary, keeping the
// line's beginning, with no space left at the cut). Lines end at '\n'; a
// '\r' before it, and spaces and tabs around the line, are not part of
// the line. A line of only spaces,
// tabs or '\r' is empty. It returns "" when there is no such line.
//
// Since Linux 5.2 the verifier prints its statistics last, on success and
// on rejection alike, so on those kernels the last line of a whole log is
// the "processed N insns ..." line; RejectionLine skips it.
func VerdictLine(tail []byte) string {
	line, _ := lastLine(tail, func([]byte) bool { return true })
	return clip(sanitize(line, true))
}

// RejectionLine returns the last non-empty line of the tail that is not
// one of the statistics lines the verifier prints at the end of every log
// ("processed N insns ...", "verification time N usec", "stack depth
// ..."), cut and sanitized as VerdictLine's. On a load the verifier
// rejected it is the verifier's complaint (for example "R0 !read_ok"); on
// a success it is the last line of the program's trace, or "" at log
// level 1. It returns "" when there is no such line.
func RejectionLine(tail []byte) string {
	line, _ := lastLine(tail, func(l []byte) bool { return !statisticsLine(l) })
	return clip(sanitize(line, true))
}

// lastLine returns the last line of b, trimmed, that is non-empty and
// accepted by keep, and whether there was one.
func lastLine(b []byte, keep func([]byte) bool) ([]byte, bool) {
	for end := len(b); end > 0; {
		start := bytes.LastIndexByte(b[:end], '\n') + 1
		line := bytes.Trim(b[start:end], " \t\r")
		if len(line) > 0 && keep(line) {
			return line, true
		}
		end = start - 1
	}
	return nil, false
}

// statisticsLine reports whether a trimmed line is one of the lines
// print_verification_stats writes (see ParseVerifierStats).
func statisticsLine(line []byte) bool {
	if _, ok := parseStatsLine(line); ok {
		return true
	}
	return bytes.HasPrefix(line, []byte("verification time ")) || bytes.HasPrefix(line, []byte("stack depth "))
}

// clip cuts s to at most MaxVerdictLineBytes bytes at a rune boundary,
// and drops the spaces and tabs the cut leaves at its end.
func clip(s string) string {
	if len(s) <= MaxVerdictLineBytes {
		return s
	}
	n := MaxVerdictLineBytes
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.TrimRight(s[:n], " \t")
}

// VerifierStats are the counters of the verifier's summary line. A field
// the line does not carry (older kernels print fewer) is 0.
type VerifierStats struct {
	ProcessedInsns   uint64 // instructions the verifier walked, over all paths
	TotalStates      uint64 // states it stored to prune paths
	PeakStates       uint64 // most states stored at once
	MaxStatesPerInsn uint64 // most states stored for one instruction
	MarkRead         uint64 // longest walk marking registers read
}

// ParseVerifierStats reads the last summary line in tail: the line the
// verifier prints at the end of a log (print_verification_stats in
// kernel/bpf/verifier.c), on success and, since 5.2, on rejection too.
// Linux 5.10 and 6.1 have the same format string:
//
//	"processed %d insns (limit %d) max_states_per_insn %d "
//	"total_states %d peak_states %d mark_read %d\n"
//
// (5.10: Rtoax/linux-5.10.13 kernel/bpf/verifier.c, commit 0570033e;
// 6.1: CosmicBulb/android14-gs-pixel-6.1-sched-bpf kernel/bpf/verifier.c,
// commit a1235231), and Linux 6.18 prints the same line (the logs in
// testdata/verifierlog); 6.12, between them, was not read from its
// source. Before 5.2, do_check printed the count itself, as
// "processed %d insns (limit %d), stack depth %d+%d..." and, earlier,
// shorter forms starting "processed %d insns": there only ProcessedInsns
// is read.
//
// The line must start with "processed N insns"; the other counters are
// read by name wherever they appear after it, each from its first
// occurrence and only when one space separates it from its value, so
// fields added or dropped by other kernels are tolerated. A counter is
// read only if its digits end at a space, a ',' or ')' or the line's end
// at '\n': a line the tail cuts short loses its last, possibly truncated,
// number. A number that does not fit in a uint64, or has a leading zero,
// is not a number the kernel printed: the line is then not a summary line
// (for ProcessedInsns) or the counter is left 0. The bool is false when
// no line starts with "processed N insns".
func ParseVerifierStats(tail []byte) (VerifierStats, bool) {
	for end := len(tail); end >= 0; {
		start := bytes.LastIndexByte(tail[:end], '\n') + 1
		line := tail[start:end]
		if end < len(tail) {
			// A '\n' follows: the line's last number is whole.
			line = tail[start : end+1]
		}
		if s, ok := parseStatsLine(line); ok {
			return s, true
		}
		if start == 0 {
			break
		}
		end = start - 1
	}
	return VerifierStats{}, false
}

var processedPrefix = []byte("processed ")

// parseStatsLine parses one line, with its '\n' if it had one.
func parseStatsLine(line []byte) (VerifierStats, bool) {
	var s VerifierStats
	rest, ok := bytes.CutPrefix(line, processedPrefix)
	if !ok {
		return s, false
	}
	n, rest, ok := number(rest, true)
	if !ok {
		return s, false
	}
	rest, ok = bytes.CutPrefix(rest, []byte(" insns"))
	if !ok || (len(rest) > 0 && rest[0] != ' ' && rest[0] != ',' && rest[0] != '\n' && rest[0] != '\r') {
		return s, false
	}
	s.ProcessedInsns = n
	fields := []struct {
		name []byte
		dst  *uint64
	}{
		{[]byte("max_states_per_insn"), &s.MaxStatesPerInsn},
		{[]byte("total_states"), &s.TotalStates},
		{[]byte("peak_states"), &s.PeakStates},
		{[]byte("mark_read"), &s.MarkRead},
	}
	var read [4]bool // a counter is read from its first occurrence only
	for len(rest) > 0 {
		tok, after := nextToken(rest)
		rest = after
		for i, f := range fields {
			if read[i] || !bytes.Equal(tok, f.name) {
				continue
			}
			read[i] = true
			if len(rest) > 0 && rest[0] == ' ' {
				if val, after, ok := number(rest[1:], false); ok {
					*f.dst = val
					rest = after
				}
			}
			break
		}
	}
	return s, true
}

// nextToken returns the space-separated token at the start of b (leading
// spaces skipped) and what follows it; at the line's '\n' it returns
// nothing more.
func nextToken(b []byte) (tok, rest []byte) {
	b = bytes.TrimLeft(b, " ")
	i := bytes.IndexAny(b, " \n")
	switch {
	case i < 0:
		return b, nil
	case i == 0: // b starts with '\n'
		return nil, nil
	}
	return b[:i], b[i:]
}

// number reads the decimal digits at the start of b, as %d prints them:
// no sign, no leading zero. They must fit in a uint64 and end at a space,
// ',', ')', '\r' or '\n' (or, with atEnd, at the end of b).
func number(b []byte, atEnd bool) (uint64, []byte, bool) {
	var n uint64
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		d := uint64(b[i] - '0')
		if n > (^uint64(0)-d)/10 {
			return 0, b, false
		}
		n = n*10 + d
	}
	if i == 0 || (i > 1 && b[0] == '0') { // %d prints no leading zeros
		return 0, b, false
	}
	if i == len(b) {
		return n, b[i:], atEnd
	}
	switch b[i] {
	case ' ', ',', ')', '\r', '\n':
		return n, b[i:], true
	}
	return 0, b, false
}
