package http2

import (
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// clMaxInterimHeads bounds the 1xx heads one response may carry.
const clMaxInterimHeads = 32

// clientStream is one exchange on a clientConn (stream.ClientConn).
//
// It is not pooled: Close may run while another goroutine is still inside
// a Read or Write of it, so it cannot be recycled at Close. Its receive
// buffer chunks are pooled instead.
type clientStream struct {
	cc   *clientConn
	cond sync.Cond // L is &cc.mu; broadcast on every change a reader awaits
	body clientBody

	// Guarded by cc.mu.
	id          uint32 // 0 until HEADERS are written
	closed      bool   // Close was called
	headersSent bool
	sentEnd     bool // END_STREAM written
	resetSent   bool
	resetRecv   bool // the server reset it (RST_STREAM or GOAWAY)
	isHead      bool

	heads     [][]header.Field // response heads received, not yet read
	headsBuf  [2][]header.Field
	interim   int
	recvFinal bool // the final head arrived
	readFinal bool // ... and ReadResponseHeaders returned it
	noBody    bool // HEAD request, 204 or 304: DATA is malformed
	recvEnd   bool // END_STREAM received
	headEnded bool // END_STREAM came on the final head: no body, no trailers
	eof       bool // the body reader returned io.EOF

	contentLength int64 // of the response; -1 when absent
	recvBytes     int64
	recv          clientRecvBuf
	trailers      header.Map

	sendWindow  int64
	recvWindow  int64 // bytes the server may still send on the stream
	recvUnacked int64 // bytes consumed, not yet returned

	readErr  error
	writeErr error

	deadline time.Time
	timer    *time.Timer
}

var _ stream.ClientConn = (*clientStream)(nil)

// failLocked makes the stream's reads and writes fail with err. A
// response that already ended stays readable: what failed came after it.
func (s *clientStream) failLocked(err error) {
	if s.writeErr == nil {
		s.writeErr = err
	}
	if !s.recvEnd && s.readErr == nil {
		s.readErr = err
		s.cc.creditConnLocked(s.recv.release())
	}
	s.cond.Broadcast()
	s.cc.sendCond.Broadcast()
}

// creditStreamLocked returns n consumed bytes to the stream window, in
// batches of half the window; no credit is sent once the response ended.
func (s *clientStream) creditStreamLocked(n int64) {
	if n <= 0 {
		return
	}
	s.recvUnacked += n
	if s.recvEnd || s.resetSent || s.resetRecv || s.recvUnacked < s.cc.streamWindow/2 {
		return
	}
	s.cc.queueControlLocked(clControlFrame{kind: clCtlWindowUpdate, streamID: s.id, val: uint32(s.recvUnacked)})
	s.recvWindow += s.recvUnacked
	s.recvUnacked = 0
}

// acceptHeadLocked takes a response head (1xx or final); it returns why
// the head is malformed, or "".
func (s *clientStream) acceptHeadLocked(f *http2.MetaHeadersFrame) string {
	pseudo := f.PseudoFields()
	if len(pseudo) != 1 || pseudo[0].Name != ":status" {
		return "response pseudo-headers other than one :status"
	}
	status, ok := clParseStatus(pseudo[0].Value)
	if !ok {
		return "invalid :status"
	}
	if why := clCheckResponseFields(f.RegularFields()); why != "" {
		return why
	}
	if status < 200 {
		switch {
		case status == 101:
			return "101 Switching Protocols is not allowed in HTTP/2"
		case f.StreamEnded():
			return "END_STREAM on a 1xx response"
		case s.interim >= clMaxInterimHeads:
			return "too many 1xx responses"
		}
		s.interim++
		s.heads = append(s.heads, clHeadFields(f))
		return ""
	}
	cl, ok := clContentLength(f.RegularFields())
	if !ok {
		return "invalid content-length"
	}
	s.contentLength = cl
	s.noBody = s.isHead || status == 204 || status == 304
	s.recvFinal = true
	s.heads = append(s.heads, clHeadFields(f))
	if f.StreamEnded() {
		s.headEnded = true
		return s.endOfBodyLocked()
	}
	return ""
}

// acceptTrailersLocked takes the trailers ending a response.
func (s *clientStream) acceptTrailersLocked(f *http2.MetaHeadersFrame) string {
	if !f.StreamEnded() {
		return "HEADERS after the final head without END_STREAM"
	}
	if len(f.PseudoFields()) > 0 {
		return "pseudo-headers in trailers"
	}
	if why := clCheckResponseFields(f.RegularFields()); why != "" {
		return why
	}
	for _, hf := range f.Fields {
		s.trailers.Add(hf.Name, hf.Value)
	}
	return s.endOfBodyLocked()
}

// endOfBodyLocked marks END_STREAM received, checking the body length.
func (s *clientStream) endOfBodyLocked() string {
	if s.contentLength >= 0 && s.recvBytes != s.contentLength && !s.noBody {
		return fmt.Sprintf("body of %d bytes, content-length %d", s.recvBytes, s.contentLength)
	}
	s.recvEnd = true
	return ""
}

// SetDeadline arms the stream's timer: at t the stream is reset (CANCEL)
// and its reads and writes fail with an error matching
// os.ErrDeadlineExceeded. A zero t disarms it.
func (s *clientStream) SetDeadline(t time.Time) error {
	cc := s.cc
	cc.mu.Lock()
	s.deadline = t
	if s.timer != nil {
		s.timer.Stop()
	}
	if t.IsZero() || s.closed {
		cc.mu.Unlock()
		return nil
	}
	d := time.Until(t)
	if d <= 0 {
		s.expireLocked()
		cc.mu.Unlock()
		cc.kickControl()
		return nil
	}
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.onTimer)
	} else {
		s.timer.Reset(d)
	}
	cc.mu.Unlock()
	return nil
}

func (s *clientStream) onTimer() {
	cc := s.cc
	cc.mu.Lock()
	// A timer re-armed or stopped after it fired must not act (Stop and
	// Reset cannot recall a callback already running).
	if s.deadline.IsZero() || time.Now().Before(s.deadline) || s.closed {
		cc.mu.Unlock()
		return
	}
	s.expireLocked()
	cc.mu.Unlock()
	cc.kickControl()
}

// expireLocked resets the stream at its deadline, unless the exchange is
// already over both ways.
func (s *clientStream) expireLocked() {
	if s.sentEnd && s.recvEnd {
		return
	}
	s.cc.resetStreamLocked(s, http2.ErrCodeCancel, clErrDeadline)
}

// WriteRequestHeaders sends the request head; ids are assigned here, in
// the order HEADERS reach the wire. The head is flushed at once, body or
// not: the server may answer before the body starts (and a body may be
// slow to come), and concurrent writers batch anyway.
func (s *clientStream) WriteRequestHeaders(h *header.Map, endStream bool) error {
	rh := clRequestHeadPool.Get().(*clientRequestHead)
	defer rh.release()
	if err := rh.build(h); err != nil {
		return err
	}
	cc := s.cc
	cc.lockWrite()
	cc.mu.Lock()
	if err := s.startableLocked(rh); err != nil {
		cc.mu.Unlock()
		cc.unlockWrite(false)
		return err
	}
	s.id = cc.nextStreamID
	cc.nextStreamID += 2
	cc.streams[s.id] = s
	s.headersSent, s.sentEnd = true, endStream
	s.isHead = rh.method == "HEAD"
	s.sendWindow = cc.peerInitialWindow
	s.recvWindow = cc.streamWindow
	cc.mu.Unlock()

	err := cc.writeHeaderBlockLocked(s.id, endStream, rh.fields)
	cc.unlockWrite(true)
	if err != nil {
		return cc.writeFailed(err)
	}
	return nil
}

// startableLocked reports why the stream cannot send its request head.
func (s *clientStream) startableLocked(rh *clientRequestHead) error {
	cc := s.cc
	switch {
	case s.closed:
		return clErrStreamClosed
	case s.headersSent:
		return clErrHeadersSent
	case s.writeErr != nil:
		return s.writeErr
	case cc.err != nil:
		return cc.err
	case cc.goAwayRecv:
		return fmt.Errorf("http2: stream refused, the server sent GOAWAY: %w",
			&stream.ErrStreamReset{Code: uint32(http2.ErrCodeRefusedStream), Remote: true})
	case rh.protocol && !cc.peerConnectProto:
		return fmt.Errorf("http2: invalid request: :protocol needs the server's SETTINGS_ENABLE_CONNECT_PROTOCOL")
	case cc.peerMaxHeaderList != 0 && rh.size > uint64(cc.peerMaxHeaderList):
		return fmt.Errorf("http2: request header list of %d bytes exceeds the server's limit of %d", rh.size, cc.peerMaxHeaderList)
	}
	return nil
}

// writeHeaderBlockLocked encodes fields and writes them as HEADERS and
// CONTINUATION frames of at most the server's frame size; wmu is held.
// Once encoded the block must be sent: the hpack tables changed with it.
func (cc *clientConn) writeHeaderBlockLocked(id uint32, endStream bool, fields []hpack.HeaderField) error {
	cc.hbuf.Reset()
	for _, f := range fields {
		cc.henc.WriteField(f)
	}
	block := cc.hbuf.Bytes()
	maxFrame := int(cc.wMaxFrame)
	frag := block[:min(len(block), maxFrame)]
	block = block[len(frag):]
	err := cc.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID:      id,
		BlockFragment: frag,
		EndStream:     endStream,
		EndHeaders:    len(block) == 0,
	})
	for err == nil && len(block) > 0 {
		frag = block[:min(len(block), maxFrame)]
		block = block[len(frag):]
		err = cc.fr.WriteContinuation(id, len(block) == 0, frag)
	}
	return err
}

// writableLocked reports why the request side cannot be written.
func (s *clientStream) writableLocked() error {
	switch {
	case s.closed:
		return clErrStreamClosed
	case !s.headersSent:
		return clErrNoHeaders
	case s.writeErr != nil:
		return s.writeErr
	case s.sentEnd:
		return clErrWriteAfterEnd
	}
	return nil
}

// WriteRequestBody sends p as DATA frames as the stream and connection
// send windows allow, blocking until the server opens them; the frames
// are flushed before it returns (and before it waits for window).
func (s *clientStream) WriteRequestBody(p []byte, endStream bool) error {
	if len(p) == 0 && !endStream {
		return nil
	}
	cc := s.cc
	flushed := false
	for {
		cc.mu.Lock()
		if err := s.writableLocked(); err != nil {
			cc.mu.Unlock()
			return err
		}
		n := min(int64(len(p)), s.sendWindow, cc.sendWindow, int64(clWriteBufferSize))
		if n <= 0 && len(p) > 0 {
			if !flushed {
				// The server opens windows for bytes it received: ours
				// must not sit in the buffer while we wait.
				cc.mu.Unlock()
				cc.lockWrite()
				cc.unlockWrite(true)
				flushed = true
				continue
			}
			cc.sendCond.Wait()
			cc.mu.Unlock()
			continue
		}
		n = max(n, 0)
		s.sendWindow -= n
		cc.sendWindow -= n
		cc.mu.Unlock()

		chunk := p[:n]
		p = p[n:]
		last := len(p) == 0
		if err := s.writeData(chunk, endStream && last, last); err != nil {
			return err
		}
		if last {
			return nil
		}
		flushed = false
	}
}

// writeData writes p, for which send window was taken, as DATA frames.
func (s *clientStream) writeData(p []byte, endStream, flush bool) error {
	cc := s.cc
	cc.lockWrite()
	cc.mu.Lock()
	if err := s.writableLocked(); err != nil {
		// Reset meanwhile: nothing may follow RST_STREAM. Give the
		// window back to the streams still sending.
		n := int64(len(p))
		s.sendWindow += n
		cc.sendWindow += n
		cc.sendCond.Broadcast()
		cc.mu.Unlock()
		cc.unlockWrite(false)
		return err
	}
	if endStream {
		s.sentEnd = true
	}
	id := s.id
	cc.mu.Unlock()
	maxFrame := int(cc.wMaxFrame)
	var err error
	for len(p) > maxFrame && err == nil {
		err = cc.fr.WriteData(id, false, p[:maxFrame])
		p = p[maxFrame:]
	}
	if err == nil {
		err = cc.fr.WriteData(id, endStream, p)
	}
	cc.unlockWrite(flush)
	if err != nil {
		return cc.writeFailed(err)
	}
	return nil
}

// WriteRequestTrailers ends the request with trailers (an empty map ends
// it with an empty DATA frame) and flushes.
func (s *clientStream) WriteRequestTrailers(t *header.Map) error {
	if t == nil || t.Len() == 0 {
		return s.WriteRequestBody(nil, true)
	}
	rh := clRequestHeadPool.Get().(*clientRequestHead)
	defer rh.release()
	if err := rh.buildTrailers(t); err != nil {
		return err
	}
	cc := s.cc
	cc.lockWrite()
	cc.mu.Lock()
	err := s.writableLocked()
	if err == nil && cc.peerMaxHeaderList != 0 && rh.size > uint64(cc.peerMaxHeaderList) {
		err = fmt.Errorf("http2: request trailer list of %d bytes exceeds the server's limit of %d", rh.size, cc.peerMaxHeaderList)
	}
	if err != nil {
		cc.mu.Unlock()
		cc.unlockWrite(false)
		return err
	}
	s.sentEnd = true
	cc.mu.Unlock()
	err = cc.writeHeaderBlockLocked(s.id, true, rh.fields)
	cc.unlockWrite(true)
	if err != nil {
		return cc.writeFailed(err)
	}
	return nil
}

// Flush puts the connection's buffered frames, this stream's among them,
// on the network (or leaves them to a writer queued for the lock, which
// flushes them with its own).
func (s *clientStream) Flush() error {
	cc := s.cc
	cc.lockWrite()
	cc.unlockWrite(true)
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil && !(s.sentEnd && s.recvEnd) {
		return cc.err
	}
	return nil
}

// ReadResponseHeaders blocks until the next response head and appends it
// to h, ":status" first. 1xx heads come one by one; the caller loops
// until a final one.
func (s *clientStream) ReadResponseHeaders(h *header.Map) error {
	cc := s.cc
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for {
		switch {
		case s.closed:
			return clErrStreamClosed
		case !s.headersSent:
			return clErrNoRequest
		case s.readFinal:
			return clErrHeadRead
		case s.readErr != nil && !(s.resetRecv && len(s.heads) > 0):
			// A reset by the server comes after what it sent before it, as
			// on the wire; a local failure (Close, deadline) comes first.
			return s.readErr
		case len(s.heads) > 0:
			fields := s.heads[0]
			s.heads[0] = nil
			s.heads = s.heads[1:]
			for _, f := range fields {
				h.Add(f.Name, f.Value)
			}
			// The final head is the last one queued: 1xx after it is malformed.
			if len(s.heads) == 0 && s.recvFinal {
				s.readFinal = true
			}
			return nil
		}
		s.cond.Wait()
	}
}

// ResponseBody reads the response body; io.EOF at END_STREAM.
func (s *clientStream) ResponseBody() io.Reader { return &s.body }

// ResponseEnded reports whether the final response head carried
// END_STREAM: a response with neither body nor trailers (a gRPC
// trailers-only response is one), which must be forwarded as such.
func (s *clientStream) ResponseEnded() bool {
	s.cc.mu.Lock()
	defer s.cc.mu.Unlock()
	return s.readFinal && s.headEnded
}

// ResponseTrailers holds the response trailers once the body reached EOF.
func (s *clientStream) ResponseTrailers() *header.Map { return &s.trailers }

// Reusable reports whether the exchange ended cleanly both ways: then
// Close only frees the stream's slot.
func (s *clientStream) Reusable() bool {
	s.cc.mu.Lock()
	defer s.cc.mu.Unlock()
	return !s.closed && s.sentEnd && s.eof && s.writeErr == nil && s.readErr == nil &&
		!s.resetSent && !s.resetRecv
}

// Hijack fails: HTTP/2 has no 101 upgrade.
func (s *clientStream) Hijack() (io.ReadWriteCloser, error) { return nil, clErrHijack }

// Close ends the exchange: a stream not complete both ways is reset
// (RST_STREAM CANCEL), and its slot is freed. It never blocks on the
// network, so it can unblock a Read or Write of another goroutine.
func (s *clientStream) Close() error {
	cc := s.cc
	cc.mu.Lock()
	if s.closed {
		cc.mu.Unlock()
		return nil
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.id != 0 && !(s.sentEnd && s.recvEnd) {
		cc.resetStreamLocked(s, http2.ErrCodeCancel, clErrStreamClosed)
	}
	s.closed = true
	cc.creditConnLocked(s.recv.release())
	if s.id != 0 {
		delete(cc.streams, s.id)
	} else {
		cc.idsLeft++ // the reserved id was never used
	}
	cc.slots--
	drained := cc.err == nil && cc.drainingLocked() && cc.slots == 0
	s.cond.Broadcast()
	cc.sendCond.Broadcast()
	cc.mu.Unlock()
	cc.kickControl()
	if drained {
		cc.fail(clErrShutdown, http2.ErrCodeNo, false, false)
	}
	return nil
}

// clientBody is a stream's response body reader.
type clientBody struct{ s *clientStream }

// Read returns buffered DATA, returning window credit as it is consumed:
// a reader that stops stalls the server at the window.
func (b *clientBody) Read(p []byte) (int, error) {
	s := b.s
	cc := s.cc
	cc.mu.Lock()
	for {
		switch {
		case s.closed:
			cc.mu.Unlock()
			return 0, clErrStreamClosed
		case !s.readFinal:
			cc.mu.Unlock()
			return 0, clErrBodyTooEarly
		case s.readErr != nil && !(s.resetRecv && s.recv.n > 0):
			cc.mu.Unlock()
			return 0, s.readErr
		case s.recv.n > 0:
			n := s.recv.read(p)
			s.creditStreamLocked(int64(n))
			cc.creditConnLocked(int64(n))
			var err error
			if s.recv.n == 0 && s.recvEnd {
				s.eof, err = true, io.EOF
			}
			queued := cc.ctlPending.Load() > 0
			cc.mu.Unlock()
			if queued {
				cc.kickControl()
			}
			return n, err
		case s.recvEnd:
			s.eof = true
			cc.mu.Unlock()
			return 0, io.EOF
		case len(p) == 0:
			cc.mu.Unlock()
			return 0, nil
		}
		s.cond.Wait()
	}
}

// clChunkSize is the size of the pooled receive buffer chunks.
const clChunkSize = 16 << 10

type clChunk [clChunkSize]byte

var clChunkPool = sync.Pool{New: func() any { return new(clChunk) }}

// clientRecvBuf queues received DATA in pooled chunks. Its size is
// bounded by the stream's receive window.
type clientRecvBuf struct {
	chunks []*clChunk
	r      int // read offset in chunks[0]
	w      int // write offset in the last chunk
	n      int // bytes buffered
}

func (b *clientRecvBuf) write(p []byte) {
	for len(p) > 0 {
		if len(b.chunks) == 0 || b.w == clChunkSize {
			b.chunks = append(b.chunks, clChunkPool.Get().(*clChunk))
			b.w = 0
		}
		c := copy(b.chunks[len(b.chunks)-1][b.w:], p)
		b.w += c
		b.n += c
		p = p[c:]
	}
}

func (b *clientRecvBuf) read(p []byte) int {
	total := 0
	for len(p) > 0 && b.n > 0 {
		end := clChunkSize
		if len(b.chunks) == 1 {
			end = b.w
		}
		c := copy(p, b.chunks[0][b.r:end])
		b.r += c
		b.n -= c
		total += c
		p = p[c:]
		if b.r == end {
			if len(b.chunks) == 1 {
				// Keep the last chunk for the next DATA frame.
				b.r, b.w = 0, 0
				break
			}
			clChunkPool.Put(b.chunks[0])
			b.chunks[0] = nil
			b.chunks = b.chunks[1:]
			b.r = 0
		}
	}
	return total
}

// release returns the chunks to the pool and the count of bytes dropped.
func (b *clientRecvBuf) release() int64 {
	n := b.n
	for i, c := range b.chunks {
		clChunkPool.Put(c)
		b.chunks[i] = nil
	}
	b.chunks = b.chunks[:0]
	b.r, b.w, b.n = 0, 0, 0
	return int64(n)
}
