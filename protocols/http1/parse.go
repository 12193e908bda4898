package http1

import (
	"bufio"
	"bytes"
	"io"
	"strings"

	"github.com/sluice-proxy/sluice/engine/header"
)

var crlfcrlf = []byte("\r\n\r\n")

// readHead reads one header block (start line through the empty line) and
// returns it as one string: the only allocation of a request. Leading empty
// lines are skipped (at most maxLeadingCRLF). The block is not validated
// here, except that it ends at the first empty line ("\r\n" or a bare "\n",
// which the parser then rejects). Errors: a *ProtocolError for limits,
// io.EOF when nothing at all was read, ErrHeadTruncated when the peer closed
// inside the block, or the transport error (timeouts) as is.
func readHead(br *bufio.Reader, acc *[]byte, max int, resp bool) (string, error) {
	for i := 0; ; i++ {
		b, err := br.Peek(2)
		if err != nil {
			if len(b) > 0 && err == io.EOF {
				return "", ErrHeadTruncated
			}
			return "", err
		}
		if b[0] != '\r' || b[1] != '\n' {
			break
		}
		if i == maxLeadingCRLF {
			if resp {
				return "", errStatusLine
			}
			return "", errLeadingCRLF
		}
		br.Discard(2)
	}
	// Fast path: the whole block is already buffered.
	if b, _ := br.Peek(br.Buffered()); len(b) > 0 {
		if i := bytes.Index(b, crlfcrlf); i >= 0 && i+4 <= max {
			s := string(b[:i+4])
			br.Discard(i + 4)
			return s, nil
		}
	}
	// Slow path: line by line into acc.
	a := (*acc)[:0]
	defer func() { *acc = a[:0] }()
	lineStart := 0
	for {
		line, err := br.ReadSlice('\n')
		if len(a)+len(line) > max {
			switch {
			case resp:
				return "", errRespTooLarge
			case lineStart == 0:
				return "", errURITooLong
			}
			return "", errHeadTooLarge
		}
		a = append(a, line...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF {
				if len(a) == 0 {
					return "", io.EOF
				}
				return "", ErrHeadTruncated
			}
			return "", err
		}
		l := a[lineStart:]
		if len(l) == 1 || lineStart > 0 && len(l) == 2 && l[0] == '\r' {
			break
		}
		lineStart = len(a)
	}
	return string(a), nil
}

// reqInfo is what the server needs to know about a parsed request.
type reqInfo struct {
	method        string
	minor         int   // HTTP/1.minor
	contentLength int64 // -1 when absent
	chunked       bool
	connClose     bool
	connKeepAlive bool
	connUpgrade   bool
	expect100     bool
	upgrade       bool // an Upgrade header is present
}

// fieldInfo collects the framing headers while fields are parsed.
type fieldInfo struct {
	contentLength int64
	clSeen        bool
	chunked       bool
	teSeen        bool
	connClose     bool
	connKeepAlive bool
	connUpgrade   bool
	expect100     bool
	upgrade       bool
	hosts         int
	host          string
}

type fieldMode uint8

const (
	modeRequest fieldMode = iota
	modeResponse
	modeTrailer
)

// parseRequestHead parses a header block read by readHead into h (which
// must be empty): :method, :path, :authority, :scheme, then the fields in
// wire order without Host and Transfer-Encoding.
func parseRequestHead(s, scheme string, maxHeaders int, h *header.Map, ri *reqInfo) error {
	*ri = reqInfo{contentLength: -1}
	i := strings.IndexByte(s, '\n')
	if i < 1 || s[i-1] != '\r' {
		return errBareLF
	}
	line := s[:i-1]
	rest := s[i+1:]

	sp := strings.IndexByte(line, ' ')
	if sp < 0 {
		return errRequestLine
	}
	method := line[:sp]
	if !isToken(method) {
		if sp == 0 {
			return errRequestLine
		}
		return errMethod
	}
	line = line[sp+1:]
	sp = strings.IndexByte(line, ' ')
	if sp <= 0 {
		return errRequestLine
	}
	target, version := line[:sp], line[sp+1:]
	switch version {
	case "HTTP/1.1":
		ri.minor = 1
	case "HTTP/1.0":
		ri.minor = 0
	default:
		if strings.IndexByte(version, ' ') >= 0 {
			return errRequestLine
		}
		return errVersion
	}
	for j := 0; j < len(target); j++ {
		if chars[target[j]]&cTarget == 0 {
			return errTarget
		}
	}
	authority, absolute := "", false
	switch {
	case target[0] == '/':
	case target == "*":
		if method != "OPTIONS" {
			return errTarget
		}
	case method == "CONNECT":
		authority, absolute = target, true
		if !validAuthority(authority, true) {
			return errTarget
		}
	default:
		a, ok := absoluteAuthority(target)
		if !ok {
			return errTarget
		}
		authority, absolute = a, true
	}
	ri.method = method

	h.Add(":method", method)
	h.Add(":path", target)
	h.Add(":authority", authority)
	h.Add(":scheme", scheme)

	var fi fieldInfo
	if err := parseFields(rest, h, maxHeaders, modeRequest, &fi); err != nil {
		return err
	}
	switch {
	case fi.hosts > 1:
		return errDupHost
	case fi.hosts == 0 && ri.minor == 1:
		return errMissingHost
	case fi.hosts == 1 && !validAuthority(fi.host, false):
		return errHost
	case fi.teSeen && fi.clSeen:
		return errCLAndTE
	case fi.teSeen && ri.minor == 0:
		return errTE10
	}
	if !absolute && fi.hosts == 1 {
		// :authority is the third field: set it in place.
		h.Fields()[2].Value = fi.host
	}
	if fi.clSeen {
		ri.contentLength = fi.contentLength
	}
	ri.chunked = fi.chunked
	ri.connClose, ri.connKeepAlive, ri.connUpgrade = fi.connClose, fi.connKeepAlive, fi.connUpgrade
	ri.expect100 = fi.expect100 && ri.minor == 1
	ri.upgrade = fi.upgrade
	return nil
}

// absoluteAuthority returns the authority of an absolute-form target
// (http or https only).
func absoluteAuthority(t string) (string, bool) {
	var rest string
	switch {
	case len(t) > 7 && header.EqualFold(t[:7], "http://"):
		rest = t[7:]
	case len(t) > 8 && header.EqualFold(t[:8], "https://"):
		rest = t[8:]
	default:
		return "", false
	}
	end := len(rest)
	for i := 0; i < len(rest); i++ {
		if rest[i] == '/' || rest[i] == '?' {
			end = i
			break
		}
	}
	a := rest[:end]
	if a == "" || !validAuthority(a, false) {
		return "", false
	}
	return a, true
}

// validAuthority checks a Host value (or authority): reg-name / IP literal
// characters, optional port; no userinfo. needPort for CONNECT targets.
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
	_, ok := parseDecimal(a[c+1:])
	return ok
}

// parseFields parses the field lines of s, which ends with the empty line,
// appending them to h. Host (requests only) and Transfer-Encoding are
// recorded in fi and not added.
func parseFields(s string, h *header.Map, maxHeaders int, mode fieldMode, fi *fieldInfo) error {
	resp := mode == modeResponse
	n := 0
	for {
		j := strings.IndexByte(s, '\n')
		if j < 0 {
			return errTruncatedHead
		}
		if j == 0 || s[j-1] != '\r' {
			return errBareLF
		}
		line := s[:j-1]
		s = s[j+1:]
		if line == "" {
			if s != "" {
				return errTruncatedHead
			}
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return errObsFold
		}
		k := 0
		for k < len(line) && chars[line[k]]&cToken != 0 {
			k++
		}
		if k == len(line) || line[k] != ':' {
			if k > 0 && k < len(line) && (line[k] == ' ' || line[k] == '\t') {
				return errSpaceBeforeColon
			}
			return errHeaderName
		}
		if k == 0 {
			return errHeaderName
		}
		name := line[:k]
		v := line[k+1:]
		if !validValue(v) {
			return errHeaderValue
		}
		v = header.TrimOWS(v)
		n++
		if n > maxHeaders {
			return errTooManyHeaders
		}
		if mode == modeTrailer {
			h.Add(name, v)
			continue
		}
		switch len(name) {
		case 4:
			if !resp && header.EqualFold(name, "host") {
				fi.hosts++
				fi.host = v
				continue
			}
		case 6:
			if header.EqualFold(name, "expect") && header.EqualFold(v, "100-continue") {
				fi.expect100 = true
			}
		case 7:
			if header.EqualFold(name, "upgrade") {
				fi.upgrade = true
			}
		case 10:
			if header.EqualFold(name, "connection") {
				scanConnection(v, fi)
			}
		case 14:
			if header.EqualFold(name, "content-length") {
				cl, val, err := contentLength(v, resp)
				if err != nil {
					return err
				}
				if fi.clSeen {
					if !resp || cl != fi.contentLength {
						return errDupContentLength
					}
					continue // an identical repeat: keep one
				}
				fi.clSeen, fi.contentLength = true, cl
				v = val
			}
		case 17:
			if header.EqualFold(name, "transfer-encoding") {
				if fi.teSeen {
					return errDupTE
				}
				fi.teSeen = true
				if !header.EqualFold(v, "chunked") {
					return errTransferEncoding
				}
				fi.chunked = true
				continue
			}
		}
		h.Add(name, v)
	}
}

// contentLength parses a Content-Length value. Requests take digits only;
// responses may repeat one value in a list ("42, 42"), which is reduced to
// its first element.
func contentLength(v string, lenient bool) (int64, string, error) {
	if n, ok := parseDecimal(v); ok {
		return n, v, nil
	}
	if !lenient || strings.IndexByte(v, ',') < 0 {
		return 0, "", errContentLength
	}
	first := ""
	var n int64
	for i, more := 0, true; more; i++ {
		var item string
		item, v, more = strings.Cut(v, ",")
		item = header.TrimOWS(item)
		m, ok := parseDecimal(item)
		if !ok || i > 0 && m != n {
			return 0, "", errContentLength
		}
		if i == 0 {
			first, n = item, m
		}
	}
	return n, first, nil
}

func scanConnection(v string, fi *fieldInfo) {
	for len(v) > 0 {
		item := v
		if c := strings.IndexByte(v, ','); c >= 0 {
			item, v = v[:c], v[c+1:]
		} else {
			v = ""
		}
		item = header.TrimOWS(item)
		switch len(item) {
		case 5:
			if header.EqualFold(item, "close") {
				fi.connClose = true
			}
		case 7:
			if header.EqualFold(item, "upgrade") {
				fi.connUpgrade = true
			}
		case 10:
			if header.EqualFold(item, "keep-alive") {
				fi.connKeepAlive = true
			}
		}
	}
}

// respInfo is what the client needs to know about a parsed response head.
type respInfo struct {
	status        int
	minor         int
	contentLength int64
	chunked       bool
	connClose     bool
	connKeepAlive bool
}

// parseResponseHead parses a status line and fields into h (empty):
// ":status" first.
func parseResponseHead(s string, maxHeaders int, h *header.Map, ri *respInfo) error {
	*ri = respInfo{contentLength: -1}
	i := strings.IndexByte(s, '\n')
	if i < 1 || s[i-1] != '\r' {
		return errStatusLine
	}
	line := s[:i-1]
	if len(line) < 12 || line[8] != ' ' {
		return errStatusLine
	}
	switch line[:8] {
	case "HTTP/1.1":
		ri.minor = 1
	case "HTTP/1.0":
		ri.minor = 0
	default:
		return errStatusLine
	}
	code := line[9:12]
	st, ok := parseStatus(code)
	if !ok {
		return errStatusLine
	}
	if len(line) > 12 {
		if line[12] != ' ' {
			return errStatusLine
		}
		reason := line[13:]
		for j := 0; j < len(reason); j++ {
			if chars[reason[j]]&cValue == 0 {
				return errStatusLine
			}
		}
	}
	ri.status = st
	h.Add(":status", code)
	var fi fieldInfo
	if err := parseFields(s[i+1:], h, maxHeaders, modeResponse, &fi); err != nil {
		if pe, ok := err.(*ProtocolError); ok && pe.Status != 502 {
			switch pe {
			case errTooManyHeaders:
				return errRespTooMany
			case errTruncatedHead:
				return errRespTruncated
			}
			return &ProtocolError{502, "upstream response: " + pe.Reason}
		}
		return err
	}
	if fi.teSeen && fi.clSeen {
		return errRespFraming
	}
	if fi.teSeen && ri.minor == 0 {
		return errRespFraming
	}
	if fi.clSeen {
		ri.contentLength = fi.contentLength
	}
	ri.chunked = fi.chunked
	ri.connClose, ri.connKeepAlive = fi.connClose, fi.connKeepAlive
	return nil
}
