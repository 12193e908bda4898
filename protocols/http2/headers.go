package http2

import (
	"errors"
	"strings"

	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/header"
)

// blockKind says what the header block being decoded is for.
type blockKind uint8

const (
	blockNone     blockKind = iota // no header block in progress
	blockRequest                   // a request head opening a stream
	blockTrailers                  // request trailers on an open stream
	blockDiscard                   // decoded only to keep HPACK in sync
)

// Pseudo-header bits of headerBlock.seen.
const (
	seenMethod = 1 << iota
	seenScheme
	seenPath
	seenAuthority
)

// Positions of the pseudo-headers in a request map, as the HTTP/1 codec
// lays them out, so filters see the same map from either protocol.
const (
	idxMethod = iota
	idxPath
	idxAuthority
	idxScheme
	numPseudo
)

// headerBlock is the decoding state of one HEADERS + CONTINUATION
// sequence. Fields are validated and added to the target map as the HPACK
// decoder emits them; the first malformation is kept in err and decoding
// continues silently, since the HPACK state must stay in sync.
type headerBlock struct {
	kind      blockKind
	streamID  uint32
	endStream bool
	st        *serverStream // nil when discarding

	frames   int // CONTINUATION frames so far
	encoded  int // encoded bytes so far
	listSize int // RFC 9113 section 6.5.2 size of the decoded fields
	count    int
	tooLarge bool
	err      error

	sawRegular      bool
	seen            uint8
	method, scheme  string
	path, authority string
	host            string
	hostSeen        bool
	contentLength   int64
	cookieIdx       int
	expectContinue  bool
}

// Reasons a header block is malformed (stream error PROTOCOL_ERROR).
var (
	errPseudoAfterRegular = errors.New("pseudo-header after a regular field")
	errUnknownPseudo      = errors.New("unknown or response pseudo-header")
	errDuplicatePseudo    = errors.New("duplicate pseudo-header")
	errFieldName          = errors.New("invalid field name")
	errFieldValue         = errors.New("invalid field value")
	errConnectionSpecific = errors.New("connection-specific field")
	errTE                 = errors.New("te other than trailers")
	errContentLengthField = errors.New("invalid content-length")
	errDuplicateHost      = errors.New("more than one host field")
	errMissingPseudo      = errors.New("missing :method, :scheme or :path")
	errConnectPseudo      = errors.New("CONNECT with :scheme or :path, or without :authority")
	errPathValue          = errors.New("invalid :path")
	errMethodValue        = errors.New("invalid :method")
	errSchemeValue        = errors.New("invalid :scheme")
	errAuthorityValue     = errors.New("invalid :authority or host")
	errHostMismatch       = errors.New("host differs from :authority")
	errPseudoInTrailers   = errors.New("pseudo-header in trailers")
	errTrailersNoEnd      = errors.New("trailers without END_STREAM")
	errBodyLength         = errors.New("body length differs from content-length")
)

// begin starts a block. The request map gets its four pseudo-headers
// first, filled in by finishRequest.
func (b *headerBlock) begin(kind blockKind, id uint32, endStream bool, st *serverStream) {
	*b = headerBlock{kind: kind, streamID: id, endStream: endStream, st: st, contentLength: -1, cookieIdx: -1}
	if kind == blockRequest {
		m := &st.req
		m.Reset()
		m.Add(":method", "")
		m.Add(":path", "")
		m.Add(":authority", "")
		m.Add(":scheme", "")
	}
}

// field takes one decoded field. It reports false when the block went
// over the size or count limit, so the caller can stop emitting.
func (b *headerBlock) field(f hpack.HeaderField, maxList, maxCount int) bool {
	b.listSize += len(f.Name) + len(f.Value) + 32
	b.count++
	if b.listSize > maxList || b.count > maxCount {
		b.tooLarge = true
		return false
	}
	if b.err != nil {
		return true
	}
	if b.kind == blockTrailers {
		b.trailerField(f.Name, f.Value)
	} else {
		b.requestField(f.Name, f.Value)
	}
	return true
}

func (b *headerBlock) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

func (b *headerBlock) pseudo(bit uint8, dst *string, v string) {
	if b.seen&bit != 0 {
		b.fail(errDuplicatePseudo)
		return
	}
	b.seen |= bit
	*dst = v
}

func (b *headerBlock) requestField(name, value string) {
	if name != "" && name[0] == ':' {
		if b.sawRegular {
			b.fail(errPseudoAfterRegular)
			return
		}
		switch name {
		case ":method":
			b.pseudo(seenMethod, &b.method, value)
		case ":scheme":
			b.pseudo(seenScheme, &b.scheme, value)
		case ":path":
			b.pseudo(seenPath, &b.path, value)
		case ":authority":
			b.pseudo(seenAuthority, &b.authority, value)
		default:
			// :status, and :protocol since we do not advertise extended
			// CONNECT (RFC 8441).
			b.fail(errUnknownPseudo)
		}
		return
	}
	b.sawRegular = true
	if !validFieldName(name) {
		b.fail(errFieldName)
		return
	}
	if !validFieldValue(value) {
		b.fail(errFieldValue)
		return
	}
	m := &b.st.req
	switch len(name) {
	case 2:
		if name == "te" && !header.EqualFold(value, "trailers") {
			b.fail(errTE)
			return
		}
	case 4:
		if name == "host" {
			// Kept out of the map: :authority carries it, as in HTTP/1.
			if b.hostSeen {
				b.fail(errDuplicateHost)
			}
			b.host, b.hostSeen = value, true
			return
		}
	case 6:
		switch name {
		case "cookie":
			// RFC 9113 section 8.2.3: crumbs split into fields are joined
			// again for HTTP/1.1 semantics.
			if b.cookieIdx >= 0 {
				fs := m.Fields()
				fs[b.cookieIdx].Value += "; " + value
				return
			}
			b.cookieIdx = m.Len()
		case "expect":
			if header.EqualFold(value, "100-continue") {
				b.expectContinue = true
			}
		}
	case 7:
		if name == "upgrade" {
			b.fail(errConnectionSpecific)
			return
		}
	case 10:
		if name == "connection" || name == "keep-alive" {
			b.fail(errConnectionSpecific)
			return
		}
	case 14:
		if name == "content-length" {
			n, ok := parseContentLength(value)
			if !ok || b.contentLength >= 0 && n != b.contentLength {
				b.fail(errContentLengthField)
				return
			}
			if b.contentLength >= 0 {
				return // an identical duplicate adds nothing
			}
			b.contentLength = n
		}
	case 16:
		if name == "proxy-connection" {
			b.fail(errConnectionSpecific)
			return
		}
	case 17:
		if name == "transfer-encoding" {
			b.fail(errConnectionSpecific)
			return
		}
	}
	m.Add(name, value)
}

func (b *headerBlock) trailerField(name, value string) {
	switch {
	case name != "" && name[0] == ':':
		b.fail(errPseudoInTrailers)
	case !validFieldName(name):
		b.fail(errFieldName)
	case !validFieldValue(value):
		b.fail(errFieldValue)
	case isConnectionSpecific(name):
		b.fail(errConnectionSpecific)
	default:
		b.st.trailers.Add(name, value)
	}
}

// finishRequest checks the pseudo-headers of a complete request block
// and fills them into the map (RFC 9113 section 8.3.1).
func (b *headerBlock) finishRequest(scheme string) error {
	if b.err != nil {
		return b.err
	}
	if b.seen&seenMethod == 0 || !isToken(b.method) {
		if b.seen&seenMethod == 0 {
			return errMissingPseudo
		}
		return errMethodValue
	}
	authority := b.authority
	if b.seen&seenAuthority == 0 {
		authority = b.host
	} else if b.hostSeen && b.host != authority {
		return errHostMismatch
	}
	path := b.path
	if b.method == "CONNECT" {
		// A tunnel (RFC 9113 section 8.5): the map carries the target as
		// :path, and our own scheme, as the HTTP/1 codec does.
		if b.seen&(seenScheme|seenPath) != 0 || b.seen&seenAuthority == 0 {
			return errConnectPseudo
		}
		if !validAuthority(authority, true) {
			return errAuthorityValue
		}
		path = authority
	} else {
		if b.seen&(seenScheme|seenPath) != seenScheme|seenPath {
			return errMissingPseudo
		}
		if !validScheme(b.scheme) {
			return errSchemeValue
		}
		scheme = b.scheme
		if !validPath(path, b.method) {
			return errPathValue
		}
		if !validAuthority(authority, false) {
			return errAuthorityValue
		}
	}
	if b.endStream && b.contentLength > 0 {
		return errBodyLength
	}
	fs := b.st.req.Fields()
	fs[idxMethod].Value = b.method
	fs[idxPath].Value = path
	fs[idxAuthority].Value = authority
	fs[idxScheme].Value = scheme
	return nil
}

// finishTrailers checks a complete trailer block.
func (b *headerBlock) finishTrailers() error {
	if b.err != nil {
		return b.err
	}
	if !b.endStream {
		return errTrailersNoEnd
	}
	return nil
}

func isConnectionSpecific(name string) bool {
	switch len(name) {
	case 7:
		return header.EqualFold(name, "upgrade")
	case 10:
		return header.EqualFold(name, "connection") || header.EqualFold(name, "keep-alive")
	case 16:
		return header.EqualFold(name, "proxy-connection")
	case 17:
		return header.EqualFold(name, "transfer-encoding")
	}
	return false
}

// Character classes.
const (
	cToken  = 1 << iota // RFC 9110 tchar
	cLower              // tchar that is not an upper-case letter
	cHost               // reg-name, IP literal and port characters
	cPath               // visible ASCII allowed in a request target
	cScheme             // ALPHA / DIGIT / "+" / "-" / "."
)

var chars = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		alpha := 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z'
		digit := '0' <= b && b <= '9'
		if alpha || digit || strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0 {
			t[c] |= cToken
			if !('A' <= b && b <= 'Z') {
				t[c] |= cLower
			}
		}
		if alpha || digit || strings.IndexByte("-._~%!$&'()*+,;=:[]", b) >= 0 {
			t[c] |= cHost
		}
		if 0x21 <= b && b <= 0x7e || b >= 0x80 {
			t[c] |= cPath
		}
		if alpha || digit || b == '+' || b == '-' || b == '.' {
			t[c] |= cScheme
		}
	}
	return t
}()

// validFieldName reports whether a received name is a lower-case token
// (RFC 9113 section 8.2.1).
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if chars[s[i]]&cLower == 0 {
			return false
		}
	}
	return true
}

// validFieldValue rejects control characters (NUL, CR and LF above all)
// and leading or trailing whitespace (RFC 9113 section 8.2.1).
func validFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	if n := len(s); n > 0 && (isOWS(s[0]) || isOWS(s[n-1])) {
		return false
	}
	return true
}

// validResponseValue is the looser check for values we send: only the
// characters that would break framing after translation are refused.
func validResponseValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == 0 || c == '\r' || c == '\n' {
			return false
		}
	}
	return true
}

func isOWS(c byte) bool { return c == ' ' || c == '\t' }

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

func validScheme(s string) bool {
	if s == "" || !('a' <= s[0] && s[0] <= 'z' || 'A' <= s[0] && s[0] <= 'Z') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if chars[s[i]]&cScheme == 0 {
			return false
		}
	}
	return true
}

// validPath accepts origin-form ("/...") and "*" for OPTIONS.
func validPath(p, method string) bool {
	switch {
	case p == "":
		return false
	case p == "*":
		return method == "OPTIONS"
	case p[0] != '/':
		return false
	}
	for i := 0; i < len(p); i++ {
		if chars[p[i]]&cPath == 0 {
			return false
		}
	}
	return true
}

// validAuthority checks reg-name / IP-literal characters and an optional
// port; needPort for CONNECT targets. No userinfo.
func validAuthority(a string, needPort bool) bool {
	for i := 0; i < len(a); i++ {
		if chars[a[i]]&cHost == 0 {
			return false
		}
	}
	if !needPort {
		return true
	}
	c := strings.LastIndexByte(a, ':')
	if c <= 0 || c == len(a)-1 {
		return false
	}
	_, ok := parseContentLength(a[c+1:])
	return ok
}

// parseContentLength parses a non-negative decimal of at most 18 digits.
func parseContentLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// lowerName returns name in lower case, allocating only when it has an
// upper-case letter.
func lowerName(name string) string {
	for i := 0; i < len(name); i++ {
		if 'A' <= name[i] && name[i] <= 'Z' {
			return strings.ToLower(name)
		}
	}
	return name
}

// validStatus reports whether s is a three-digit status code and returns
// it.
func validStatus(s string) (int, bool) {
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

// encodeFields HPACK-encodes a response head (status non-empty) or a
// trailer block into sc.hbuf. It validates everything before encoding,
// because a half-encoded block would desynchronise the peer's decoder.
// Pseudo-headers other than :status and connection-specific fields are
// dropped. mu is held.
func (sc *serverConn) encodeFields(status string, h *header.Map) error {
	fs := h.Fields()
	for i := range fs {
		f := &fs[i]
		if f.Name == "" || !validResponseValue(f.Value) {
			return ErrInvalidField
		}
		if f.Name[0] != ':' && !isToken(f.Name) {
			return ErrInvalidField
		}
	}
	sc.hbuf.Reset()
	if status != "" {
		sc.henc.WriteField(hpack.HeaderField{Name: ":status", Value: status})
	}
	for i := range fs {
		f := &fs[i]
		if f.Name[0] == ':' || isConnectionSpecific(f.Name) {
			continue
		}
		sc.henc.WriteField(hpack.HeaderField{Name: lowerName(f.Name), Value: f.Value})
	}
	return nil
}
