package main

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestWatcherSeesChanges(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.lua")
	os.WriteFile(a, []byte("one"), 0o644)
	os.WriteFile(b, []byte("x"), 0o644)
	var calls atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newWatcher(10*time.Millisecond, []string{a})
	go w.run(ctx, func() []string {
		calls.Add(1)
		return []string{a, b} // the reload discovered a new file to watch
	})
	waitFor := func(n int32, what string) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for calls.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d reloads, want %d", what, calls.Load(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(30 * time.Millisecond)
	if calls.Load() != 0 {
		t.Fatal("reloaded with no change")
	}
	os.WriteFile(a, []byte("two!"), 0o644)
	waitFor(1, "size change")
	os.WriteFile(b, []byte("y2"), 0o644)
	waitFor(2, "change of a file added by the reload")
	os.Remove(a)
	waitFor(3, "removal")
}
