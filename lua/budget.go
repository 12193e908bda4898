package lua

import (
	"errors"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// errBudget is what a script sees when its callback ran out of time.
var errBudget = errors.New("lua: script exceeded its time budget")

// errMemory is what a script sees when its callback allocated more than
// its memory budget.
var errMemory = errors.New("lua: script exceeded its memory budget")

// DefaultMemoryBudget bounds what one callback may allocate.
const DefaultMemoryBudget = 16 << 20

var allocSample = func() []metrics.Sample {
	return []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
}

// allocatedBytes is the process's cumulative heap allocation.
func allocatedBytes(s []metrics.Sample) uint64 {
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// slice is how often a running callback's budget is looked at: its time,
// and the memory it allocated.
const slice = 5 * time.Millisecond

// budget is the context a state's threads run with: gopher-lua checks
// Done() between instructions and aborts when it is closed. One budget
// lives as long as its state and is armed only while a callback runs; once
// it fired the state is discarded, so the channel never needs reopening.
// It needs no goroutine and allocates nothing per callback.
//
// It also bounds memory. gopher-lua has no allocator hook, so while a
// callback runs longer than a slice the timer looks at the process's
// cumulative heap allocation every slice and fires when the callback
// allocated more than memLimit since its first slice ended. The counter is
// process-wide, so other streams' allocations count too: the limit is far
// above what a proxy allocates in one callback's time. What a single
// instruction allocates (s = s .. s) is seen only after it returns.
type budget struct {
	limit    time.Duration
	done     chan struct{}
	expired  atomic.Bool
	outOfMem atomic.Bool
	timer    *time.Timer
	memLimit uint64

	mu        sync.Mutex
	armed     bool
	deadline  time.Time     // when the time runs out (armed)
	remaining time.Duration // time left (paused)
	allocBase uint64        // counter value the callback's allocation is measured from; 0: not yet read
	pausedAt  uint64        // counter value when paused
	sample    []metrics.Sample
}

func newBudget(limit time.Duration) *budget {
	b := &budget{limit: limit, done: make(chan struct{}), memLimit: DefaultMemoryBudget * raceScale, sample: allocSample()}
	b.timer = time.AfterFunc(time.Hour, b.tick)
	b.timer.Stop()
	return b
}

func (b *budget) fire() {
	if b.expired.CompareAndSwap(false, true) {
		close(b.done)
	}
}

// arm starts a callback's budget of d. It reads no counter: a callback
// that ends within a slice (nearly all of them) costs a timer reset.
func (b *budget) arm(d time.Duration) {
	b.mu.Lock()
	b.armed, b.deadline, b.allocBase = true, time.Now().Add(d), 0
	b.timer.Reset(min(d, slice))
	b.mu.Unlock()
}

// disarm stops the clock and reports whether the budget held.
func (b *budget) disarm() bool {
	b.mu.Lock()
	b.armed = false
	b.timer.Stop()
	b.mu.Unlock()
	return !b.expired.Load()
}

// tick is the timer: every slice while armed it checks memory and time.
func (b *budget) tick() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.armed {
		return
	}
	if b.memLimit > 0 {
		now := allocatedBytes(b.sample)
		if b.allocBase == 0 {
			b.allocBase = now
		} else if now-b.allocBase > b.memLimit {
			b.outOfMem.Store(true)
			b.fire()
			return
		}
	}
	left := time.Until(b.deadline)
	if left <= 0 {
		b.fire()
		return
	}
	b.timer.Reset(min(left, slice))
}

// pause stops the clock while the script waits for something that is not
// script time (a synchronous httpCall); resume restarts it.
func (b *budget) pause() {
	b.mu.Lock()
	b.armed = false
	b.timer.Stop()
	b.remaining = time.Until(b.deadline)
	if b.allocBase != 0 {
		b.pausedAt = allocatedBytes(b.sample)
	}
	b.mu.Unlock()
}

func (b *budget) resume() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.remaining <= 0 {
		b.fire()
		return
	}
	if b.allocBase != 0 {
		// What others allocated while we waited does not count.
		b.allocBase += allocatedBytes(b.sample) - b.pausedAt
	}
	b.armed, b.deadline = true, time.Now().Add(b.remaining)
	b.timer.Reset(min(b.remaining, slice))
}

// context.Context, so that LState.SetContext accepts a budget.

func (b *budget) Deadline() (time.Time, bool) { return time.Time{}, false }
func (b *budget) Done() <-chan struct{}       { return b.done }
func (b *budget) Value(any) any               { return nil }
func (b *budget) Err() error {
	if b.outOfMem.Load() {
		return errMemory
	}
	if b.expired.Load() {
		return errBudget
	}
	return nil
}
