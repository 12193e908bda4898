package lua

import (
	"errors"
	"sync/atomic"
	"time"
)

// errBudget is what a script sees when its callback ran out of time.
var errBudget = errors.New("lua: script exceeded its time budget")

// budget is the context a state's threads run with: gopher-lua checks
// Done() between instructions and aborts when it is closed. One budget
// lives as long as its state and is armed only while a callback runs; once
// it fired the state is discarded, so the channel never needs reopening.
// It needs no goroutine and allocates nothing per callback.
type budget struct {
	limit     time.Duration
	done      chan struct{}
	expired   atomic.Bool
	timer     *time.Timer
	armedAt   time.Time
	remaining time.Duration
}

func newBudget(limit time.Duration) *budget {
	b := &budget{limit: limit, done: make(chan struct{})}
	b.timer = time.AfterFunc(time.Hour, b.fire)
	b.timer.Stop()
	return b
}

func (b *budget) fire() {
	if b.expired.CompareAndSwap(false, true) {
		close(b.done)
	}
}

// arm starts a callback's budget of d.
func (b *budget) arm(d time.Duration) {
	b.remaining = d
	b.armedAt = time.Now()
	b.timer.Reset(b.remaining)
}

// disarm stops the clock and reports whether the budget held.
func (b *budget) disarm() bool {
	b.timer.Stop()
	return !b.expired.Load()
}

// pause stops the clock while the script waits for something that is not
// script time (a synchronous httpCall); resume restarts it.
func (b *budget) pause() {
	b.timer.Stop()
	b.remaining -= time.Since(b.armedAt)
}

func (b *budget) resume() {
	if b.remaining <= 0 {
		b.fire()
		return
	}
	b.armedAt = time.Now()
	b.timer.Reset(b.remaining)
}

// context.Context, so that LState.SetContext accepts a budget.

func (b *budget) Deadline() (time.Time, bool) { return time.Time{}, false }
func (b *budget) Done() <-chan struct{}       { return b.done }
func (b *budget) Value(any) any               { return nil }
func (b *budget) Err() error {
	if b.expired.Load() {
		return errBudget
	}
	return nil
}
