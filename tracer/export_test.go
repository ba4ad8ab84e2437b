package tracer

// LoadsInFlight reads the BPF programs' count of loads between their enter
// and exit hooks.
func (t *Tracer) LoadsInFlight() (uint64, error) {
	var n uint64
	err := t.hooks.LoadsInFlight.Get(&n)
	return n, err
}

// CountsLoadsBegunBeforeAttach reports whether a load already running when
// the tracer attached is counted when it ends: in tracepoint mode while the
// attach grace lasts. fexit and kretprobe never fire for a call that was
// entered before they were attached (the return hook is set up at entry).
func (t *Tracer) CountsLoadsBegunBeforeAttach() (bool, error) {
	if t.mode != AttachTracepoint {
		return false, nil
	}
	var v uint32
	err := t.hooks.AttachGrace.Get(&v)
	return v != 0, err
}

// The sizes of a record without and with the log tail.
const (
	RecordSize     = recordSize
	TailRecordSize = tailRecordSize
)

// LastRecordSize is the size of the last record decoded. Only Run's
// goroutine may call it: from the handler, about the record just handed.
func (t *Tracer) LastRecordSize() int { return t.dec.lastSize }
