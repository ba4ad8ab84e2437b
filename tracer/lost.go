package tracer

import (
	"fmt"

	"github.com/cilium/ebpf/link"
)

// LostReason names why a load attempt went unrecorded. The values are the
// `reason` label of verifierlog_exporter_events_lost_total.
type LostReason string

const (
	// LostRingBufferFull: the ring buffer had no room for the record
	// (user space fell behind).
	LostRingBufferFull LostReason = "ringbuf_full"
	// LostNoInflight: a load ended with no in-flight entry: the entry could
	// not be stored (LostInflightUpdate), or the load began before the
	// tracer attached (tracepoint mode, within Options.AttachGrace; fentry
	// and kprobe never see such a load end).
	LostNoInflight LostReason = "inflight_missing"
	// LostInflightUpdate: the enter hook could not get its thread's
	// task-storage slot (out of memory, or task storage busy on that CPU).
	// The load's exit then counts it again as LostNoInflight.
	LostInflightUpdate LostReason = "inflight_update_failed"
	// LostStaleInflight: a thread began a load while its previous one had no
	// exit (a missed kretprobe); the earlier attempt is lost.
	LostStaleInflight LostReason = "inflight_stale"
	// LostKretprobeMissed: kprobe mode's return probe did not run (more
	// loads at once than its maxactive), read from the kernel's link info
	// (Linux 6.8+; 0 before). If that thread loads again, the lost attempt
	// is also counted as LostStaleInflight.
	LostKretprobeMissed LostReason = "kretprobe_missed"
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
	return append(kernelLostReasons[:len(kernelLostReasons):len(kernelLostReasons)], LostKretprobeMissed, LostDecode)
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
	out[LostKretprobeMissed] = t.kretprobeMissed()
	return out, nil
}

// kretprobeMissed sums the kernel's missed counts of the kretprobe links,
// where the kernel reports them.
func (t *Tracer) kretprobeMissed() uint64 {
	if t.hooks == nil {
		return 0
	}
	var n uint64
	for _, l := range t.hooks.links {
		info, err := l.Info()
		if err != nil {
			continue
		}
		if pe := info.PerfEvent(); pe != nil && pe.Type == link.PerfEventKretprobe {
			if k := pe.Kprobe(); k != nil {
				n += k.Missed
			}
		}
	}
	return n
}
