package main

import (
	"context"
	"hash/fnv"
	"os"
	"time"
)

// watcher polls files for changes. Polling (not inotify) keeps it simple and
// correct for editors that replace files by rename and for files on any
// filesystem. A file's stamp includes a hash of its content: modification
// times are only as fine as the kernel's clock tick, so two same-size saves
// within one tick would otherwise look unchanged. Config files are small;
// reading them once per interval costs nothing that matters.
type watcher struct {
	interval time.Duration
	files    map[string]fileStamp
}

type fileStamp struct {
	size    int64
	modTime time.Time
	sum     uint64
	missing bool
}

func stamp(path string) fileStamp {
	b, err := os.ReadFile(path)
	if err != nil {
		return fileStamp{missing: true}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{missing: true}
	}
	h := fnv.New64a()
	h.Write(b)
	return fileStamp{size: int64(len(b)), modTime: fi.ModTime(), sum: h.Sum64()}
}

// settleTime is how long changed files must stay unchanged before a reload.
func settleTime(interval time.Duration) time.Duration {
	return min(max(interval/4, 20*time.Millisecond), 250*time.Millisecond)
}

func newWatcher(interval time.Duration, paths []string) *watcher {
	w := &watcher{interval: interval}
	w.reset(paths)
	return w
}

// reset watches a new set of paths (after a reload changed the imports).
func (w *watcher) reset(paths []string) {
	w.files = make(map[string]fileStamp, len(paths))
	for _, p := range paths {
		w.files[p] = stamp(p)
	}
}

// run calls changed (on the watcher's goroutine) whenever a watched file's
// size or modification time changes, until ctx ends. changed returns the
// paths to watch from then on.
func (w *watcher) run(ctx context.Context, changed func() []string) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		dirty := false
		now := make(map[string]fileStamp, len(w.files))
		for p, old := range w.files {
			now[p] = stamp(p)
			dirty = dirty || now[p] != old
		}
		if !dirty {
			continue
		}
		// Editors and tools often truncate a file, then write it: reading
		// in between would apply an empty or cut config. Reload only once
		// the files have stayed the same for a moment.
		time.Sleep(settleTime(w.interval))
		moving := false
		for p, st := range now {
			if stamp(p) != st {
				moving = true
				break
			}
		}
		if moving {
			continue
		}
		// Stamps are taken before the reload reads the files, so an edit
		// made while it runs is seen at the next tick.
		next := make(map[string]fileStamp)
		for _, p := range changed() {
			if st, ok := now[p]; ok {
				next[p] = st
			} else {
				next[p] = stamp(p)
			}
		}
		w.files = next
	}
}
