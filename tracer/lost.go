package tracer

import "fmt"

// LostReason names why a load attempt went unrecorded. The values are the
// `reason` label of verifierlog_exporter_events_lost_total.
type LostReason string

const (
	// LostRingBufferFull: the ring buffer had no room for the record
	// (user space fell behind).
	LostRingBufferFull LostReason = "ringbuf_full"
	// LostNoInflight: a load ended with no in-flight entry: the entry was
	// evicted (table overflow) or the load began before the tracer attached.
	LostNoInflight LostReason = "inflight_missing"
	// LostInflightUpdate: the enter hook could not store its entry.
	LostInflightUpdate LostReason = "inflight_update_failed"
	// LostStaleInflight: a thread began a load while its previous one had no
	// exit (a missed kretprobe); the earlier attempt is lost.
	LostStaleInflight LostReason = "inflight_stale"
	// LostDecode: a record user space could not decode.
	LostDecode LostReason = "decode_error"
)

// kernelLostReasons maps the kernel's enum lost_reason to names.
var kernelLostReasons = [...]LostReason{
	verifierlogLostReasonLOST_RINGBUF_FULL:    LostRingBufferFull,
	verifierlogLostReasonLOST_NO_INFLIGHT:     LostNoInflight,
	verifierlogLostReasonLOST_INFLIGHT_UPDATE: LostInflightUpdate,
	verifierlogLostReasonLOST_STALE_INFLIGHT:  LostStaleInflight,
}

// LostReasons lists every reason, in a stable order.
func LostReasons() []LostReason {
	return append(kernelLostReasons[:len(kernelLostReasons):len(kernelLostReasons)], LostDecode)
}

// Lost returns the number of load attempts lost so far, by reason, summed
// over CPUs. Every reason is present, zero or not.
func (t *Tracer) Lost() (map[LostReason]uint64, error) {
	out := make(map[LostReason]uint64, len(kernelLostReasons)+1)
	var perCPU []uint64
	for i, reason := range kernelLostReasons {
		if err := t.maps.Lost.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read lost counter %s: %w", reason, err)
		}
		var sum uint64
		for _, n := range perCPU {
			sum += n
		}
		out[reason] = sum
	}
	out[LostDecode] = t.decodeErrors.Load()
	return out, nil
}
