package tracer_test

// The tracer's life: auto picks its attach mode and says why it passed the
// others over, Stop detaches and still delivers what was pending, and
// Suspend and Resume turn recording off and on again.

import (
	"maps"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

func TestAutoChoosesFirstWorkingModeAndExplainsTheOthers(t *testing.T) {
	kerneltest.Require(t)
	tr, err := tracer.New(tracer.Options{Attach: tracer.AttachAuto, Variant: tracer.VariantAuto, RingBufferBytes: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	attempts := tr.Attempts()
	order := []tracer.AttachMode{tracer.AttachFentry, tracer.AttachKprobe, tracer.AttachTracepoint}
	for i, a := range attempts {
		if a.Mode != order[i] {
			t.Fatalf("attempt %d is %s, want %s (cheapest first)", i, a.Mode, order[i])
		}
		last := i == len(attempts)-1
		if last != (a.Err == nil) {
			t.Fatalf("attempt %d (%s): err %v; only the last attempt may succeed", i, a.Mode, a.Err)
		}
		if a.Err != nil && !strings.Contains(a.Err.Error(), string(a.Mode)) {
			t.Errorf("attempt %s: error does not name the mode: %v", a.Mode, a.Err)
		}
	}
	if tr.Mode() != attempts[len(attempts)-1].Mode {
		t.Errorf("mode %s, last attempt %s", tr.Mode(), attempts[len(attempts)-1].Mode)
	}
	if want := os.Getenv("VERIFIERLOG_EXPECT_AUTO"); want != "" && string(tr.Mode()) != want {
		t.Errorf("auto chose %s on %s, want %s (attempts: %v)", tr.Mode(), tr.KernelRelease(), want, attempts)
	}
	if want := os.Getenv("VERIFIERLOG_EXPECT_VARIANT"); want != "" && string(tr.Variant()) != want {
		t.Errorf("auto chose the %s programs on %s, want %s (the kernel lacks %v)", tr.Variant(), tr.KernelRelease(), want, tr.VariantLacks())
	}
	if (tr.Variant() == tracer.VariantCompat) != (len(tr.VariantLacks()) > 0) {
		t.Errorf("auto chose the %s programs, saying the kernel lacks %v: compat must be chosen exactly when something is lacking", tr.Variant(), tr.VariantLacks())
	}
}

func TestStopDetachesAndDeliversPendingRecords(t *testing.T) {
	kerneltest.Require(t)
	sharedHarness(t) // its programs are not this test's
	before, err := kerneltest.ProgramIDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	h, err := startHarness(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	during, err := kerneltest.ProgramIDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ours := map[uint32]bool{}
	for id := range during {
		if !before[id] {
			ours[id] = true
		}
	}
	if want := map[tracer.AttachMode]int{tracer.AttachFentry: 4, tracer.AttachKprobe: 4, tracer.AttachTracepoint: 2}[h.tr.Mode()]; len(ours) != want {
		t.Fatalf("%d programs loaded in %s mode, want %d", len(ours), h.tr.Mode(), want)
	}
	r := loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_pending"})
	h.stop() // right after the load: its record must still be delivered
	found := 0
	for i := range h.events {
		if matches(&h.events[i], r) {
			found++
		}
	}
	if found != 1 {
		t.Errorf("%d records of the load made just before stop, want 1", found)
	}
	if left := kerneltest.ProgramsGone(ours, 10*time.Second); len(left) != 0 {
		t.Errorf("programs %v still loaded after stop", left)
	}
}

// TestSuspendAndResume: a suspended tracer sees no load and counts none
// lost; resumed, it sees the next load exactly once, as before; stopped, it
// cannot be resumed.
func TestSuspendAndResume(t *testing.T) {
	kerneltest.Require(t)
	h, err := startHarness(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	stop := sync.OnceFunc(h.stop)
	defer stop()
	before := h.await(t, loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_susp_a"}))
	lostBefore := h.lost(t)
	if err := h.tr.Suspend(); err != nil {
		t.Fatal(err)
	}
	unseen := loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_susp_b"})
	err = h.tr.Resume()
	if h.tr.Mode() == tracer.AttachFentry && !kerneltest.KernelAtLeast(t, 5, 11) {
		// Before 5.11 a tracing program attaches once: its target goes
		// with its first link.
		if err == nil || !strings.Contains(err.Error(), "5.11") {
			t.Fatalf("Resume in fentry mode before 5.11: %v, want the error that names the kernel's limit", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	after := h.await(t, loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_susp_c"}))
	// The three loads come from this goroutine one after another, so the
	// suspended one's record, had there been one, would be in before c's.
	if got := h.recordsOf(unseen); len(got) != 0 {
		t.Errorf("%d records of a load made while suspended, want none: %+v", len(got), got)
	}
	if before.ProgName.String() != "vlog_susp_a" || after.ProgName.String() != "vlog_susp_c" {
		t.Errorf("records named %q and %q, want vlog_susp_a and vlog_susp_c", before.ProgName, after.ProgName)
	}
	if lost := h.lost(t); !maps.Equal(lost, lostBefore) {
		t.Errorf("lost %v after suspend and resume, %v before", lost, lostBefore)
	}
	if n, err := h.tr.LoadsInFlight(); err != nil || n != 0 {
		t.Errorf("%d loads in flight after the last load (err %v), want 0", n, err)
	}
	stop()
	if err := h.tr.Resume(); err == nil {
		t.Error("Resume after Run returned and Close: no error")
	}
}
