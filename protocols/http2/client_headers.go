package http2

import (
	"errors"
	"fmt"
	"net/textproto"
	"strings"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/header"
)

// clientRequestHead is a request head or trailer block checked and
// lower-cased, ready for hpack. It is built before the write lock is
// taken: a block that fails validation must never reach the encoder,
// whose tables change with every field it encodes.
type clientRequestHead struct {
	fields   []hpack.HeaderField
	method   string
	protocol bool   // extended CONNECT (RFC 8441)
	size     uint64 // header list size as RFC 9113 section 6.5.2 counts it
}

var clRequestHeadPool = sync.Pool{New: func() any { return new(clientRequestHead) }}

func (rh *clientRequestHead) release() {
	clear(rh.fields) // drop the strings of the request
	rh.fields = rh.fields[:0]
	rh.method, rh.protocol, rh.size = "", false, 0
	clRequestHeadPool.Put(rh)
}

func (rh *clientRequestHead) add(name, value string, sensitive bool) {
	rh.fields = append(rh.fields, hpack.HeaderField{Name: name, Value: value, Sensitive: sensitive})
	rh.size += uint64(len(name) + len(value) + 32)
}

func clInvalidRequest(why string) error {
	return fmt.Errorf("http2: invalid request: %s", why)
}

// build takes the request head from h: pseudo-headers first in their
// canonical order, :authority from host when absent, then the other fields
// lower-cased, less host and the connection-specific ones HTTP/2 forbids
// (te is kept only as "te: trailers").
func (rh *clientRequestHead) build(h *header.Map) error {
	var method, scheme, authority, path, protocol string
	var hasMethod, hasScheme, hasAuthority, hasPath, hasProtocol bool
	for _, f := range h.Fields() {
		if f.Name == "" || f.Name[0] != ':' {
			continue
		}
		var seen *bool
		switch f.Name {
		case ":method":
			seen, method = &hasMethod, f.Value
		case ":scheme":
			seen, scheme = &hasScheme, f.Value
		case ":authority":
			seen, authority = &hasAuthority, f.Value
		case ":path":
			seen, path = &hasPath, f.Value
		case ":protocol":
			seen, protocol = &hasProtocol, f.Value
		default:
			return clInvalidRequest("unknown pseudo-header " + f.Name)
		}
		if *seen {
			return clInvalidRequest("duplicate " + f.Name)
		}
		*seen = true
	}
	if !hasAuthority {
		authority, hasAuthority = h.Get("host")
	}
	if !isToken(method) {
		return clInvalidRequest("missing or invalid :method")
	}
	if hasAuthority && !clValidAuthority(authority) {
		return clInvalidRequest("invalid :authority")
	}
	rh.method = method
	rh.add(":method", method, false)
	if method == "CONNECT" && !hasProtocol {
		// RFC 9113 section 8.5: only :method and :authority.
		if hasScheme || hasPath || authority == "" {
			return clInvalidRequest("CONNECT takes :authority and neither :scheme nor :path")
		}
		rh.add(":authority", authority, false)
	} else {
		if scheme == "" || !clValidValue(scheme) {
			return clInvalidRequest("missing or invalid :scheme")
		}
		if path == "" || !clValidPath(path) {
			return clInvalidRequest("missing or invalid :path")
		}
		rh.add(":scheme", scheme, false)
		if authority != "" {
			rh.add(":authority", authority, false)
		}
		rh.add(":path", path, false)
		if hasProtocol {
			if method != "CONNECT" || protocol == "" || !clValidValue(protocol) {
				return clInvalidRequest(":protocol without CONNECT")
			}
			rh.protocol = true
			rh.add(":protocol", protocol, false)
		}
	}
	return rh.addRegular(h, false)
}

// buildTrailers takes a trailer block: no pseudo-headers.
func (rh *clientRequestHead) buildTrailers(t *header.Map) error {
	return rh.addRegular(t, true)
}

func (rh *clientRequestHead) addRegular(h *header.Map, trailers bool) error {
	for _, f := range h.Fields() {
		if f.Name == "" {
			return clInvalidRequest("empty field name")
		}
		if f.Name[0] == ':' {
			if trailers {
				return clInvalidRequest("pseudo-header " + f.Name + " in trailers")
			}
			continue
		}
		name, ok := clLowerName(f.Name)
		if !ok {
			return clInvalidRequest(fmt.Sprintf("invalid field name %q", f.Name))
		}
		if name == "host" || isConnectionSpecific(name) {
			continue
		}
		value := f.Value
		if name == "te" {
			if !header.ListHasToken(value, "trailers") {
				continue
			}
			value = "trailers"
		}
		if !clValidValue(value) {
			return clInvalidRequest("invalid value of " + name)
		}
		rh.add(name, value, name == "authorization" || name == "proxy-authorization")
	}
	return nil
}

// clCommonLower maps the canonical spelling of common header names to
// their lower case, so lower-casing what HTTP/1 clients send does not
// allocate.
var clCommonLower = func() map[string]string {
	names := []string{
		"accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges",
		"access-control-request-headers", "access-control-request-method", "age",
		"authorization", "cache-control", "content-disposition", "content-encoding",
		"content-language", "content-length", "content-location", "content-range",
		"content-type", "cookie", "date", "etag", "expect", "forwarded", "from",
		"if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
		"last-modified", "link", "location", "max-forwards", "origin", "pragma",
		"proxy-authorization", "range", "referer", "traceparent", "tracestate",
		"user-agent", "via", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
		"x-real-ip", "x-request-id",
	}
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[textproto.CanonicalMIMEHeaderKey(n)] = n
	}
	return m
}()

// clLowerName validates a field name and returns it in lower case.
func clLowerName(name string) (string, bool) {
	upper := false
	for i := 0; i < len(name); i++ {
		c := name[i]
		if chars[c]&cToken == 0 {
			return "", false
		}
		upper = upper || 'A' <= c && c <= 'Z'
	}
	if !upper {
		return name, true
	}
	if lower, ok := clCommonLower[name]; ok {
		return lower, true
	}
	return strings.ToLower(name), true
}

// clValidValue rejects the bytes no HTTP version lets through a field
// value: NUL, CR and LF.
func clValidValue(v string) bool {
	return strings.IndexByte(v, 0) < 0 && strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0
}

// clValidPath accepts a request target without controls or spaces.
func clValidPath(p string) bool {
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// clValidAuthority accepts host[:port] without userinfo, controls,
// spaces or the delimiters that would change the URI's meaning.
func clValidAuthority(a string) bool {
	for i := 0; i < len(a); i++ {
		switch c := a[i]; {
		case c <= ' ', c == 0x7f, c == '/', c == '?', c == '#', c == '@', c == '\\':
			return false
		}
	}
	return true
}

// clParseStatus parses a three-digit :status.
func clParseStatus(v string) (int, bool) {
	if len(v) != 3 {
		return 0, false
	}
	n := 0
	for i := 0; i < 3; i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n >= 100
}

// clCheckResponseFields returns why a response's regular fields are
// malformed, or "". The framer already checked names and values.
func clCheckResponseFields(fields []hpack.HeaderField) string {
	for _, f := range fields {
		if isConnectionSpecific(f.Name) {
			return "connection-specific field " + f.Name
		}
	}
	return ""
}

var clErrBadLength = errors.New("invalid content-length")

// clContentLength returns the response's content-length, -1 when absent;
// false when a value is invalid or values disagree.
func clContentLength(fields []hpack.HeaderField) (int64, bool) {
	cl := int64(-1)
	for _, f := range fields {
		if f.Name != "content-length" {
			continue
		}
		n, err := clParseLength(f.Value)
		if err != nil || cl >= 0 && n != cl {
			return 0, false
		}
		cl = n
	}
	return cl, true
}

func clParseLength(v string) (int64, error) {
	if v == "" || len(v) > 18 {
		return 0, clErrBadLength
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, clErrBadLength
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// clHeadFields copies a decoded head into header fields.
func clHeadFields(f *http2.MetaHeadersFrame) []header.Field {
	fields := make([]header.Field, len(f.Fields))
	for i, hf := range f.Fields {
		fields[i] = header.Field{Name: hf.Name, Value: hf.Value}
	}
	return fields
}
