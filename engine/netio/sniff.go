package netio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
)

// HTTP2Preface is the client connection preface of HTTP/2 (RFC 9113
// section 3.4): a client speaking HTTP/2 without TLS starts with it.
const HTTP2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// tlsHandshakeRecord is the first byte of a TLS record carrying a
// handshake message: every ClientHello starts with it, no HTTP/1 request
// does.
const tlsHandshakeRecord = 0x16

// SniffTLS tells a TLS client (a ClientHello) from a plaintext one by the
// first byte, bounded by c's read deadline. It returns the connection to
// use from now on: c itself when the byte was peeked without being
// consumed, else a wrapper that returns the consumed bytes first.
func SniffTLS(c net.Conn) (net.Conn, bool, error) {
	c, b, err := sniff(c, 1, func(b []byte) bool { return len(b) >= 1 })
	if err != nil {
		return c, false, fmt.Errorf("netio: detecting TLS: %w", err)
	}
	return c, b[0] == tlsHandshakeRecord, nil
}

// SniffHTTP2 tells whether a plaintext client starts with the HTTP/2
// preface, reading no further than the first byte that differs from it,
// bounded by c's read deadline. The returned connection replays what was
// read, as SniffTLS's does.
func SniffHTTP2(c net.Conn) (net.Conn, bool, error) {
	c, b, err := sniff(c, len(HTTP2Preface), prefaceDecided)
	if err != nil {
		return c, false, fmt.Errorf("netio: detecting HTTP/2: %w", err)
	}
	return c, len(b) == len(HTTP2Preface) && string(b) == HTTP2Preface, nil
}

// prefaceDecided reports whether b is enough to tell: it differs from the
// preface, or is all of it.
func prefaceDecided(b []byte) bool {
	for i, x := range b {
		if x != HTTP2Preface[i] {
			return true
		}
	}
	return len(b) >= len(HTTP2Preface)
}

// Application protocols SniffHTTP reports, Envoy's http_inspector's names.
const (
	ProtocolHTTP10 = "http/1.0"
	ProtocolHTTP11 = "http/1.1"
	ProtocolH2C    = "h2c"
)

// maxRequestLine bounds how far SniffHTTP looks for the end of an HTTP/1
// request line.
const maxRequestLine = 8 << 10

// SniffHTTP is Envoy's http_inspector for plaintext connections: it tells
// which HTTP a client speaks from its first bytes, "h2c" for the HTTP/2
// preface, "http/1.1" or "http/1.0" for a request line, "" for anything
// else (not HTTP, or undecided when c's read deadline passed: a
// client that waits for the server, as some TCP protocols do, is not HTTP
// either, so a deadline is no error). The returned connection replays
// what was read.
func SniffHTTP(c net.Conn) (net.Conn, string, error) {
	c, b, err := sniff(c, maxRequestLine, httpDecided)
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) && err != io.EOF {
		return c, "", fmt.Errorf("netio: detecting HTTP: %w", err)
	}
	return c, httpProtocol(b), nil
}

// httpDecided reports whether b tells: the HTTP/2 preface or a difference
// from it, then a whole first line or a byte no request line has.
func httpDecided(b []byte) bool {
	if len(b) <= len(HTTP2Preface) && string(b) == HTTP2Preface[:len(b)] {
		return len(b) == len(HTTP2Preface)
	}
	return bytes.IndexByte(b, '\n') >= 0 || !couldBeRequestLine(b)
}

// httpProtocol names the protocol of a complete first line, or "".
func httpProtocol(b []byte) string {
	if len(b) >= len(HTTP2Preface) && string(b[:len(HTTP2Preface)]) == HTTP2Preface {
		return ProtocolH2C
	}
	i := bytes.IndexByte(b, '\n')
	if i < 0 || !couldBeRequestLine(b[:i]) {
		return ""
	}
	line := bytes.TrimSuffix(b[:i], []byte("\r"))
	switch {
	case bytes.HasSuffix(line, []byte(" HTTP/1.1")):
		return ProtocolHTTP11
	case bytes.HasSuffix(line, []byte(" HTTP/1.0")):
		return ProtocolHTTP10
	}
	return ""
}

// couldBeRequestLine reports whether b may start a request line: a method
// token, a space, then no control bytes.
func couldBeRequestLine(b []byte) bool {
	sp := false
	for i, c := range b {
		switch {
		case c == ' ' && i > 0:
			sp = true
		case sp && c >= 0x20 && c < 0x7f, sp && c == '\r' || sp && c == '\n':
		case !sp && (c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '-' || c == '_'):
		default:
			return false
		}
	}
	return true
}

// errNoProgress is peekSocket's way of saying it cannot go on peeking.
var errNoProgress = errors.New("netio: peek made no progress")

// sniff reads up to max leading bytes of c until decided(b) holds. It
// first tries peeking at the socket (nothing is consumed and c is
// returned as is: the codec keeps the bare *net.TCPConn, its writev and
// splice); where that is not possible it reads and wraps c. A connection
// closed before the first byte gives io.EOF.
func sniff(c net.Conn, max int, decided func([]byte) bool) (net.Conn, []byte, error) {
	buf := make([]byte, max)
	if n, err := peekSocket(c, buf, decided); err != errNoProgress {
		if err == nil && n == 0 {
			err = io.EOF
		}
		return c, buf[:n], err
	}
	n := 0
	for n < max && (n == 0 || !decided(buf[:n])) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			if n > 0 && err == io.EOF {
				break // let the codec see what there is, then EOF
			}
			if n > 0 {
				// What was read stays readable, for a caller that goes on.
				return &peekedConn{Conn: c, buf: buf[:n]}, buf[:n], err
			}
			return c, buf[:n], err
		}
	}
	return &peekedConn{Conn: c, buf: buf[:n]}, buf[:n], nil
}

// peekedConn is a connection whose first bytes were read ahead: reads
// return them first. It keeps the optional methods codecs and the proxy
// use on connections: CloseWrite, and ReadFrom/WriteTo so io.Copy still
// splices where the socket can.
type peekedConn struct {
	net.Conn
	buf []byte // read ahead, not yet returned
}

func (c *peekedConn) Read(b []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(b, c.buf)
		c.buf = c.buf[n:]
		if len(c.buf) == 0 {
			c.buf = nil
		}
		return n, nil
	}
	return c.Conn.Read(b)
}

// CloseWrite half-closes when the underlying connection can.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("netio: half-close: %w", errors.ErrUnsupported)
}

// ReadFrom writes r's bytes to the connection (sendfile/splice on TCP).
func (c *peekedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// WriteTo copies the connection's bytes to w: the read-ahead first, then
// the socket's (splice on TCP).
func (c *peekedConn) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if len(c.buf) > 0 {
		m, err := w.Write(c.buf)
		n += int64(m)
		c.buf = c.buf[m:]
		if err != nil {
			return n, err
		}
		c.buf = nil
	}
	var m int64
	var err error
	if wt, ok := c.Conn.(io.WriterTo); ok {
		m, err = wt.WriteTo(w)
	} else {
		m, err = io.Copy(w, struct{ io.Reader }{c.Conn})
	}
	return n + m, err
}
