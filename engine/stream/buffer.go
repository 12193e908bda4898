package stream

import (
	"io"
	"sync"
)

// Buffer is a body chunk or a buffered body handed to filters. Filters may
// replace or append to its bytes.
type Buffer struct {
	b []byte
}

// Bytes returns the content. It is valid until the next change.
func (b *Buffer) Bytes() []byte { return b.b }

// Len returns the content length.
func (b *Buffer) Len() int { return len(b.b) }

// Set replaces the content with a copy of p.
func (b *Buffer) Set(p []byte) { b.b = append(b.b[:0], p...) }

// SetString replaces the content with s.
func (b *Buffer) SetString(s string) { b.b = append(b.b[:0], s...) }

// Append adds p at the end.
func (b *Buffer) Append(p []byte) { b.b = append(b.b, p...) }

// Prepend adds p at the front.
func (b *Buffer) Prepend(p []byte) {
	b.b = append(b.b, p...)
	copy(b.b[len(p):], b.b[:len(b.b)-len(p)])
	copy(b.b, p)
}

// Reset empties the buffer, keeping its storage.
func (b *Buffer) Reset() { b.b = b.b[:0] }

// maxPooledBuffer keeps one huge body from pinning memory in the pool.
const maxPooledBuffer = 256 << 10

var bufferPool = sync.Pool{New: func() any { return &Buffer{b: make([]byte, 0, 16<<10)} }}

// GetBuffer takes an empty buffer from the pool.
func GetBuffer() *Buffer { return bufferPool.Get().(*Buffer) }

// PutBuffer returns a buffer to the pool.
func PutBuffer(b *Buffer) {
	if cap(b.b) > maxPooledBuffer {
		return
	}
	b.b = b.b[:0]
	bufferPool.Put(b)
}

// ReadOnce replaces the content with at most max bytes from one Read of r.
func (b *Buffer) ReadOnce(r io.Reader, max int) (int, error) {
	if cap(b.b) < max {
		b.b = make([]byte, 0, max)
	}
	n, err := r.Read(b.b[:max])
	b.b = b.b[:n]
	return n, err
}

// AppendFrom appends at most max bytes from one Read of r.
func (b *Buffer) AppendFrom(r io.Reader, max int) (int, error) {
	if cap(b.b)-len(b.b) < max {
		nb := make([]byte, len(b.b), len(b.b)+max+len(b.b)/2)
		copy(nb, b.b)
		b.b = nb
	}
	n, err := r.Read(b.b[len(b.b) : len(b.b)+max])
	b.b = b.b[:len(b.b)+n]
	return n, err
}
