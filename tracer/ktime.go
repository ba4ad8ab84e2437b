package tracer

import (
	"time"

	"golang.org/x/sys/unix"
)

// WallClock converts the kernel's CLOCK_MONOTONIC timestamps (what
// bpf_ktime_get_ns returns) to wall-clock time. It is the one place that
// does so: the offset between CLOCK_REALTIME and CLOCK_MONOTONIC is read once
// and applied to every record, so that the spans of one chain keep the
// kernel's exact spacing even if NTP steps the wall clock later.
type WallClock struct {
	offsetNs int64 // realtime - monotonic
}

// NewWallClock reads the offset between the two clocks, keeping the
// tightest of a few samples.
func NewWallClock() WallClock {
	best := WallClock{}
	bestWidth := int64(-1)
	for range 5 {
		m1 := clockNs(unix.CLOCK_MONOTONIC)
		r := clockNs(unix.CLOCK_REALTIME)
		m2 := clockNs(unix.CLOCK_MONOTONIC)
		if w := m2 - m1; bestWidth < 0 || w < bestWidth {
			bestWidth = w
			best.offsetNs = r - (m1 + (m2-m1)/2)
		}
	}
	return best
}

// WallClockWithOffset is a WallClock with a known offset (tests, replays).
func WallClockWithOffset(offset time.Duration) WallClock {
	return WallClock{offsetNs: int64(offset)}
}

// Time is the wall-clock time of a CLOCK_MONOTONIC timestamp.
func (c WallClock) Time(monotonicNs uint64) time.Time {
	return time.Unix(0, int64(monotonicNs)+c.offsetNs).UTC()
}

// MonotonicNow is the current CLOCK_MONOTONIC time in nanoseconds.
func MonotonicNow() uint64 { return uint64(clockNs(unix.CLOCK_MONOTONIC)) }

func clockNs(id int32) int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(id, &ts)
	return ts.Nano()
}
