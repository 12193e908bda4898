package http1

import (
	"bufio"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// ClientCodec makes HTTP/1.1 upstream connections (stream.ClientCodec).
// Zero limits take the defaults (60 KiB header block, 100 fields).
type ClientCodec struct {
	MaxHeaderBytes int // largest response header block
	MaxHeaders     int // most response header fields
}

// NewClientCodec returns the HTTP/1.1 client codec with default limits.
func NewClientCodec() *ClientCodec { return &ClientCodec{} }

var _ stream.ClientCodec = (*ClientCodec)(nil)

// NewClientConn wraps a dialled upstream connection. Its buffers live as
// long as the connection: upstream connections are long-lived and pooled
// by the caller, and Close may then run from any goroutine.
func (cc *ClientCodec) NewClientConn(c net.Conn) stream.ClientConn {
	cn := &clientConn{conn: c, maxHeaderBytes: cc.MaxHeaderBytes, maxHeaders: cc.MaxHeaders}
	if cn.maxHeaderBytes <= 0 {
		cn.maxHeaderBytes = defaultMaxHeaderBytes
	}
	if cn.maxHeaders <= 0 {
		cn.maxHeaders = defaultMaxHeaders
	}
	cn.cw.conn = c
	cn.br = bufio.NewReaderSize(c, bufSize)
	cn.bw = bufio.NewWriterSize(&cn.cw, bufSize)
	cn.body.trailers = &cn.trailers
	cn.body.acc = &cn.trailAcc
	cn.body.maxBytes, cn.body.maxTrailers = cn.maxHeaderBytes, cn.maxHeaders
	cn.body.reset(cn.br, bodyNone, 0)
	cn.reqDone, cn.respFinal = true, true
	return cn
}

// clientConn is one upstream HTTP/1.1 connection, one exchange at a time.
type clientConn struct {
	conn           net.Conn
	br             *bufio.Reader
	bw             *bufio.Writer
	cw             connWriter
	maxHeaderBytes int
	maxHeaders     int
	headAcc        []byte
	trailAcc       []byte
	scratch        []byte

	// request side
	started      bool // a request was sent on this connection
	reqHead      bool // HEAD: the response has no body
	reqConnect   bool
	reqClose     bool // we asked for Connection: close
	reqMode      bodyMode
	reqRemaining int64
	reqDone      bool

	// response side
	respFinal bool // the final (non-1xx) head was read
	ri        respInfo
	body      bodyReader
	trailers  header.Map
	keepAlive bool
	upgraded  bool
	broken    bool
	hijacked  bool
	closed    atomic.Bool
}

var _ stream.ClientConn = (*clientConn)(nil)

func needsLength(method string) bool {
	return method == "POST" || method == "PUT" || method == "PATCH"
}

// WriteRequestHeaders writes the request line from :method and :path, Host
// from :authority, then the other fields in order. Framing: Content-Length
// when the map has it; no body with endStream (Content-Length: 0 for POST,
// PUT and PATCH); chunked otherwise. The head is flushed only with
// endStream: otherwise it leaves with the first body bytes.
func (c *clientConn) WriteRequestHeaders(h *header.Map, endStream bool) error {
	switch {
	case c.closed.Load():
		return ErrClosed
	case c.broken || c.upgraded || c.hijacked:
		return ErrBusy
	case c.started && !(c.reqDone && c.respFinal && c.body.finished()):
		return ErrBusy
	}
	method := h.Value(":method")
	path := h.Value(":path")
	authority, hasAuthority := h.Get(":authority")
	if !hasAuthority {
		authority = h.Value("host")
	}
	if !isToken(method) || path == "" || !validAuthority(authority, false) {
		return ErrInvalidRequest
	}
	for i := 0; i < len(path); i++ {
		if chars[path[i]]&cTarget == 0 {
			return ErrInvalidRequest
		}
	}
	b := c.scratch[:0]
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, authority...)
	b = append(b, "\r\n"...)
	cl, clSeen, reqClose := int64(-1), false, false
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
		case 4:
			if header.EqualFold(f.Name, "host") {
				continue
			}
		case 10:
			if header.EqualFold(f.Name, "connection") && header.ListHasToken(f.Value, "close") {
				reqClose = true
			}
		case 14:
			if header.EqualFold(f.Name, "content-length") {
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
				continue
			}
		}
		var ok bool
		if b, ok = appendField(b, f.Name, f.Value); !ok {
			c.scratch = b[:0]
			return ErrInvalidField
		}
	}
	switch {
	case clSeen:
		if endStream && cl != 0 {
			c.scratch = b[:0]
			return ErrBodyLength
		}
		c.reqMode, c.reqRemaining = bodyLength, cl
	case endStream:
		c.reqMode = bodyNone
		if needsLength(method) {
			b = append(b, "Content-Length: 0\r\n"...)
		}
	default:
		c.reqMode = bodyChunked
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	b = append(b, "\r\n"...)
	c.scratch = b[:0]

	c.started = true
	c.reqHead, c.reqConnect, c.reqClose = method == "HEAD", method == "CONNECT", reqClose
	c.reqDone = endStream
	c.respFinal, c.keepAlive = false, false
	c.trailers.Reset()
	c.body.reset(c.br, bodyNone, 0)
	c.bw.Write(b)
	if endStream {
		return c.Flush()
	}
	return nil
}

// WriteRequestBody writes p (chunk-framed when chunked) and flushes.
func (c *clientConn) WriteRequestBody(p []byte, endStream bool) error {
	switch {
	case c.closed.Load():
		return ErrClosed
	case !c.started:
		return ErrNoHeaders
	case c.reqDone:
		return ErrStreamDone
	}
	var err error
	switch c.reqMode {
	case bodyLength, bodyChunked:
		err = writeBody(c.bw, &c.cw, &c.scratch, c.reqMode, &c.reqRemaining, p, endStream)
	default:
		if len(p) > 0 {
			err = ErrBodyLength
		}
	}
	if endStream {
		c.reqDone = true
	}
	if ferr := c.Flush(); ferr != nil && err == nil {
		err = ferr
	}
	if err != nil {
		c.broken = true
	}
	return err
}

// WriteRequestTrailers ends a chunked request with trailers (dropped for
// other framings) and flushes.
func (c *clientConn) WriteRequestTrailers(t *header.Map) error {
	switch {
	case c.closed.Load():
		return ErrClosed
	case !c.started:
		return ErrNoHeaders
	case c.reqDone:
		return ErrStreamDone
	}
	c.reqDone = true
	switch c.reqMode {
	case bodyChunked:
		b, ok := appendTrailers(c.scratch[:0], t)
		c.scratch = b[:0]
		if !ok {
			c.broken = true
			return ErrInvalidField
		}
		c.bw.Write(b)
	case bodyLength:
		if c.reqRemaining != 0 {
			c.broken = true
			c.Flush()
			return ErrBodyLength
		}
	}
	return c.Flush()
}

// Flush pushes buffered request bytes to the network.
func (c *clientConn) Flush() error {
	if c.bw.Buffered() == 0 {
		return nil
	}
	if err := c.bw.Flush(); err != nil {
		c.broken = true
		return &ioError{"write request", err}
	}
	return nil
}

// ReadResponseHeaders reads the next response head into h. 1xx heads other
// than 101 are returned as they come; the caller loops until a final one.
func (c *clientConn) ReadResponseHeaders(h *header.Map) error {
	switch {
	case c.closed.Load():
		return ErrClosed
	case c.broken:
		return ErrBusy
	case !c.started || c.respFinal:
		return errRespUnexpected
	}
	s, err := readHead(c.br, &c.headAcc, c.maxHeaderBytes, true)
	if err != nil {
		c.broken = true
		if _, ok := err.(*ProtocolError); ok || err == ErrHeadTruncated {
			return err
		}
		return &ioError{"read response", err}
	}
	ri := &c.ri
	if err := parseResponseHead(s, c.maxHeaders, h, ri); err != nil {
		c.broken = true
		return err
	}
	st := ri.status
	if st < 200 && st != 101 {
		return nil
	}
	c.respFinal = true
	keep := ri.minor == 1 && !ri.connClose || ri.minor == 0 && ri.connKeepAlive && !ri.connClose
	switch {
	case st == 101, c.reqConnect && st < 300:
		c.upgraded, keep = true, false
		c.body.reset(c.br, bodyNone, 0)
	case c.reqHead || st == 204 || st == 304:
		c.body.reset(c.br, bodyNone, 0)
	case ri.chunked:
		c.body.reset(c.br, bodyChunked, 0)
	case ri.contentLength >= 0:
		c.body.reset(c.br, bodyLength, ri.contentLength)
	default:
		c.body.reset(c.br, bodyClose, 0)
		keep = false
	}
	c.keepAlive = keep && !c.reqClose
	return nil
}

// ResponseBody reads the current response's body; io.EOF at its end, with
// the last bytes when the end is already known.
func (c *clientConn) ResponseBody() io.Reader { return &c.body }

// ResponseTrailers holds the trailers once the body reached io.EOF.
func (c *clientConn) ResponseTrailers() *header.Map { return &c.trailers }

// Reusable reports whether another request may follow on this connection.
func (c *clientConn) Reusable() bool {
	return !c.closed.Load() && !c.broken && !c.upgraded && !c.hijacked && c.keepAlive &&
		c.started && c.reqDone && c.respFinal && c.body.finished() && c.body.err == nil &&
		c.br.Buffered() == 0
}

// Hijack returns the raw connection after a 101 (or a 2xx to CONNECT);
// reads return the bytes already buffered first.
func (c *clientConn) Hijack() (io.ReadWriteCloser, error) {
	if !c.upgraded || c.hijacked || c.closed.Load() {
		return nil, ErrNotHijackable
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	c.hijacked = true
	c.conn.SetDeadline(time.Time{})
	return newHijacked(c.conn, c.br), nil
}

// SetDeadline bounds the exchange: the connection's read and write deadline.
func (c *clientConn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// Close closes the connection.
func (c *clientConn) Close() error {
	c.closed.Store(true)
	return c.conn.Close()
}
