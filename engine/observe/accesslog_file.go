package observe

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// maxBuffered is how much formatted log a file holds before the logging
	// goroutine writes it out itself instead of waiting for the flusher.
	maxBuffered = 1 << 20
	// maxPooledLine keeps one huge line from pinning memory in the pool.
	maxPooledLine = 64 << 10
)

// flushInterval bounds how long a line waits in memory (Envoy's
// --file-flush-interval-msec); read when a file is opened.
var flushInterval atomic.Int64

func init() { flushInterval.Store(int64(time.Second)) }

// SetFileFlushInterval sets how often access log files are flushed, for
// files opened from then on (Envoy's --file-flush-interval-msec).
func SetFileFlushInterval(d time.Duration) {
	if d > 0 {
		flushInterval.Store(int64(d))
	}
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// AccessLogger writes access log lines in one Format to one file. Loggers
// opened on the same path share the open file, its buffer and its flusher,
// so a config reload that keeps a path does not reopen it.
type AccessLogger struct {
	file   *logFile
	format *Format
	closed atomic.Bool
}

// logFile is an open log destination shared by the loggers of one path.
//
// Lines are appended to buf under mu, which is held only for a copy. Writes
// to the file are serialized by wmu and happen outside mu: the writer swaps
// buf with an empty spare buffer, then writes the full one, so logging
// goroutines are not held up by disk I/O unless buf reaches maxBuffered.
type logFile struct {
	key  string
	refs int // guarded by registry.mu

	mu     sync.Mutex
	buf    []byte
	closed bool

	wmu   sync.Mutex
	f     *os.File
	std   bool // os.Stdout or os.Stderr: never closed or reopened
	spare []byte

	stop chan struct{}
	done chan struct{}
}

var registry = struct {
	mu    sync.Mutex
	files map[string]*logFile
}{files: map[string]*logFile{}}

// OpenAccessLog opens (or shares) the access log at path and returns a
// logger formatting lines with f (DefaultFormat when nil). "/dev/stdout"
// and "/dev/stderr" write to the process's streams; other paths are opened
// for appending and created with mode 0644.
func OpenAccessLog(path string, f *Format) (*AccessLogger, error) {
	if f == nil {
		f = MustCompileFormat(DefaultFormat)
	}
	key := path
	if path != "/dev/stdout" && path != "/dev/stderr" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, err
		}
		key = abs
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if lf := registry.files[key]; lf != nil {
		lf.refs++
		return &AccessLogger{file: lf, format: f}, nil
	}
	lf := &logFile{key: key, refs: 1, stop: make(chan struct{}), done: make(chan struct{})}
	switch key {
	case "/dev/stdout":
		lf.f, lf.std = os.Stdout, true
	case "/dev/stderr":
		lf.f, lf.std = os.Stderr, true
	default:
		file, err := openAppend(key)
		if err != nil {
			return nil, err
		}
		lf.f = file
	}
	registry.files[key] = lf
	go lf.flusher()
	return &AccessLogger{file: lf, format: f}, nil
}

func openAppend(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
}

// Format returns the logger's format.
func (l *AccessLogger) Format() *Format { return l.format }

// Path returns the path the logger writes to (absolute for files).
func (l *AccessLogger) Path() string { return l.file.key }

// Log formats e and queues the line. It does not wait for the disk unless
// a megabyte of lines is already waiting. Lines logged after Close are
// dropped.
func (l *AccessLogger) Log(e LogEntry) {
	if l.closed.Load() {
		return
	}
	bp := linePool.Get().(*[]byte)
	b := l.format.Append((*bp)[:0], e)
	l.file.write(b)
	if cap(b) <= maxPooledLine {
		*bp = b[:0]
		linePool.Put(bp)
	}
}

// Flush writes the queued lines of the logger's file and returns the write
// error, if any.
func (l *AccessLogger) Flush() error { return l.file.flush() }

// Reopen closes and reopens the logger's file at its path, for log rotation
// (SIGUSR1). Queued lines go to the old file first. It affects every logger
// sharing the file and does nothing for /dev/stdout and /dev/stderr.
func (l *AccessLogger) Reopen() error { return l.file.reopen() }

// Close flushes the logger's lines and releases its share of the file; the
// last logger of a path closes the file and stops its flusher. Close is
// idempotent.
func (l *AccessLogger) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return nil
	}
	lf := l.file
	registry.mu.Lock()
	lf.refs--
	last := lf.refs == 0
	if last {
		delete(registry.files, lf.key)
	}
	registry.mu.Unlock()
	if !last {
		return lf.flush()
	}
	close(lf.stop)
	<-lf.done
	lf.mu.Lock()
	lf.closed = true
	lf.mu.Unlock()
	err := lf.flush()
	if !lf.std {
		lf.wmu.Lock()
		if cerr := lf.f.Close(); err == nil {
			err = cerr
		}
		lf.wmu.Unlock()
	}
	return err
}

// ReopenAccessLogs reopens every open access log file, for log rotation.
func ReopenAccessLogs() error {
	registry.mu.Lock()
	files := make([]*logFile, 0, len(registry.files))
	for _, lf := range registry.files {
		files = append(files, lf)
	}
	registry.mu.Unlock()
	var errs []error
	for _, lf := range files {
		if err := lf.reopen(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (lf *logFile) write(p []byte) {
	lf.mu.Lock()
	if lf.closed {
		lf.mu.Unlock()
		return
	}
	lf.buf = append(lf.buf, p...)
	full := len(lf.buf) >= maxBuffered
	lf.mu.Unlock()
	if full {
		lf.flush()
	}
}

func (lf *logFile) flush() error {
	lf.wmu.Lock()
	defer lf.wmu.Unlock()
	return lf.flushLocked()
}

// flushLocked writes the queued lines; wmu must be held.
func (lf *logFile) flushLocked() error {
	lf.mu.Lock()
	b := lf.buf
	if len(b) == 0 {
		lf.mu.Unlock()
		return nil
	}
	lf.buf = lf.spare[:0]
	lf.mu.Unlock()
	_, err := lf.f.Write(b)
	if cap(b) > 4*maxBuffered {
		b = nil // a burst grew it; let it go
	}
	lf.spare = b[:0]
	return err
}

func (lf *logFile) reopen() error {
	if lf.std {
		return nil
	}
	lf.wmu.Lock()
	defer lf.wmu.Unlock()
	lf.mu.Lock()
	closed := lf.closed
	lf.mu.Unlock()
	if closed {
		return nil
	}
	ferr := lf.flushLocked()
	nf, err := openAppend(lf.key)
	if err != nil {
		return err // keep writing to the old file
	}
	old := lf.f
	lf.f = nf
	return errors.Join(ferr, old.Close())
}

func (lf *logFile) flusher() {
	defer close(lf.done)
	t := time.NewTicker(time.Duration(flushInterval.Load()))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			lf.flush()
		case <-lf.stop:
			return
		}
	}
}
