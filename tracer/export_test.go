package tracer

// LoadsInFlight reads the BPF programs' count of loads between their enter
// and exit hooks.
func (t *Tracer) LoadsInFlight() (uint64, error) {
	var n uint64
	err := t.hooks.loadsInFlight.Get(&n)
	return n, err
}
