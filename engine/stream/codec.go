package stream

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
)

// ConnInfo describes a downstream connection.
type ConnInfo struct {
	Remote netip.AddrPort
	Local  netip.AddrPort
	TLS    *tls.ConnectionState
	ID     uint64
}

// ServerOptions are the connection-manager limits a server codec enforces.
type ServerOptions struct {
	// RequestHeadersTimeout bounds reading one request's header block,
	// counted from its first byte (and, for the first request, from accept).
	RequestHeadersTimeout time.Duration
	// IdleTimeout closes a keep-alive connection waiting for a request.
	IdleTimeout time.Duration
	// RequestTimeout bounds reading a whole request (headers and body).
	RequestTimeout time.Duration
	// WriteTimeout bounds each write to the client, so one that stops
	// reading cannot hold a connection (0: none).
	WriteTimeout time.Duration
	// MaxRequestsPerConnection closes the connection after so many (0: none).
	MaxRequestsPerConnection int
	MaxConnectionDuration    time.Duration
	MaxHeaderBytes           int
	MaxHeaders               int
	Scheme                   string // "http" or "https", for :scheme
}

// Handler serves the streams a server codec decodes. ServeStream runs on the
// connection's goroutine (HTTP/1) or a goroutine per stream (HTTP/2) and
// returns when the response is complete or the stream is reset.
type Handler interface {
	ServeStream(s ServerStream)
}

// ServerStream is one request/response exchange on a downstream connection.
type ServerStream interface {
	// RequestHeaders holds the request with pseudo-headers first.
	RequestHeaders() *header.Map
	// Body reads the request body; it returns io.EOF at its end. For a
	// request with "Expect: 100-continue" the first Read sends the interim
	// 100 response.
	Body() io.Reader
	// HasBody reports whether the request may carry a body at all.
	HasBody() bool
	// ContentLength is the declared body length, or -1.
	ContentLength() int64
	// RequestTrailers is valid after Body returned io.EOF; may be empty.
	RequestTrailers() *header.Map

	// WriteInformational sends a 1xx response other than 101.
	WriteInformational(h *header.Map) error
	// WriteHeaders sends the response head (":status" pseudo-header first).
	WriteHeaders(h *header.Map, endStream bool) error
	WriteBody(p []byte, endStream bool) error
	WriteTrailers(t *header.Map) error
	// Hijack takes the raw connection after a 101 response was written, for
	// tunnelling an upgraded protocol. Bytes already buffered are returned
	// first by reads of the result.
	Hijack() (io.ReadWriteCloser, error)
	// Reset aborts the stream (HTTP/1: close the connection).
	Reset()

	Conn() *ConnInfo
	Protocol() string
}

// ServerCodec serves one accepted connection. Cancelling ctx drains: the
// codec finishes the stream in flight, tells the peer the connection is
// closing, and returns; an idle connection is closed at once.
type ServerCodec interface {
	ServeConn(ctx context.Context, c net.Conn, info *ConnInfo, h Handler, opts *ServerOptions) error
}

// ClientConn is one upstream connection speaking a protocol, used by one
// exchange at a time (HTTP/1).
type ClientConn interface {
	// WriteRequestHeaders sends the head; pseudo-headers give the request
	// line. With endStream the request has no body.
	WriteRequestHeaders(h *header.Map, endStream bool) error
	WriteRequestBody(p []byte, endStream bool) error
	WriteRequestTrailers(t *header.Map) error
	// Flush pushes buffered request bytes to the network.
	Flush() error
	// ReadResponseHeaders reads the next response head into h (":status"
	// first). Interim 1xx heads are returned too: the caller loops.
	ReadResponseHeaders(h *header.Map) error
	// ResponseBody reads the current response's body; io.EOF at its end.
	ResponseBody() io.Reader
	// ResponseTrailers is valid after the body reached io.EOF.
	ResponseTrailers() *header.Map
	// Reusable reports whether the connection can carry another request
	// now that the response has been read to its end.
	Reusable() bool
	// Hijack returns the raw connection after a 101 response.
	Hijack() (io.ReadWriteCloser, error)
	Close() error
}

// ClientCodec wraps a dialled upstream connection.
type ClientCodec interface {
	NewClientConn(c net.Conn) ClientConn
}
