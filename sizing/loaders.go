package sizing

import "github.com/verifierlog/exporter/tracer"

// OtherLoader is the loader of every loader past the limit.
const OtherLoader = "other"

// DefaultLoaderLimit is how many distinct loaders keep their own name.
const DefaultLoaderLimit = 100

// Loaders names the loader of each attempt and caps how many there are:
// the first limit distinct comms seen keep their name, every later one is
// OtherLoader. (A loader, once exported as a label, keeps it; re-ranking a
// true top N would move counts between series.) Loaders choose their comm,
// so this also bounds the memory an unprivileged user can make the
// exporter spend.
type Loaders struct {
	limit int
	names map[tracer.Name]string
}

// NewLoaders caps the loaders at limit (<= 0: DefaultLoaderLimit).
func NewLoaders(limit int) *Loaders {
	if limit <= 0 {
		limit = DefaultLoaderLimit
	}
	return &Loaders{limit: limit, names: make(map[tracer.Name]string, limit)}
}

// Name returns the loader of comm; it allocates only for a loader it has
// not seen.
func (l *Loaders) Name(comm tracer.Name) string {
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

// Len is the number of loaders with their own name.
func (l *Loaders) Len() int { return len(l.names) }
