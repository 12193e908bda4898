// Package http1 is Sluice's HTTP/1.1 codec, written for a proxy rather than
// for applications: it turns a downstream connection into streams
// (stream.ServerCodec) and speaks HTTP/1.1 to upstreams (stream.ClientCodec).
//
// Header maps keep wire order and case. Requests carry the pseudo-headers
// :method, :path (the request-target as received), :authority (from Host,
// which is not kept as a field) and :scheme first; responses carry :status
// first. Message framing (Transfer-Encoding: chunked) is the codec's
// business and never appears in the maps; Content-Length does.
//
// Parsing is strict, because whatever the codec accepts reaches an upstream
// that may read it differently (request smuggling): only CRLF line endings,
// no obs-fold, no control bytes in fields, no whitespace before the colon,
// exactly one well-formed Content-Length or exactly "Transfer-Encoding:
// chunked" (never both), exactly one Host on HTTP/1.1, strict chunk framing.
// A request that breaks a rule is answered with 400 (431 for header limits)
// and "Connection: close", the connection is closed, and the handler is
// never called. Upstream responses are held to the same rules, with the few
// tolerances real servers need; an invalid response is an error, never
// forwarded.
//
// The hot path allocates once per request: the header block becomes one
// string and every name and value is a substring of it. Header maps, the
// stream object, the response head buffer and the bufio reader and writer
// are reused for every request on a connection.
package http1

import (
	"errors"
	"io"
	"os"
	"strconv"
)

// ProtocolError is a message that breaks HTTP/1.1 framing or syntax rules.
// Status is the status a server answers the peer with (400, 414, 431, 505,
// ...); for upstream responses it is 502.
type ProtocolError struct {
	Status int
	Reason string
}

func (e *ProtocolError) Error() string { return "http1: " + e.Reason }

// Protocol errors of requests (and the status they are answered with).
var (
	errRequestLine      = &ProtocolError{400, "malformed request line"}
	errMethod           = &ProtocolError{400, "invalid method"}
	errTarget           = &ProtocolError{400, "invalid request target"}
	errVersion          = &ProtocolError{400, "unsupported http version"}
	errBareLF           = &ProtocolError{400, "line not terminated by crlf"}
	errObsFold          = &ProtocolError{400, "obsolete line folding"}
	errHeaderName       = &ProtocolError{400, "invalid header name"}
	errSpaceBeforeColon = &ProtocolError{400, "whitespace between header name and colon"}
	errHeaderValue      = &ProtocolError{400, "invalid header value"}
	errContentLength    = &ProtocolError{400, "invalid content-length"}
	errDupContentLength = &ProtocolError{400, "duplicate content-length"}
	errTransferEncoding = &ProtocolError{400, "unsupported transfer-encoding"}
	errDupTE            = &ProtocolError{400, "duplicate transfer-encoding"}
	errCLAndTE          = &ProtocolError{400, "both content-length and transfer-encoding"}
	errTE10             = &ProtocolError{400, "transfer-encoding in an http/1.0 message"}
	errMissingHost      = &ProtocolError{400, "missing host"}
	errDupHost          = &ProtocolError{400, "more than one host"}
	errHost             = &ProtocolError{400, "invalid host"}
	errLeadingCRLF      = &ProtocolError{400, "too many empty lines before the request"}
	errHeadTooLarge     = &ProtocolError{431, "header block too large"}
	errTooManyHeaders   = &ProtocolError{431, "too many header fields"}
	errURITooLong       = &ProtocolError{414, "request line too long"}
	errTruncatedHead    = &ProtocolError{400, "header block not terminated"}
)

// Protocol errors of bodies (chunked framing, trailers).
var (
	errChunkSize     = &ProtocolError{400, "invalid chunk size"}
	errChunkOverflow = &ProtocolError{400, "chunk size overflows"}
	errChunkExt      = &ProtocolError{400, "invalid chunk extension"}
	errChunkCRLF     = &ProtocolError{400, "chunk data not followed by crlf"}
	errChunkLine     = &ProtocolError{400, "chunk size line too long"}
	errTrailers      = &ProtocolError{400, "trailer section too large"}
)

// Protocol errors of upstream responses.
var (
	errStatusLine     = &ProtocolError{502, "malformed status line"}
	errRespFraming    = &ProtocolError{502, "invalid response framing"}
	errRespHeader     = &ProtocolError{502, "invalid response header"}
	errRespTooLarge   = &ProtocolError{502, "response header block too large"}
	errRespTooMany    = &ProtocolError{502, "too many response header fields"}
	errRespTruncated  = &ProtocolError{502, "response header block not terminated"}
	errRespUnexpected = &ProtocolError{502, "response without a request"}
)

// Errors of the stream and connection API.
var (
	// ErrHeadersWritten: the response (or request) head was already sent.
	ErrHeadersWritten = errors.New("http1: headers already written")
	// ErrNoHeaders: a body or trailers were written before the head.
	ErrNoHeaders = errors.New("http1: body written before headers")
	// ErrStreamDone: the message was already complete.
	ErrStreamDone = errors.New("http1: write after end of stream")
	// ErrBodyLength: the body written does not match Content-Length.
	ErrBodyLength = errors.New("http1: body length does not match content-length")
	// ErrInvalidStatus: :status is missing or not three digits.
	ErrInvalidStatus = errors.New("http1: invalid :status")
	// ErrInvalidField: a header name or value cannot be sent on the wire.
	ErrInvalidField = errors.New("http1: invalid header field")
	// ErrInvalidRequest: the pseudo-headers do not make a request line.
	ErrInvalidRequest = errors.New("http1: invalid request pseudo-headers")
	// ErrNotHijackable: Hijack without a 101 (or a 2xx to CONNECT).
	ErrNotHijackable = errors.New("http1: connection cannot be hijacked")
	// ErrReset: the stream was reset.
	ErrReset = errors.New("http1: stream reset")
	// ErrBusy: a new request on a client connection whose last exchange
	// is not finished.
	ErrBusy = errors.New("http1: connection busy")
	// ErrClosed: the client connection was closed.
	ErrClosed = errors.New("http1: connection closed")
	// ErrHeadersTimeout: the request head did not arrive in time.
	ErrHeadersTimeout = wrapErr{"http1: request headers timeout", os.ErrDeadlineExceeded}
	// ErrBodyTruncated: the peer closed the connection inside a body.
	ErrBodyTruncated = wrapErr{"http1: body truncated", io.ErrUnexpectedEOF}
	// ErrHeadTruncated: the peer closed the connection inside a head.
	ErrHeadTruncated = wrapErr{"http1: header block truncated", io.ErrUnexpectedEOF}
)

// wrapErr is a constant error wrapping another one (errors.Is sees both).
type wrapErr struct {
	msg string
	err error
}

func (e wrapErr) Error() string { return e.msg }
func (e wrapErr) Unwrap() error { return e.err }

// ioError wraps a transport error with the http1 prefix.
type ioError struct {
	op  string
	err error
}

func (e *ioError) Error() string { return "http1: " + e.op + ": " + e.err.Error() }
func (e *ioError) Unwrap() error { return e.err }

// Timeout lets callers that test net.Error see a deadline.
func (e *ioError) Timeout() bool {
	t, ok := e.err.(interface{ Timeout() bool })
	return ok && t.Timeout()
}

const (
	defaultMaxHeaderBytes = 60 << 10
	defaultMaxHeaders     = 100
	bufSize               = 4 << 10
	// maxDiscard is how much of an unread request body the server reads
	// and drops to keep a connection alive.
	maxDiscard = 256 << 10
	// maxLeadingCRLF empty lines are tolerated before a request line.
	maxLeadingCRLF = 4
	// maxChunkLine bounds a chunk-size line with its extensions.
	maxChunkLine = 4096
)

// Character classes, one table lookup per byte.
const (
	cToken  = 1 << iota // tchar (RFC 9110 5.6.2)
	cValue              // field-vchar, SP, HTAB, obs-text
	cTarget             // allowed in a request-target
	cHost               // allowed in Host / authority
	cHex                // hex digit
)

var chars = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		alnum := 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9'
		if alnum || containsByte("!#$%&'*+-.^_`|~", b) {
			t[c] |= cToken
		}
		if b == '\t' || b >= 0x20 && b != 0x7f {
			t[c] |= cValue
		}
		if b > 0x20 && b != 0x7f && b != '#' {
			t[c] |= cTarget
		}
		if alnum || containsByte("-._~!$&'()*+,;=:[]%", b) {
			t[c] |= cHost
		}
		if '0' <= b && b <= '9' || 'a' <= b && b <= 'f' || 'A' <= b && b <= 'F' {
			t[c] |= cHex
		}
	}
	return t
}()

func containsByte(s string, b byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return true
		}
	}
	return false
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if chars[s[i]]&cToken == 0 {
			return false
		}
	}
	return true
}

// validValue reports whether v can be sent as a field value: no CR, LF,
// NUL or other control bytes (HTAB allowed).
func validValue(v string) bool {
	i := 0
	// Eight bytes at a time: a word with no byte below 0x20 and no 0x7f is
	// clean; only words that might hold a control byte (or HTAB) are
	// checked byte by byte.
	for ; i+8 <= len(v); i += 8 {
		x := uint64(v[i]) | uint64(v[i+1])<<8 | uint64(v[i+2])<<16 | uint64(v[i+3])<<24 |
			uint64(v[i+4])<<32 | uint64(v[i+5])<<40 | uint64(v[i+6])<<48 | uint64(v[i+7])<<56
		const lo, hi = 0x0101010101010101, 0x8080808080808080
		y := x ^ (0x7f * lo)
		if (x-0x20*lo)&^x&hi|(y-lo)&^y&hi == 0 {
			continue
		}
		for j := i; j < i+8; j++ {
			if chars[v[j]]&cValue == 0 {
				return false
			}
		}
	}
	for ; i < len(v); i++ {
		if chars[v[i]]&cValue == 0 {
			return false
		}
	}
	return true
}

// parseDecimal parses a non-empty run of ASCII digits; false on anything
// else (signs, spaces, commas) or on int64 overflow.
func parseDecimal(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (1<<63-1-int64(c-'0'))/10 {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parseStatus returns the three-digit status of s.
func parseStatus(s string) (int, bool) {
	if len(s) != 3 {
		return 0, false
	}
	n := 0
	for i := 0; i < 3; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n >= 100
}

// appendInt appends n in decimal.
func appendInt(b []byte, n int64) []byte { return strconv.AppendInt(b, n, 10) }

// appendHex appends n in lower-case hex.
func appendHex(b []byte, n uint64) []byte { return strconv.AppendUint(b, n, 16) }

// StatusText returns the standard reason phrase of code, or "".
func StatusText(code int) string {
	switch code {
	case 100:
		return "Continue"
	case 101:
		return "Switching Protocols"
	case 102:
		return "Processing"
	case 103:
		return "Early Hints"
	case 200:
		return "OK"
	case 201:
		return "Created"
	case 202:
		return "Accepted"
	case 203:
		return "Non-Authoritative Information"
	case 204:
		return "No Content"
	case 205:
		return "Reset Content"
	case 206:
		return "Partial Content"
	case 207:
		return "Multi-Status"
	case 208:
		return "Already Reported"
	case 226:
		return "IM Used"
	case 300:
		return "Multiple Choices"
	case 301:
		return "Moved Permanently"
	case 302:
		return "Found"
	case 303:
		return "See Other"
	case 304:
		return "Not Modified"
	case 305:
		return "Use Proxy"
	case 307:
		return "Temporary Redirect"
	case 308:
		return "Permanent Redirect"
	case 400:
		return "Bad Request"
	case 401:
		return "Unauthorized"
	case 402:
		return "Payment Required"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 406:
		return "Not Acceptable"
	case 407:
		return "Proxy Authentication Required"
	case 408:
		return "Request Timeout"
	case 409:
		return "Conflict"
	case 410:
		return "Gone"
	case 411:
		return "Length Required"
	case 412:
		return "Precondition Failed"
	case 413:
		return "Content Too Large"
	case 414:
		return "URI Too Long"
	case 415:
		return "Unsupported Media Type"
	case 416:
		return "Range Not Satisfiable"
	case 417:
		return "Expectation Failed"
	case 418:
		return "I'm a teapot"
	case 421:
		return "Misdirected Request"
	case 422:
		return "Unprocessable Content"
	case 423:
		return "Locked"
	case 424:
		return "Failed Dependency"
	case 425:
		return "Too Early"
	case 426:
		return "Upgrade Required"
	case 428:
		return "Precondition Required"
	case 429:
		return "Too Many Requests"
	case 431:
		return "Request Header Fields Too Large"
	case 451:
		return "Unavailable For Legal Reasons"
	case 500:
		return "Internal Server Error"
	case 501:
		return "Not Implemented"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	case 504:
		return "Gateway Timeout"
	case 505:
		return "HTTP Version Not Supported"
	case 506:
		return "Variant Also Negotiates"
	case 507:
		return "Insufficient Storage"
	case 508:
		return "Loop Detected"
	case 510:
		return "Not Extended"
	case 511:
		return "Network Authentication Required"
	}
	return ""
}
