package tracer_test

// Delivery under pressure: loads from many threads at once are all
// recorded, and a full ring buffer counts every record it drops.

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/verifierlog/exporter/internal/kerneltest"
	"github.com/verifierlog/exporter/internal/loadgen"
	"github.com/verifierlog/exporter/tracer"
)

func TestConcurrentLoadsAreAllRecordedWithNoneLost(t *testing.T) {
	h := sharedHarness(t)
	const threads, perThread = 8, 500
	before := h.lost(t)
	results := make([][]loadgen.Result, threads)
	var wg sync.WaitGroup
	for i := range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perThread {
				p := loadgen.ProgLoad{Program: loadgen.Valid, Name: fmt.Sprintf("vlog_c%d", i)}
				if j%2 == 1 {
					p = loadgen.ProgLoad{Program: loadgen.LongLog, Insns: 8, Name: p.Name, LogLevel: loadgen.LogLevel2, LogSize: 128}
				}
				r, err := loadgen.LoadProgram(p)
				if err != nil {
					t.Error(err)
					return
				}
				results[i] = append(results[i], r)
			}
		}()
	}
	wg.Wait()
	for i := range results {
		for _, r := range results[i] {
			ev := h.await(t, r)
			if ev.Ret != int64(r.Ret) {
				t.Fatalf("thread %d: record ret %d, kernel %d", i, ev.Ret, r.Ret)
			}
		}
	}
	after := h.lost(t)
	for reason, n := range after {
		if n != before[reason] {
			t.Errorf("lost %s: %d during the storm", reason, n-before[reason])
		}
	}
}

func TestFullRingBufferCountsEveryDrop(t *testing.T) {
	kerneltest.Require(t)
	// One page holds about fifteen records; while the handler is blocked
	// the ring fills and every later reservation must be counted.
	opts := testOptions(t)
	opts.RingBufferBytes = 4096
	tr, err := tracer.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	release := make(chan struct{})
	var delivered []tracer.LoadEvent
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	pid := uint32(os.Getpid())
	blocked := false
	go func() {
		done <- tr.Run(ctx, func(ev *tracer.LoadEvent) {
			if !blocked {
				blocked = true
				<-release
			}
			if ev.PID == pid {
				delivered = append(delivered, *ev)
			}
		})
	}()
	const loads = 200
	var results []loadgen.Result
	for range loads {
		results = append(results, loadProg(t, loadgen.ProgLoad{Program: loadgen.Valid, Name: "vlog_full"}))
	}
	lost, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	close(release)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// An attempt the kernel answered EAGAIN (loadgen retries it, as libbpf
	// does) is a load of its own: it is delivered or dropped like the rest,
	// so the count to reach is every attempt, and the records to count are
	// every one of this test's, not only those of a result's last attempt.
	issued := uint64(0)
	for _, r := range results {
		issued += 1 + uint64(r.EAGAINRetries)
	}
	ours := uint64(0)
	for i := range delivered {
		if delivered[i].ProgName.String() == "vlog_full" {
			ours++
		}
	}
	full := lost[tracer.LostRingBufferFull]
	if full == 0 || ours == issued {
		t.Fatalf("a 4 KiB ring buffer took %d of %d loads with %d drops: it never filled", ours, issued, full)
	}
	for _, r := range results {
		n := 0
		for i := range delivered {
			if matches(&delivered[i], r) {
				n++
			}
		}
		if n > 1 {
			t.Fatalf("%d records for one call (tid %d)", n, r.TID)
		}
	}
	// Run this package alone (go test -p 1) so that no other process loads
	// programs meanwhile: then every load is either delivered or counted.
	if ours+full != issued {
		t.Fatalf("%d delivered + %d counted as ringbuf_full = %d, want the %d loads issued (%d of them EAGAIN retries)",
			ours, full, ours+full, issued, issued-loads)
	}
}
