package http2

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// maxKeptBodyBuffer is the largest receive buffer a pooled stream keeps.
const maxKeptBodyBuffer = 64 << 10

// serverStream is one request/response exchange. Streams are pooled: one
// is back in the pool once it is closed and its handler returned.
type serverStream struct {
	sc       *serverConn
	id       uint32
	req      header.Map
	trailers header.Map
	body     requestBody

	contentLength  int64
	hasBody        bool
	expectContinue bool

	// The rest is guarded by sc.mu.

	recv      recvWindow
	recvBuf   []byte // unread body bytes are recvBuf[recvOff:]
	recvOff   int
	recvTotal int64
	readCond  sync.Cond

	send sendWindow

	open         bool // in sc.streams: open or half-closed
	remoteDone   bool // END_STREAM received
	localDone    bool // END_STREAM sent
	wroteHeaders bool
	continueSent bool
	handlerDone  bool
	abandoned    bool // AbandonBody: reads fail, DATA is discarded
	resetErr     *stream.ErrStreamReset
	resetHeard   bool // the reset is one a ResetNotifier reports
	onReset      func(code uint32)
	// waitGen tells a write-timeout timer whether the wait it was armed
	// for is still the current one (streams are reused).
	waitGen  uint64
	timedOut bool
}

var _ stream.ServerStream = (*serverStream)(nil)
var _ stream.ResetNotifier = (*serverStream)(nil)
var _ stream.ResetWithCode = (*serverStream)(nil)
var _ stream.BodyAbandoner = (*serverStream)(nil)

var streamPool = sync.Pool{New: func() any {
	st := &serverStream{}
	st.body.st = st
	return st
}}

// newStream takes a stream from the pool for id. mu is held.
func (sc *serverConn) newStream(id uint32) *serverStream {
	st := streamPool.Get().(*serverStream)
	st.sc, st.id = sc, id
	st.readCond.L = &sc.mu
	return st
}

// releaseStream returns a closed stream whose handler is done (or never
// ran) to the pool, giving unread body bytes back to the connection
// window. mu is held.
func (sc *serverConn) releaseStream(st *serverStream) {
	if unread := len(st.recvBuf) - st.recvOff; unread > 0 {
		sc.creditConn(int64(unread))
	}
	buf := st.recvBuf[:0]
	if cap(buf) > maxKeptBodyBuffer {
		buf = nil
	}
	st.req.Reset()
	st.trailers.Reset()
	gen := st.waitGen
	*st = serverStream{
		req:      st.req,
		trailers: st.trailers,
		recvBuf:  buf,
		waitGen:  gen,
	}
	st.body.st = st
	streamPool.Put(st)
}

// appendBody buffers received body bytes. mu is held.
func (st *serverStream) appendBody(p []byte) {
	if st.recvOff > 0 && st.recvOff >= len(st.recvBuf)/2 {
		n := copy(st.recvBuf, st.recvBuf[st.recvOff:])
		st.recvBuf = st.recvBuf[:n]
		st.recvOff = 0
	}
	st.recvBuf = append(st.recvBuf, p...)
}

// dropBody discards unread body bytes, crediting the connection window.
func (sc *serverConn) dropBody(st *serverStream) {
	if unread := len(st.recvBuf) - st.recvOff; unread > 0 {
		sc.creditConn(int64(unread))
	}
	st.recvBuf, st.recvOff = st.recvBuf[:0], 0
}

// endRemote marks the request complete (half-closed remote). mu is held.
func (sc *serverConn) endRemote(st *serverStream) {
	st.remoteDone = true
	if st.localDone {
		sc.closeStream(st, false)
	}
}

// endLocal marks the response complete (half-closed local). mu is held.
func (sc *serverConn) endLocal(st *serverStream) {
	st.localDone = true
	if st.remoteDone {
		sc.closeStream(st, false)
	}
}

// closeStream moves a stream to closed. mu is held.
func (sc *serverConn) closeStream(st *serverStream, weReset bool) {
	if !st.open {
		return
	}
	st.open = false
	delete(sc.streams, st.id)
	sc.recordClosed(st.id, weReset)
	st.readCond.Broadcast()
	sc.sendCond.Broadcast()
	if len(sc.streams) == 0 {
		switch {
		case sc.draining:
			sc.beginClose()
		case sc.idleTimer != nil && !sc.closing:
			sc.idleTimer.Reset(sc.idleTimeout)
		}
	}
	if st.handlerDone {
		sc.releaseStream(st)
	}
}

// resetCause says who ends a stream abruptly, which decides whether
// RST_STREAM is sent and whether the handler's ResetNotifier fires.
type resetCause uint8

const (
	resetByPeer      resetCause = iota // RST_STREAM from the client
	resetByCodecErr                    // a stream error we detected
	resetByHandler                     // Reset, ResetWithCode, write timeout
	resetByConnPeer                    // the connection ended under it
	resetByConnError                   // our connection error ended it
)

func resetByConn(remote bool) resetCause {
	if remote {
		return resetByConnPeer
	}
	return resetByConnError
}

// resetStream ends st abruptly. It reports false when the RST_STREAM
// could not be queued (control frame flood). mu is held.
func (sc *serverConn) resetStream(st *serverStream, code http2.ErrCode, cause resetCause) bool {
	if !st.open {
		return true
	}
	ok := true
	if cause == resetByCodecErr || cause == resetByHandler {
		ok = sc.writeRSTStream(st.id, code)
	}
	st.resetErr = &stream.ErrStreamReset{
		Code:   uint32(code),
		Remote: cause == resetByPeer || cause == resetByConnPeer,
	}
	st.resetHeard = cause != resetByHandler && !st.localDone
	if st.resetHeard && st.onReset != nil {
		sc.notes = append(sc.notes, resetNote{st.onReset, uint32(code)})
		st.onReset = nil
	}
	sc.dropBody(st)
	sc.closeStream(st, cause != resetByPeer)
	return ok
}

// resetByCodec resets st for a stream error and returns the connection
// error to raise, if any. mu is held.
func (sc *serverConn) resetByCodec(st *serverStream, code http2.ErrCode) error {
	if !sc.resetStream(st, code, resetByCodecErr) {
		return errControlFlood
	}
	return nil
}

// runHandler serves one stream on its own goroutine.
func (sc *serverConn) runHandler(st *serverStream) {
	defer sc.handlerWG.Done()
	sc.handler.ServeStream(st)
	sc.mu.Lock()
	sc.handlers--
	st.handlerDone = true
	switch {
	case !st.open:
		sc.releaseStream(st)
	case !st.localDone:
		// The handler returned without ending its response.
		sc.resetStream(st, http2.ErrCodeInternal, resetByHandler)
	default:
		// Response complete, request body still coming and unwanted:
		// tell the client to stop (RFC 9113 section 8.1).
		sc.resetStream(st, http2.ErrCodeNo, resetByHandler)
	}
	sc.mu.Unlock()
}

func (st *serverStream) RequestHeaders() *header.Map  { return &st.req }
func (st *serverStream) Body() io.Reader              { return &st.body }
func (st *serverStream) HasBody() bool                { return st.hasBody }
func (st *serverStream) ContentLength() int64         { return st.contentLength }
func (st *serverStream) RequestTrailers() *header.Map { return &st.trailers }
func (st *serverStream) Conn() *stream.ConnInfo       { return st.sc.info }
func (st *serverStream) Protocol() string             { return "HTTP/2" }

// Hijack fails: an HTTP/2 stream has no connection of its own (extended
// CONNECT is not supported yet).
func (st *serverStream) Hijack() (io.ReadWriteCloser, error) { return nil, ErrNotHijackable }

// requestBody is the request body as the handler reads it.
type requestBody struct{ st *serverStream }

// Read returns buffered DATA, blocking until some arrives; io.EOF at
// END_STREAM, a *stream.ErrStreamReset once the stream was reset. Credit
// goes back to the client as bytes are read. The first Read of a request
// with "expect: 100-continue" sends the interim 100 response.
func (b *requestBody) Read(p []byte) (int, error) {
	st := b.st
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if st.expectContinue && !st.continueSent && !st.wroteHeaders && st.open && !sc.closing {
		st.continueSent = true
		sc.hbuf.Reset()
		sc.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "100"})
		sc.writeHeaderBlock(st.id, false, sc.hbuf.Bytes())
	}
	for {
		if st.resetErr != nil {
			return 0, st.resetErr
		}
		if st.abandoned {
			return 0, stream.ErrBodyAbandoned
		}
		if unread := len(st.recvBuf) - st.recvOff; unread > 0 {
			n := copy(p, st.recvBuf[st.recvOff:])
			st.recvOff += n
			if st.recvOff == len(st.recvBuf) {
				st.recvBuf, st.recvOff = st.recvBuf[:0], 0
			}
			sc.creditConn(int64(n))
			sc.creditStream(st, int64(n))
			return n, nil
		}
		if st.remoteDone {
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		st.readCond.Wait()
	}
}

// writable reports why the response cannot be written to, if it cannot.
// mu is held.
func (st *serverStream) writable() error {
	switch {
	case st.resetErr != nil:
		return st.resetErr
	case st.localDone || !st.open:
		return ErrStreamDone
	case st.sc.closing || st.sc.werr != nil:
		return &stream.ErrStreamReset{Code: uint32(http2.ErrCodeCancel), Remote: st.sc.werr != nil}
	}
	return nil
}

// WriteInformational sends a 1xx head other than 101.
func (st *serverStream) WriteInformational(h *header.Map) error {
	status := h.Value(":status")
	code, ok := validStatus(status)
	if !ok || code >= 200 || code == 101 {
		return ErrInvalidStatus
	}
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if err := st.writable(); err != nil {
		return err
	}
	if st.wroteHeaders {
		return ErrHeadersWritten
	}
	if err := sc.encodeFields(status, h); err != nil {
		return err
	}
	sc.writeHeaderBlock(st.id, false, sc.hbuf.Bytes())
	if code == 100 {
		st.continueSent = true
	}
	return nil
}

// WriteHeaders sends the response head; with endStream the response has
// no body. Connection-specific fields are dropped, names lower-cased.
func (st *serverStream) WriteHeaders(h *header.Map, endStream bool) error {
	status := h.Value(":status")
	code, ok := validStatus(status)
	if !ok || code == 101 {
		return ErrInvalidStatus
	}
	if code < 200 {
		return st.WriteInformational(h)
	}
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if err := st.writable(); err != nil {
		return err
	}
	if st.wroteHeaders {
		return ErrHeadersWritten
	}
	if err := sc.encodeFields(status, h); err != nil {
		return err
	}
	sc.writeHeaderBlock(st.id, endStream, sc.hbuf.Bytes())
	st.wroteHeaders = true
	if endStream {
		sc.endLocal(st)
	}
	return nil
}

// WriteBody sends p as DATA frames no larger than the peer's
// SETTINGS_MAX_FRAME_SIZE, blocking while the stream or connection send
// window is exhausted (or the write buffer full), at most WriteTimeout per
// wait.
func (st *serverStream) WriteBody(p []byte, endStream bool) error {
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if err := st.writable(); err != nil {
		return err
	}
	if !st.wroteHeaders {
		return ErrNoHeaders
	}
	if len(p) == 0 {
		if endStream {
			sc.writeData(st.id, true, nil)
			sc.endLocal(st)
		}
		return nil
	}
	for len(p) > 0 {
		n, err := st.awaitSend(len(p))
		if err != nil {
			return err
		}
		last := endStream && n == len(p)
		sc.writeData(st.id, last, p[:n])
		st.send -= sendWindow(n)
		sc.connSend -= sendWindow(n)
		p = p[n:]
		if last {
			sc.endLocal(st)
		}
	}
	return nil
}

// awaitSend waits until some of want bytes may be sent and returns how
// many. mu is held.
func (st *serverStream) awaitSend(want int) (int, error) {
	sc := st.sc
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
			st.waitGen++
			st.timedOut = false
		}
	}()
	for {
		if err := st.writable(); err != nil {
			return 0, err
		}
		if st.timedOut {
			sc.resetStream(st, http2.ErrCodeCancel, resetByHandler)
			return 0, fmt.Errorf("http2: write: stream window stalled: %w", os.ErrDeadlineExceeded)
		}
		if st.send > 0 && sc.connSend > 0 && len(sc.out.b) < maxOutBuffered {
			n := min(int64(want), int64(st.send), int64(sc.connSend), int64(sc.peerMaxFrame))
			return int(n), nil
		}
		if sc.writeTimeout > 0 && timer == nil {
			gen := st.waitGen
			timer = time.AfterFunc(sc.writeTimeout, func() {
				sc.mu.Lock()
				if st.waitGen == gen {
					st.timedOut = true
					sc.sendCond.Broadcast()
				}
				sc.mu.Unlock()
			})
		}
		sc.sendCond.Wait()
	}
}

// WriteTrailers ends the response with a trailer block (an empty DATA
// frame with END_STREAM when t is empty).
func (st *serverStream) WriteTrailers(t *header.Map) error {
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if err := st.writable(); err != nil {
		return err
	}
	if !st.wroteHeaders {
		return ErrNoHeaders
	}
	if t == nil || t.Len() == 0 {
		sc.writeData(st.id, true, nil)
	} else {
		if err := sc.encodeFields("", t); err != nil {
			return err
		}
		sc.writeHeaderBlock(st.id, true, sc.hbuf.Bytes())
	}
	sc.endLocal(st)
	return nil
}

// AbandonBody gives up the request body: a blocked Read returns
// stream.ErrBodyAbandoned, buffered and later DATA is discarded with its
// credit returned (so the client is not stalled by a body nobody reads).
// When the response ends before the request does, the stream is reset
// with NO_ERROR as the handler returns (RFC 9113 section 8.1).
func (st *serverStream) AbandonBody() {
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if st.abandoned {
		return
	}
	st.abandoned = true
	if unread := int64(len(st.recvBuf) - st.recvOff); unread > 0 {
		sc.creditStream(st, unread)
	}
	sc.dropBody(st)
	st.readCond.Broadcast()
}

// Reset aborts the stream with RST_STREAM INTERNAL_ERROR.
func (st *serverStream) Reset() { st.ResetWithCode(uint32(http2.ErrCodeInternal)) }

// ResetWithCode aborts the stream with RST_STREAM code; a stream already
// closed is left alone.
func (st *serverStream) ResetWithCode(code uint32) {
	sc := st.sc
	sc.mu.Lock()
	sc.resetStream(st, http2.ErrCode(code), resetByHandler)
	sc.mu.Unlock()
}

// NotifyReset registers fn to run once if the client resets the stream,
// or the connection fails, before the response was complete. fn runs on
// the connection's reading goroutine, or at once on the caller's if that
// already happened.
func (st *serverStream) NotifyReset(fn func(code uint32)) {
	sc := st.sc
	sc.mu.Lock()
	if st.resetHeard {
		code := st.resetErr.Code
		sc.mu.Unlock()
		fn(code)
		return
	}
	st.onReset = fn
	sc.mu.Unlock()
}
