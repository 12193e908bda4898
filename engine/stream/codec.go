package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
)

// ConnInfo describes a downstream connection.
type ConnInfo struct {
	Remote netip.AddrPort
	// Local is the connection's destination: the socket's local address,
	// or, after an original_dst listener filter, the destination from
	// before the redirect.
	Local netip.AddrPort
	// Accepted is the socket's local address (Local before original_dst),
	// the proxy's own address: ORIGINAL_DST clusters refuse it.
	Accepted netip.AddrPort
	TLS      *tls.ConnectionState
	ID       uint64
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

	HTTP2 HTTP2Options
}

// HTTP2Options are the HTTP/2 settings of a server codec (zero: defaults:
// 100 concurrent streams, 1 MiB stream window, 16 MiB connection window).
type HTTP2Options struct {
	MaxConcurrentStreams uint32
	InitialStreamWindow  uint32
	InitialConnWindow    uint32
	// MaxOutboundControlFrames bounds queued PING/SETTINGS ACKs and
	// RST_STREAMs (flood protection; 0: 1000).
	MaxOutboundControlFrames int
	// MaxResetsPerSecond bounds streams a client may open and reset before
	// any response (CVE-2023-44487, rapid reset) before the connection is
	// closed with GOAWAY ENHANCE_YOUR_CALM (0: a built-in budget).
	MaxResetsPerSecond int
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

// ClientConn is one upstream exchange at a time: an HTTP/1 connection, or
// one stream of a multiplexed (HTTP/2) connection.
type ClientConn interface {
	// SetDeadline bounds the exchange in flight: reads and writes after t
	// fail with an error matching os.ErrDeadlineExceeded (zero: none).
	// HTTP/1 sets the socket's deadline; HTTP/2 arms a per-stream timer
	// that resets the stream.
	SetDeadline(t time.Time) error
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
	// Close ends the exchange: an HTTP/1 connection is closed; an HTTP/2
	// stream not yet complete is reset (RST_STREAM CANCEL) and its slot
	// freed. Close after a complete exchange frees the stream's slot.
	Close() error
}

// ResponseEnder is implemented by client conns that can tell a response
// head which ended the response (HTTP/2 HEADERS with END_STREAM): the
// proxy then forwards the head with the end of the stream, so a gRPC
// trailers-only response stays trailers-only.
type ResponseEnder interface {
	ResponseEnded() bool
}

// ClientCodec wraps a dialled upstream connection.
type ClientCodec interface {
	NewClientConn(c net.Conn) ClientConn
}

// ClientOptions are the upstream connection settings a multiplexing client
// codec honours.
type ClientOptions struct {
	// MaxConcurrentStreams caps streams opened on one connection even when
	// the peer allows more (0: the peer's limit).
	MaxConcurrentStreams uint32
	// InitialStreamWindow and InitialConnWindow are the receive windows
	// advertised to the upstream (0: codec defaults).
	InitialStreamWindow uint32
	InitialConnWindow   uint32
	// MaxHeaderListSize bounds a response header block (0: 60 KiB).
	MaxHeaderListSize uint32
	// KeepaliveInterval sends a PING after so long with no frame read,
	// and KeepaliveTimeout closes the connection if it goes unanswered
	// (0: no keepalive).
	KeepaliveInterval time.Duration
	KeepaliveTimeout  time.Duration
}

// MuxClientCodec is a protocol that carries many exchanges on one
// connection (HTTP/2). The pool keeps a few such connections per host and
// opens a stream on one with room, dialling a new connection when every
// connection is at its stream limit.
type MuxClientCodec interface {
	// NewMuxConn starts the protocol on a dialled connection: it writes the
	// client preface and SETTINGS and starts the reader. It does not wait
	// for the peer's SETTINGS.
	NewMuxConn(c net.Conn, opts *ClientOptions) (MuxConn, error)
}

// MuxConn is one multiplexed upstream connection. Its methods are safe for
// concurrent use.
type MuxConn interface {
	// NewStream reserves a stream for one exchange; the returned ClientConn
	// sends HEADERS on its first WriteRequestHeaders. It fails with an
	// error matching ErrStreamLimit when the connection has no room, or
	// ErrConnClosed once the connection is going away.
	NewStream() (ClientConn, error)
	// Capacity is how many more streams NewStream would open now: the
	// peer's SETTINGS_MAX_CONCURRENT_STREAMS (and ClientOptions') minus the
	// streams active; 0 when it accepts no more (GOAWAY, error, limit).
	Capacity() int
	// Active is the number of open streams.
	Active() int
	// Usable is false once the connection received or sent GOAWAY, failed,
	// or was closed: no new streams, existing ones finish.
	Usable() bool
	// Ready is closed once the peer's first SETTINGS arrived (its stream
	// limit is known), or the connection failed: a pool hands out streams
	// only then, so a burst does not overrun a small limit.
	Ready() <-chan struct{}
	// Done is closed when the connection is closed and its streams ended.
	Done() <-chan struct{}
	// Shutdown sends GOAWAY and closes the connection once its streams end.
	Shutdown() error
	// Close closes the connection at once, resetting its streams.
	Close() error
}

// Errors of multiplexed client connections.
var (
	ErrStreamLimit = errors.New("stream: connection at its concurrent stream limit")
	ErrConnClosed  = errors.New("stream: connection closed or going away")
)

// ErrStreamReset is wrapped by stream reads and writes that fail because
// the peer reset the stream (RST_STREAM or a connection GOAWAY/error).
// Reset carries the HTTP/2 error code, so the proxy can propagate it.
type ErrStreamReset struct {
	Code   uint32 // HTTP/2 error code (RFC 9113 section 7)
	Remote bool   // reset by the peer (not by us or a timeout)
}

func (e *ErrStreamReset) Error() string {
	who := "local"
	if e.Remote {
		who = "remote"
	}
	return fmt.Sprintf("stream: %s reset, code %d", who, e.Code)
}

// ResetNotifier is implemented by server streams the client can reset
// while the proxy waits on the upstream (HTTP/2 RST_STREAM, or the
// connection failing). fn runs once, on the codec's goroutine, and must not
// block; the proxy uses it to reset the upstream stream.
type ResetNotifier interface {
	NotifyReset(fn func(code uint32))
}

// BodyAbandoner is implemented by server streams whose request body can be
// given up while a Read of it is blocked (HTTP/2): that Read and later ones
// fail with ErrBodyAbandoned, DATA still arriving is discarded with its
// flow-control credit returned, and the stream itself stays usable for the
// response. The proxy abandons the body of a full-duplex exchange whose
// upstream part ended before the client finished sending.
type BodyAbandoner interface {
	AbandonBody()
}

// ErrBodyAbandoned is returned by request body reads after AbandonBody.
var ErrBodyAbandoned = errors.New("stream: request body abandoned")

// ResetWithCode is implemented by server streams that can reset with a
// protocol error code (HTTP/2: the RST_STREAM code sent to the client).
type ResetWithCode interface {
	ResetWithCode(code uint32)
}
