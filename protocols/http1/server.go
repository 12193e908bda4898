package http1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

const (
	// lingerTimeout bounds how long a closing connection waits for the
	// peer's FIN after the codec half-closed it, so the peer reads the last
	// response instead of a reset.
	lingerTimeout = 500 * time.Millisecond
	// discardTimeout bounds reading an unread request body to drop it.
	discardTimeout = 5 * time.Second
	// errorWriteTimeout bounds writing an error response.
	errorWriteTimeout = time.Second
)

// Server is the HTTP/1.1 server codec (stream.ServerCodec). It holds no
// state: one value serves any number of connections.
type Server struct{}

// NewServerCodec returns the HTTP/1.1 server codec.
func NewServerCodec() *Server { return &Server{} }

var _ stream.ServerCodec = (*Server)(nil)

var connPool = sync.Pool{New: func() any {
	c := &serverConn{}
	c.st.c = c
	c.st.reqBody.st = &c.st
	c.st.body.trailers = &c.st.trailers
	c.st.body.acc = &c.trailAcc
	return c
}}

// ServeConn serves requests on c until the peer closes, a limit or error
// ends the connection, or ctx is cancelled (drain: an idle connection is
// closed at once, a busy one finishes its response with "Connection:
// close"). It closes c unless a handler hijacked it. The error is nil for
// an orderly end.
func (s *Server) ServeConn(ctx context.Context, c net.Conn, info *stream.ConnInfo, h stream.Handler, opts *stream.ServerOptions) error {
	sc := connPool.Get().(*serverConn)
	err := sc.serve(ctx, c, info, h, opts)
	sc.release()
	connPool.Put(sc)
	return err
}

// serverConn is one downstream connection; it is pooled with its stream,
// header maps and buffers.
type serverConn struct {
	conn    net.Conn
	info    *stream.ConnInfo
	handler stream.Handler
	// br and bw are pooled and held only while a request is being read
	// or answered: an idle keep-alive connection waits for its next
	// request's first byte in prefix and holds neither.
	br     *bufio.Reader
	bw     *bufio.Writer
	cw     connWriter
	prefix prefixReader
	// raw is the socket's raw connection when it has one (TCP, Unix):
	// readFirst reads it directly. rawRead and rawErr serve its callback.
	raw     syscall.RawConn
	rawRead func(uintptr) bool
	rawErr  error

	maxHeaderBytes int
	maxHeaders     int
	scheme         string
	headersTimeout time.Duration
	idleTimeout    time.Duration
	requestTimeout time.Duration
	maxRequests    int

	headAcc  []byte // slow-path header block
	trailAcc []byte // trailer block
	scratch  []byte // response heads, discarding

	mu       sync.Mutex // idle, gen and the deadline set by drain
	idle     bool
	gen      uint64 // which use of this pooled value a drain callback is for
	draining atomic.Bool

	deadline    time.Time // read deadline last set by the serving goroutine
	reqDeadline time.Time // end of RequestTimeout for the current request
	nreq        int
	st          serverStream
}

func (c *serverConn) init(nc net.Conn, info *stream.ConnInfo, h stream.Handler, o *stream.ServerOptions) {
	c.conn, c.info, c.handler = nc, info, h
	c.cw.conn = nc
	c.prefix.conn, c.prefix.n = nc, 0
	c.raw = rawConnOf(nc)
	if o == nil {
		o = &stream.ServerOptions{}
	}
	c.maxHeaderBytes, c.maxHeaders, c.scheme = o.MaxHeaderBytes, o.MaxHeaders, o.Scheme
	if c.maxHeaderBytes <= 0 {
		c.maxHeaderBytes = defaultMaxHeaderBytes
	}
	if c.maxHeaders <= 0 {
		c.maxHeaders = defaultMaxHeaders
	}
	if c.scheme == "" {
		c.scheme = "http"
	}
	c.headersTimeout, c.idleTimeout, c.requestTimeout = o.RequestHeadersTimeout, o.IdleTimeout, o.RequestTimeout
	c.cw.timeout, c.cw.deadline = o.WriteTimeout, time.Time{}
	c.maxRequests = o.MaxRequestsPerConnection
	c.st.body.maxBytes, c.st.body.maxTrailers = c.maxHeaderBytes, c.maxHeaders
	c.mu.Lock()
	c.idle = false
	c.gen++
	c.draining.Store(false)
	c.mu.Unlock()
	c.deadline, c.reqDeadline = time.Time{}, time.Time{}
	c.nreq = 0
}

func (c *serverConn) release() {
	if c.br != nil {
		putReader(c.br)
	}
	if c.bw != nil {
		putWriter(c.bw)
	}
	st := &c.st
	st.req.Reset()
	st.trailers.Reset()
	st.body.br = nil
	c.mu.Lock()
	c.gen++
	c.conn = nil
	c.mu.Unlock()
	c.br, c.bw, c.cw.conn, c.info, c.handler = nil, nil, nil, nil, nil
	c.prefix.releaseChunk()
	c.prefix.conn, c.prefix.n = nil, 0
	c.raw, c.rawErr = nil, nil
	if cap(c.headAcc) > 64<<10 {
		c.headAcc = nil
	}
	if cap(c.trailAcc) > 64<<10 {
		c.trailAcc = nil
	}
	if cap(c.scratch) > 64<<10 {
		c.scratch = nil
	}
}

// drain runs when ctx is cancelled or the connection reached its maximum
// duration: an idle connection's blocked read is interrupted; a busy one
// sees draining and closes after its response.
func (c *serverConn) drain(gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.conn == nil {
		return // a callback that fired after its connection ended
	}
	c.draining.Store(true)
	if c.idle {
		c.conn.SetReadDeadline(aLongTimeAgo)
	}
}

// setReadDeadline sets the read deadline to d unless it is already set.
// A time-based d (now plus some timeout) is always new, so the one in
// force is kept when it is not later than d and leaves at least seven
// eighths of the time d would: renewing a deadline costs a timer update,
// and this keeps that off most requests (as connWriter.armDeadline does for
// writes) while never giving a peer more time than d. A zero d (no deadline) is only
// ever set exactly. now is the current time if the caller has it at hand,
// else zero.
func (c *serverConn) setReadDeadline(d, now time.Time) {
	cur := c.deadline
	if d.Equal(cur) {
		return
	}
	if !d.IsZero() && !cur.IsZero() && !cur.After(d) {
		if now.IsZero() {
			now = time.Now()
		}
		// Keep an earlier deadline only while it cuts the wanted timeout by
		// at most an eighth: a timeout may fire up to 12.5% early, and a
		// busy keep-alive connection re-arms about once per eighth of it.
		if want := d.Sub(now); cur.Sub(now) >= want-want/8 {
			return
		}
	}
	c.deadline = d
	c.conn.SetReadDeadline(d)
}

// acquire takes a reader and a writer from the pools. The reader returns
// the byte prefix holds (if any) before reading the connection.
func (c *serverConn) acquire() {
	if c.br == nil {
		c.br = getReader(&c.prefix)
	}
	if c.bw == nil {
		c.bw = getWriter(&c.cw)
	}
}

// releaseBuffers gives the reader and the writer back to their pools. Both
// must be empty.
func (c *serverConn) releaseBuffers() {
	if c.br != nil {
		putReader(c.br)
		c.br = nil
	}
	if c.bw != nil {
		putWriter(c.bw)
		c.bw = nil
	}
}

// prefixReader is what a connection's bufio.Reader reads from: the first
// bytes of a request, read while the connection held no bufio buffers, then
// the connection.
type prefixReader struct {
	conn net.Conn
	buf  [1]byte // the fallback's one byte (connections without a file descriptor)
	n    int     // bytes of buf not yet returned

	// chunk holds what a raw read got when the request started: a pooled
	// buffer taken only for the read system call that found data, so an
	// idle connection holds no buffer and a request costs one read, not a
	// one-byte read and a second read for the rest.
	chunk    *[bufSize]byte
	off, end int
}

var chunkPool = sync.Pool{New: func() any { return new([bufSize]byte) }}

func (p *prefixReader) Read(b []byte) (int, error) {
	if p.chunk != nil && len(b) > 0 {
		n := copy(b, p.chunk[p.off:p.end])
		p.off += n
		if p.off == p.end {
			p.releaseChunk()
		}
		return n, nil
	}
	if p.n > 0 && len(b) > 0 {
		b[0] = p.buf[0]
		p.n = 0
		return 1, nil
	}
	return p.conn.Read(b)
}

func (p *prefixReader) releaseChunk() {
	if p.chunk != nil {
		chunkPool.Put(p.chunk)
		p.chunk, p.off, p.end = nil, 0, 0
	}
}

// rawFirstRead is the raw connection's read callback behind readFirst: it
// takes a chunk only when the socket has data (EAGAIN gives it back and
// lets the poller wait).
func (c *serverConn) rawFirstRead(fd uintptr) bool {
	p := &c.prefix
	chunk := chunkPool.Get().(*[bufSize]byte)
	for {
		n, err := sysRead(fd, chunk[:])
		if err == errInterrupted {
			continue
		}
		if err == errAgain {
			chunkPool.Put(chunk)
			return false
		}
		switch {
		case n > 0:
			p.chunk, p.off, p.end = chunk, 0, n
		case err != nil:
			c.rawErr = err
			chunkPool.Put(chunk)
		default:
			c.rawErr = io.EOF
			chunkPool.Put(chunk)
		}
		return true
	}
}

// testHookIdle, when set, runs as the connection starts waiting for its
// next request without buffers.
var testHookIdle atomic.Pointer[func(*serverConn)]

func (c *serverConn) serve(ctx context.Context, nc net.Conn, info *stream.ConnInfo, h stream.Handler, o *stream.ServerOptions) error {
	c.init(nc, info, h, o)
	accept := time.Now()
	gen := c.gen
	drain := func() { c.drain(gen) }
	if ctx.Err() != nil {
		// Accepted while its listener drains gracefully: serve one request,
		// answered with Connection: close, rather than close unanswered.
		c.maxRequests = 1
	} else {
		stop := context.AfterFunc(ctx, drain)
		defer stop()
	}
	if o != nil && o.MaxConnectionDuration > 0 {
		t := time.AfterFunc(o.MaxConnectionDuration, drain)
		defer t.Stop()
	}
	for {
		first := c.nreq == 0
		if ok, err := c.awaitRequest(first, accept); !ok {
			c.conn.Close()
			return err
		}
		if err := c.readRequest(first, accept); err != nil {
			return c.refuse(err)
		}
		c.handler.ServeStream(&c.st)
		if c.st.hijacked {
			return nil
		}
		c.nreq++
		if ok, err := c.finish(); !ok {
			return err
		}
	}
}

// awaitRequest waits for the first byte of the next request. It reports
// false (and closes nothing) when the peer left, the idle timeout passed or
// the connection is draining. With nothing buffered it gives the reader and
// writer back to their pools while it waits and takes them again when the
// byte arrives; a pipelined request already in the buffer keeps them.
func (c *serverConn) awaitRequest(first bool, accept time.Time) (bool, error) {
	if c.br != nil && c.br.Buffered() > 0 {
		// A pipelined request: no read, so no deadline, and no wait.
		if c.draining.Load() {
			return false, nil
		}
		return true, nil
	}
	var d, now time.Time
	if first {
		if c.headersTimeout > 0 {
			d = accept.Add(c.headersTimeout)
		}
		if c.idleTimeout > 0 {
			if t := accept.Add(c.idleTimeout); d.IsZero() || t.Before(d) {
				d = t
			}
		}
	} else if c.idleTimeout > 0 {
		now = time.Now()
		d = now.Add(c.idleTimeout)
	}
	if c.bw == nil || c.bw.Buffered() == 0 {
		c.releaseBuffers()
	}
	c.mu.Lock()
	if c.draining.Load() {
		c.mu.Unlock()
		return false, nil
	}
	c.setReadDeadline(d, now)
	c.idle = true
	c.mu.Unlock()

	var err error
	if c.br == nil {
		if h := testHookIdle.Load(); h != nil {
			(*h)(c)
		}
		err = c.readFirst()
	} else {
		_, err = c.br.Peek(1)
	}

	c.mu.Lock()
	c.idle = false
	drained := c.draining.Load()
	c.mu.Unlock()
	if drained {
		// drain may have moved the deadline behind our back.
		c.deadline = aLongTimeAgo
	}
	if err != nil {
		if err == io.EOF || drained || isTimeout(err) {
			return false, nil
		}
		return false, &ioError{"read", err}
	}
	c.acquire()
	return true, nil
}

// readFirst waits for the next request while the connection holds no
// buffers. On a socket it reads the request's first bytes straight into a
// pooled chunk (one system call, as with a held buffer); other connections
// (TLS) read one byte into prefix.
func (c *serverConn) readFirst() error {
	if c.raw != nil {
		if c.rawRead == nil {
			c.rawRead = c.rawFirstRead // bound once per pooled connection
		}
		c.rawErr = nil
		if err := c.raw.Read(c.rawRead); err != nil {
			return err
		}
		if c.rawErr != nil {
			if c.rawErr == io.EOF {
				return io.EOF
			}
			return &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", c.rawErr)}
		}
		return nil
	}
	for {
		n, err := c.conn.Read(c.prefix.buf[:])
		if n > 0 {
			c.prefix.n = n
			return nil // an error comes back on the next read
		}
		if err != nil {
			return err
		}
	}
}

// readRequest reads and checks the next request head and sets up its body.
func (c *serverConn) readRequest(first bool, accept time.Time) error {
	var start, now time.Time
	if c.headersTimeout > 0 || c.requestTimeout > 0 {
		start = accept
		if !first {
			now = time.Now()
			start = now
		}
	}
	var d time.Time
	c.reqDeadline = time.Time{}
	if c.headersTimeout > 0 {
		d = start.Add(c.headersTimeout)
	}
	if c.requestTimeout > 0 {
		c.reqDeadline = start.Add(c.requestTimeout)
		if d.IsZero() || c.reqDeadline.Before(d) {
			d = c.reqDeadline
		}
	}
	c.setReadDeadline(d, now)

	st := &c.st
	st.begin()
	s, err := readHead(c.br, &c.headAcc, c.maxHeaderBytes, false)
	if err != nil {
		return err
	}
	if err := parseRequestHead(s, c.scheme, c.maxHeaders, &st.req, &st.ri); err != nil {
		return err
	}
	ri := &st.ri
	switch {
	case ri.chunked:
		st.body.reset(c.br, bodyChunked, 0)
		// Refuse a broken chunked body already at hand before anything
		// reaches an upstream.
		if err := checkBufferedChunks(c.br); err != nil {
			return err
		}
	case ri.contentLength > 0:
		st.body.reset(c.br, bodyLength, ri.contentLength)
	default:
		st.body.reset(c.br, bodyNone, 0)
	}
	if ri.connClose || ri.minor == 0 && !ri.connKeepAlive {
		st.closeAfter = true
	}
	if c.maxRequests > 0 && c.nreq+1 >= c.maxRequests {
		st.closeAfter = true
	}
	if st.body.mode != bodyNone {
		// Nothing reads a bodiless request's connection before the next
		// awaitRequest (or a close) sets its own deadline.
		c.setReadDeadline(c.reqDeadline, time.Time{})
	}
	return nil
}

// refuse answers a request the codec will not pass on, and closes.
func (c *serverConn) refuse(err error) error {
	var pe *ProtocolError
	switch {
	case errors.As(err, &pe):
		c.writeError(pe.Status)
		c.lingerClose()
		return err
	case isTimeout(err):
		c.writeError(408)
		c.conn.Close()
		return ErrHeadersTimeout
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		c.conn.Close()
		return ErrHeadTruncated
	}
	c.conn.Close()
	return &ioError{"read request", err}
}

// writeError writes a bodiless error response with "Connection: close".
func (c *serverConn) writeError(status int) {
	b := c.scratch[:0]
	b = append(b, "HTTP/1.1 "...)
	b = appendInt(b, int64(status))
	b = append(b, ' ')
	b = append(b, StatusText(status)...)
	b = append(b, "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"...)
	c.scratch = b[:0]
	c.conn.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	c.bw.Write(b)
	c.bw.Flush()
}

// lingerClose half-closes, reads what the peer still sends for a moment,
// then closes: a plain close with unread input would reset the connection
// and could destroy the response before the peer reads it.
func (c *serverConn) lingerClose() {
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			c.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
			c.br.Discard(maxDiscard)
		}
	}
	c.conn.Close()
}

// finish completes an exchange after the handler returned and reports
// whether the connection carries another request.
func (c *serverConn) finish() (bool, error) {
	st := &c.st
	switch {
	case st.reset.Load():
		c.conn.Close()
		return false, ErrReset
	case !st.wroteHead:
		// The handler returned without answering: that is a bug.
		c.writeError(500)
		c.lingerClose()
		return false, errors.New("http1: handler returned without a response")
	case !st.respDone || st.broken || st.upgraded:
		c.bw.Flush()
		c.conn.Close()
		if st.werr != nil {
			return false, st.werr
		}
		return false, nil
	}
	if st.closeAfter || c.draining.Load() {
		c.closeAfterResponse()
		return false, nil
	}
	if !st.body.finished() && !c.discardBody() {
		c.closeAfterResponse()
		return false, nil
	}
	return true, nil
}

func (c *serverConn) closeAfterResponse() {
	c.bw.Flush()
	if c.br.Buffered() > 0 || !c.st.body.finished() {
		c.lingerClose()
		return
	}
	c.conn.Close()
}

// discardBody reads and drops what is left of the request body, up to
// maxDiscard bytes, and reports whether it reached the end.
func (c *serverConn) discardBody() bool {
	st := &c.st
	if st.ri.expect100 && !st.continueSent {
		return false // the client may never send it
	}
	now := time.Now()
	d := now.Add(discardTimeout)
	if !c.reqDeadline.IsZero() && c.reqDeadline.Before(d) {
		d = c.reqDeadline
	}
	c.setReadDeadline(d, now)
	if cap(c.scratch) < bufSize {
		c.scratch = make([]byte, 0, bufSize)
	}
	buf := c.scratch[:bufSize]
	for n := 0; n <= maxDiscard; {
		m, err := st.body.Read(buf)
		n += m
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

// serverStream is the one stream of an HTTP/1 connection, reused for every
// request on it.
type serverStream struct {
	c        *serverConn
	req      header.Map
	trailers header.Map
	ri       reqInfo
	body     bodyReader
	reqBody  requestBody

	wroteHead    bool
	respDone     bool
	mode         bodyMode
	remaining    int64
	closeAfter   bool // this response ends the connection
	broken       bool // the response went wrong: close without more
	continueSent bool
	upgraded     bool // 101 (or 2xx to CONNECT) written: Hijack may follow
	hijacked     bool
	werr         error
	reset        atomic.Bool
}

var _ stream.ServerStream = (*serverStream)(nil)

// begin clears the per-request state.
func (st *serverStream) begin() {
	st.req.Reset()
	st.trailers.Reset()
	st.wroteHead, st.respDone, st.closeAfter, st.broken = false, false, false, false
	st.continueSent, st.upgraded, st.hijacked = false, false, false
	st.mode, st.remaining, st.werr = bodyNone, 0, nil
	st.reset.Store(false)
}

func (st *serverStream) RequestHeaders() *header.Map  { return &st.req }
func (st *serverStream) Body() io.Reader              { return &st.reqBody }
func (st *serverStream) HasBody() bool                { return st.ri.chunked || st.ri.contentLength > 0 }
func (st *serverStream) ContentLength() int64         { return st.ri.contentLength }
func (st *serverStream) RequestTrailers() *header.Map { return &st.trailers }
func (st *serverStream) Conn() *stream.ConnInfo       { return st.c.info }

func (st *serverStream) Protocol() string {
	if st.ri.minor == 0 {
		return "HTTP/1.0"
	}
	return "HTTP/1.1"
}

// requestBody is the request body as the handler sees it: the first Read
// answers "Expect: 100-continue".
type requestBody struct{ st *serverStream }

var continueHead = []byte("HTTP/1.1 100 Continue\r\n\r\n")

func (b *requestBody) Read(p []byte) (int, error) {
	st := b.st
	if st.ri.expect100 && !st.continueSent && !st.wroteHead && !st.body.finished() && st.body.err == nil {
		st.continueSent = true
		c := st.c
		c.bw.Write(continueHead)
		if err := c.bw.Flush(); err != nil {
			st.broken = true
			return 0, &ioError{"write 100 continue", err}
		}
	}
	n, err := st.body.Read(p)
	if err != nil && err != io.EOF {
		// A body that breaks framing or stalls leaves the connection in an
		// unknown state: it is closed after the response.
		st.closeAfter = true
	}
	return n, err
}

// WriteInformational sends a 1xx head (not 101). HTTP/1.0 clients get
// none.
func (st *serverStream) WriteInformational(h *header.Map) error {
	if st.wroteHead {
		return ErrHeadersWritten
	}
	status, ok := parseStatus(h.Value(":status"))
	if !ok || status >= 200 || status == 101 {
		return ErrInvalidStatus
	}
	if st.ri.minor == 0 {
		return nil
	}
	if status == 100 {
		if st.continueSent {
			return nil
		}
		st.continueSent = true
	}
	c := st.c
	b, ok := appendStatusLine(c.scratch[:0], h.Value(":status"), status)
	for i := 0; ok && i < h.Len(); i++ {
		f := h.At(i)
		if f.Name != "" && f.Name[0] == ':' {
			continue
		}
		b, ok = appendField(b, f.Name, f.Value)
	}
	if !ok {
		c.scratch = b[:0]
		return ErrInvalidField
	}
	b = append(b, "\r\n"...)
	c.scratch = b[:0]
	c.bw.Write(b)
	return st.flush()
}

func appendStatusLine(b []byte, code string, status int) ([]byte, bool) {
	b = append(b, "HTTP/1.1 "...)
	b = append(b, code...)
	b = append(b, ' ')
	b = append(b, StatusText(status)...)
	b = append(b, "\r\n"...)
	return b, true
}

// WriteHeaders writes the response head; it is buffered and leaves with
// the first body bytes unless endStream.
func (st *serverStream) WriteHeaders(h *header.Map, endStream bool) error {
	if st.wroteHead {
		return ErrHeadersWritten
	}
	if st.reset.Load() {
		return ErrReset
	}
	code := h.Value(":status")
	status, ok := parseStatus(code)
	if !ok {
		return ErrInvalidStatus
	}
	if status < 200 && status != 101 {
		return st.WriteInformational(h)
	}
	c := st.c
	ri := &st.ri
	if c.draining.Load() {
		st.closeAfter = true
	}
	// An unread request body we will not be able to skip cheaply.
	if !st.body.finished() {
		if ri.expect100 && !st.continueSent || ri.chunked || st.body.remaining > maxDiscard {
			st.closeAfter = true
		}
	}
	noBody := status == 204 || status == 304 || ri.method == "HEAD"
	tunnel := status == 101 || ri.method == "CONNECT" && status < 300

	b, _ := appendStatusLine(c.scratch[:0], code, status)
	cl, clSeen := int64(-1), false
	for i := 0; i < h.Len(); i++ {
		f := h.At(i)
		if f.Name == "" {
			c.scratch = b[:0]
			return ErrInvalidField
		}
		if f.Name[0] == ':' {
			continue
		}
		switch len(f.Name) {
		case 10:
			if header.EqualFold(f.Name, "connection") {
				if header.ListHasToken(f.Value, "close") {
					st.closeAfter = true
				}
				if !tunnel {
					continue // the codec says what this connection does
				}
			}
		case 14:
			if header.EqualFold(f.Name, "content-length") {
				if status == 204 || tunnel {
					continue
				}
				n, ok := parseDecimal(f.Value)
				if !ok || clSeen && n != cl {
					c.scratch = b[:0]
					return ErrInvalidField
				}
				if clSeen {
					continue
				}
				cl, clSeen = n, true
			}
		case 17:
			if header.EqualFold(f.Name, "transfer-encoding") {
				continue // framing is the codec's
			}
		}
		if b, ok = appendField(b, f.Name, f.Value); !ok {
			c.scratch = b[:0]
			return ErrInvalidField
		}
	}
	switch {
	case tunnel:
		st.mode, st.upgraded = bodyNone, true
	case noBody:
		st.mode = bodyNone
	case clSeen:
		st.mode, st.remaining = bodyLength, cl
		if endStream && cl != 0 {
			// The handler declared a body it does not send.
			st.broken = true
		}
	case endStream:
		st.mode = bodyNone
		b = append(b, "Content-Length: 0\r\n"...)
	case ri.minor == 1:
		st.mode = bodyChunked
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	default:
		st.mode = bodyClose
		st.closeAfter = true
	}
	if st.closeAfter && !tunnel {
		b = append(b, "Connection: close\r\n"...)
	} else if ri.minor == 0 && !tunnel {
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	b = append(b, "\r\n"...)
	c.scratch = b[:0]
	c.bw.Write(b)
	st.wroteHead = true
	if endStream || tunnel {
		st.respDone = endStream
		if err := st.flush(); err != nil {
			return err
		}
		if st.broken {
			return ErrBodyLength
		}
	}
	return nil
}

func (st *serverStream) flush() error {
	if err := st.c.bw.Flush(); err != nil {
		st.broken = true
		if st.werr == nil {
			st.werr = &ioError{"write", err}
		}
		return st.werr
	}
	return nil
}

// WriteBody writes p and flushes, so a small response leaves in one write
// with its head.
func (st *serverStream) WriteBody(p []byte, endStream bool) error {
	switch {
	case !st.wroteHead:
		return ErrNoHeaders
	case st.respDone:
		return ErrStreamDone
	case st.reset.Load():
		return ErrReset
	}
	c := st.c
	var err error
	switch st.mode {
	case bodyLength, bodyChunked:
		err = writeBody(c.bw, &c.cw, &c.scratch, st.mode, &st.remaining, p, endStream)
	case bodyClose:
		err = writeBig(c.bw, &c.cw, p, nil)
	}
	if endStream {
		st.respDone = true
	}
	if ferr := st.flush(); ferr != nil && err == nil {
		err = ferr
	}
	if err != nil {
		st.broken = true
		if st.werr == nil {
			st.werr = err
		}
	}
	return err
}

// WriteTrailers ends a chunked response with trailers; other framings
// cannot carry them and drop them.
func (st *serverStream) WriteTrailers(t *header.Map) error {
	switch {
	case !st.wroteHead:
		return ErrNoHeaders
	case st.respDone:
		return ErrStreamDone
	case st.reset.Load():
		return ErrReset
	}
	c := st.c
	if st.mode == bodyChunked {
		b, ok := appendTrailers(c.scratch[:0], t)
		c.scratch = b[:0]
		if !ok {
			st.broken = true
			return ErrInvalidField
		}
		c.bw.Write(b)
	} else if st.mode == bodyLength && st.remaining != 0 {
		st.broken = true
	}
	st.respDone = true
	if err := st.flush(); err != nil {
		return err
	}
	if st.broken {
		return ErrBodyLength
	}
	return nil
}

// Hijack hands over the connection after a 101 (or a 2xx to CONNECT).
func (st *serverStream) Hijack() (io.ReadWriteCloser, error) {
	if !st.upgraded || st.hijacked || st.reset.Load() {
		return nil, ErrNotHijackable
	}
	c := st.c
	if err := st.flush(); err != nil {
		return nil, err
	}
	st.hijacked = true
	c.conn.SetDeadline(time.Time{})
	return newHijacked(c.conn, c.br), nil
}

// Reset aborts the exchange: the connection is closed.
func (st *serverStream) Reset() {
	if st.reset.Swap(true) {
		return
	}
	st.c.conn.Close()
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
