package proxy

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// gRPC status codes the proxy produces or retries on.
const (
	grpcOK                = 0
	grpcCancelled         = 1
	grpcUnknown           = 2
	grpcDeadlineExceeded  = 4
	grpcPermissionDenied  = 7
	grpcResourceExhausted = 8
	grpcUnimplemented     = 12
	grpcInternal          = 13
	grpcUnavailable       = 14
	grpcUnauthenticated   = 16
)

// IsGRPC reports whether a request is gRPC (application/grpc, +proto,
// +json, ...), whose local replies must be gRPC statuses.
func IsGRPC(h *header.Map) bool {
	ct := h.Value("content-type")
	const prefix = "application/grpc"
	if len(ct) < len(prefix) || !strings.EqualFold(ct[:len(prefix)], prefix) {
		return false
	}
	return len(ct) == len(prefix) || ct[len(prefix)] == '+' || ct[len(prefix)] == ';'
}

// grpcStatusFor maps the HTTP status of a local reply to a gRPC status, as
// Envoy does (Grpc::Utility::httpToGrpcStatus), except that a route
// timeout is DEADLINE_EXCEEDED: that is what a gRPC client's deadline
// (sent as grpc-timeout, which caps the route timeout) expects.
func grpcStatusFor(status int, details string) int {
	if details == "upstream_response_timeout" {
		return grpcDeadlineExceeded
	}
	return GRPCStatusForHTTP(status)
}

// GRPCStatusForHTTP maps an HTTP status that is not 200 to the gRPC
// status a client sees for it (gRPC's http-grpc-status-mapping, as Envoy
// does).
func GRPCStatusForHTTP(status int) int {
	switch status {
	case 400:
		return grpcInternal
	case 401:
		return grpcUnauthenticated
	case 403:
		return grpcPermissionDenied
	case 404:
		return grpcUnimplemented
	case 429, 502, 503, 504:
		return grpcUnavailable
	}
	return grpcUnknown
}

// grpcLocalReply turns the head of a local reply to a gRPC request into a
// trailers-only response: HTTP 200 with grpc-status and grpc-message, no
// body (gRPC clients cannot read an HTML or text error body).
func grpcLocalReply(h *header.Map, status int, body, details string) {
	code := grpcStatusFor(status, details)
	if v, ok := h.Get("grpc-status"); ok {
		// A filter chose the status itself.
		if n, err := strconv.Atoi(v); err == nil {
			code = n
		}
	}
	msg := h.Value("grpc-message")
	if msg == "" {
		msg = percentEncodeGRPC(strings.TrimRight(body, "\n"))
	}
	h.DelFunc(func(f header.Field) bool {
		return header.EqualFold(f.Name, "content-length") || header.EqualFold(f.Name, "content-type") ||
			header.EqualFold(f.Name, "grpc-status") || header.EqualFold(f.Name, "grpc-message")
	})
	h.Set(":status", "200")
	h.Add("content-type", "application/grpc")
	h.Add("grpc-status", strconv.Itoa(code))
	if msg != "" {
		h.Add("grpc-message", msg)
	}
}

// percentEncodeGRPC encodes a grpc-message value (gRPC's HTTP/2 protocol
// spec: percent-encode bytes outside printable ASCII and '%').
func percentEncodeGRPC(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hexd = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hexd[c>>4])
			b.WriteByte(hexd[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// parseGRPCTimeout parses a grpc-timeout header: at most 8 digits and a
// unit (H, M, S, m, u, n).
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	const maxDur = time.Duration(1<<63 - 1)
	if n > int64(maxDur/unit) {
		return maxDur, true
	}
	return time.Duration(n) * unit, true
}

// grpcStatusOf reads grpc-status from a trailers-only response head, or
// -1 when it has none.
func grpcStatusOf(h *header.Map) int {
	v, ok := h.Get("grpc-status")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1
	}
	return n
}

// upstreamLink lets the downstream's reset (an HTTP/2 client cancelling a
// stream) reach the upstream exchange in flight, which blocks on the
// upstream. It is allocated per stream, not pooled: the codec may call
// onReset after the stream's pooled state has moved on.
type upstreamLink struct {
	mu    sync.Mutex
	cc    stream.ClientConn // the exchange in flight, or nil
	reset bool
	done  bool
}

// onReset runs on the codec's goroutine when the client resets the stream:
// it closes the upstream exchange (HTTP/2: RST_STREAM CANCEL upstream),
// which unblocks the proxy's reads. Close runs under the lock so detach
// cannot return the connection to its pool while it is being closed.
func (l *upstreamLink) onReset(uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.reset = true
	if l.cc != nil {
		l.cc.Close()
	}
}

// attach records the exchange in flight; false when the client has reset
// the stream already.
func (l *upstreamLink) attach(cc stream.ClientConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reset {
		return false
	}
	l.cc = cc
	return true
}

func (l *upstreamLink) detach() {
	l.mu.Lock()
	l.cc = nil
	l.mu.Unlock()
}

func (l *upstreamLink) wasReset() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reset
}

// finish stops later resets from reaching this stream.
func (l *upstreamLink) finish() {
	l.mu.Lock()
	l.done = true
	l.cc = nil
	l.mu.Unlock()
}
