package otel

import (
	"github.com/verifierlog/exporter/tracer"
)

// OtherLoader is the loader label of loaders past the cardinality limit.
const OtherLoader = "other"

// DefaultLoaderLimit is how many distinct loaders get their own label.
const DefaultLoaderLimit = 100

// loaderLabels caps the cardinality of the loader label: the first limit
// distinct comms seen keep their name, every later one is "other". (A
// series, once exported, keeps its label; re-ranking a true top N would
// move counts between series.) Loaders choose their comm, so this is also
// what bounds the memory an unprivileged user can make the exporter spend.
type loaderLabels struct {
	limit int
	names map[tracer.Name]string
}

func newLoaderLabels(limit int) *loaderLabels {
	if limit <= 0 {
		limit = DefaultLoaderLimit
	}
	return &loaderLabels{limit: limit, names: make(map[tracer.Name]string, limit)}
}

// label returns the loader label of comm; it allocates only for a loader it
// has not seen.
func (l *loaderLabels) label(comm tracer.Name) string {
	if s, ok := l.names[comm]; ok {
		return s
	}
	if len(l.names) >= l.limit {
		return OtherLoader
	}
	s := comm.String()
	switch s {
	case "":
		s = "unnamed"
	case OtherLoader: // a process really named "other" is not the overflow
		s = "comm_other"
	}
	l.names[comm] = s
	return s
}

// progTypeLabel bounds prog_type to the kernel's known types.
func progTypeLabel(ev *tracer.LoadEvent) string {
	if ev.Command != tracer.CmdProgLoad {
		return ""
	}
	if s := tracer.ProgTypeName(ev.ProgType); s[0] < '0' || s[0] > '9' {
		return s
	}
	return "unknown"
}

// resultLabel is "ok" or the errno's name.
func resultLabel(ev *tracer.LoadEvent) string {
	if ev.OK() {
		return "ok"
	}
	return ev.ErrnoName()
}
