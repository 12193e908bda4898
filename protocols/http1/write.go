package http1

import (
	"bufio"
	"io"
	"net"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
)

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
)

func getReader(r io.Reader) *bufio.Reader {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readerPool.Put(br)
}

func getWriter(w io.Writer) *bufio.Writer {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writerPool.Put(bw)
}

// connWriter sits under a connection's bufio.Writer. A body larger than the
// buffer is not copied through it: it is handed to connWriter as extra, and
// the next flush sends the buffered head and the body with one writev.
type connWriter struct {
	conn  net.Conn
	extra [2][]byte
	bufs  net.Buffers
	store [3][]byte
	// timeout bounds each write, so a peer that stops reading cannot hold
	// the connection; deadline is the one last set, renewed once an eighth
	// of it is spent to keep timer updates off most writes.
	timeout  time.Duration
	deadline time.Time
}

func (w *connWriter) armDeadline() {
	if w.timeout <= 0 {
		return
	}
	now := time.Now()
	if w.deadline.Sub(now) < w.timeout-w.timeout/8 {
		w.deadline = now.Add(w.timeout)
		w.conn.SetWriteDeadline(w.deadline)
	}
}

func (w *connWriter) Write(p []byte) (int, error) {
	w.armDeadline()
	if w.extra[0] == nil && w.extra[1] == nil {
		return w.conn.Write(p)
	}
	w.bufs = w.store[:0]
	if len(p) > 0 {
		w.bufs = append(w.bufs, p)
	}
	for _, e := range w.extra {
		if len(e) > 0 {
			w.bufs = append(w.bufs, e)
		}
	}
	w.extra = [2][]byte{}
	_, err := w.bufs.WriteTo(w.conn)
	w.bufs = nil
	w.store = [3][]byte{}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeBig writes p then suffix through bw, batching with what bw holds:
// small writes are buffered, large ones leave in one writev with the
// buffered bytes. The caller flushes.
func writeBig(bw *bufio.Writer, cw *connWriter, p, suffix []byte) error {
	if len(p)+len(suffix) <= bw.Available() {
		bw.Write(p)
		_, err := bw.Write(suffix)
		return err
	}
	cw.extra = [2][]byte{p, suffix}
	var err error
	if bw.Buffered() == 0 {
		// Nothing to join: write directly.
		_, err = cw.Write(nil)
	} else {
		err = bw.Flush()
	}
	cw.extra = [2][]byte{}
	return err
}

// appendField appends "name: value\r\n" after checking both can be sent.
func appendField(b []byte, name, value string) ([]byte, bool) {
	if !isToken(name) || !validValue(value) {
		return b, false
	}
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	b = append(b, "\r\n"...)
	return b, true
}

// appendTrailers appends the last chunk and a trailer section, skipping
// pseudo-headers and the framing fields a trailer cannot carry.
func appendTrailers(b []byte, t *header.Map) ([]byte, bool) {
	b = append(b, "0\r\n"...)
	if t != nil {
		for i := 0; i < t.Len(); i++ {
			f := t.At(i)
			if f.Name == "" || f.Name[0] == ':' || forbiddenTrailer(f.Name) {
				continue
			}
			var ok bool
			if b, ok = appendField(b, f.Name, f.Value); !ok {
				return b, false
			}
		}
	}
	return append(b, "\r\n"...), true
}

func forbiddenTrailer(name string) bool {
	switch len(name) {
	case 4:
		return header.EqualFold(name, "host")
	case 10:
		return header.EqualFold(name, "connection")
	case 14:
		return header.EqualFold(name, "content-length")
	case 17:
		return header.EqualFold(name, "transfer-encoding")
	}
	return false
}

// appendChunkHeader appends "<hex size>\r\n".
func appendChunkHeader(b []byte, n int) []byte {
	b = appendHex(b, uint64(n))
	return append(b, "\r\n"...)
}

var (
	crlf          = []byte("\r\n")
	lastChunk     = []byte("0\r\n\r\n")
	crlfLastChunk = []byte("\r\n0\r\n\r\n")
)

// aLongTimeAgo is a deadline in the past, to interrupt blocked reads.
var aLongTimeAgo = time.Unix(1, 0)

// hijacked is a connection taken over after a 101: reads return the bytes
// the codec had already buffered first.
type hijacked struct {
	net.Conn
	pending []byte
}

func (h *hijacked) Read(p []byte) (int, error) {
	if len(h.pending) > 0 {
		n := copy(p, h.pending)
		h.pending = h.pending[n:]
		if len(h.pending) == 0 {
			h.pending = nil
		}
		return n, nil
	}
	return h.Conn.Read(p)
}

// CloseWrite half-closes when the transport can.
func (h *hijacked) CloseWrite() error {
	if cw, ok := h.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return h.Conn.Close()
}

// newHijacked flushes bw and copies what br holds.
func newHijacked(c net.Conn, br *bufio.Reader) *hijacked {
	h := &hijacked{Conn: c}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		h.pending = append([]byte(nil), b...)
		br.Discard(n)
	}
	return h
}

// writeBody frames one piece of body as mode says (Content-Length or
// chunked), counting down *remaining for length-framed bodies; the server
// and client sides share it. It reports ErrBodyLength when the body
// overruns or, at its end, falls short of its declared length. Other modes
// are the caller's.
func writeBody(bw *bufio.Writer, cw *connWriter, scratch *[]byte, mode bodyMode, remaining *int64, p []byte, endStream bool) error {
	var err error
	switch mode {
	case bodyLength:
		if int64(len(p)) > *remaining {
			p = p[:*remaining]
			err = ErrBodyLength
		}
		*remaining -= int64(len(p))
		if endStream && *remaining != 0 {
			err = ErrBodyLength
		}
		if werr := writeBig(bw, cw, p, nil); werr != nil && err == nil {
			err = werr
		}
	case bodyChunked:
		var suffix []byte
		switch {
		case len(p) > 0 && endStream:
			suffix = crlfLastChunk
		case len(p) > 0:
			suffix = crlf
		case endStream:
			bw.Write(lastChunk)
		}
		if len(p) > 0 {
			*scratch = appendChunkHeader((*scratch)[:0], len(p))
			bw.Write(*scratch)
			if werr := writeBig(bw, cw, p, suffix); werr != nil {
				err = werr
			}
		}
	}
	return err
}
