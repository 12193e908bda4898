package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/sluice-proxy/sluice/engine/header"
)

// parseRequest runs the server's head reading and parsing on raw.
func parseRequest(raw string, maxBytes, maxHeaders int) (*header.Map, reqInfo, error) {
	br := bufio.NewReaderSize(strings.NewReader(raw), bufSize)
	var acc []byte
	var h header.Map
	var ri reqInfo
	s, err := readHead(br, &acc, maxBytes, false)
	if err != nil {
		return &h, ri, err
	}
	if err := parseRequestHead(s, "http", maxHeaders, &h, &ri); err != nil {
		return &h, ri, err
	}
	if ri.chunked {
		if err := checkBufferedChunks(br); err != nil {
			return &h, ri, err
		}
	}
	return &h, ri, nil
}

func TestParseRequestValid(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		fields []string // name, value pairs after the pseudo-headers
		method string
		path   string
		auth   string
		cl     int64
		chunk  bool
		minor  int
		close  bool
		expect bool
	}{
		{name: "simple", raw: "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
			fields: []string{"User-Agent", "x", "Accept", "*/*"}, method: "GET", path: "/a?b=c", auth: "example.com", cl: -1, minor: 1},
		{name: "case and order kept", raw: "GET / HTTP/1.1\r\nX-CUSTOM-hdr: V\r\nhost: h:8080\r\naccept: a\r\nX-Custom-Hdr: w\r\n\r\n",
			fields: []string{"X-CUSTOM-hdr", "V", "accept", "a", "X-Custom-Hdr", "w"}, method: "GET", path: "/", auth: "h:8080", cl: -1, minor: 1},
		{name: "content-length kept", raw: "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
			fields: []string{"Content-Length", "5"}, method: "POST", path: "/p", auth: "a", cl: 5, minor: 1},
		{name: "content-length leading zeros", raw: "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n",
			fields: []string{"Content-Length", "007"}, method: "POST", path: "/p", auth: "a", cl: 7, minor: 1},
		{name: "chunked removed", raw: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n0\r\n\r\n",
			fields: []string{"X", "y"}, method: "POST", path: "/", auth: "a", cl: -1, chunk: true, minor: 1},
		{name: "chunked any case", raw: "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  Chunked \r\n\r\n",
			method: "POST", path: "/", auth: "a", cl: -1, chunk: true, minor: 1},
		{name: "http/1.0 without host", raw: "GET / HTTP/1.0\r\n\r\n", method: "GET", path: "/", cl: -1, minor: 0, close: true},
		{name: "http/1.0 keep-alive", raw: "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
			fields: []string{"Connection", "Keep-Alive"}, method: "GET", path: "/", cl: -1, minor: 0},
		{name: "ows trimmed", raw: "GET / HTTP/1.1\r\nHost: a\r\nX-A: \t v  w \t\r\nX-B:v\r\n\r\n",
			fields: []string{"X-A", "v  w", "X-B", "v"}, method: "GET", path: "/", auth: "a", cl: -1, minor: 1},
		{name: "empty value", raw: "GET / HTTP/1.1\r\nHost: a\r\nX-A:\r\nX-B: \r\n\r\n",
			fields: []string{"X-A", "", "X-B", ""}, method: "GET", path: "/", auth: "a", cl: -1, minor: 1},
		{name: "empty host", raw: "GET / HTTP/1.1\r\nHost:\r\n\r\n", method: "GET", path: "/", auth: "", cl: -1, minor: 1},
		{name: "leading empty lines", raw: "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", method: "GET", path: "/", auth: "a", cl: -1, minor: 1},
		{name: "absolute form", raw: "GET http://up.example:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n",
			method: "GET", path: "http://up.example:81/x?y", auth: "up.example:81", cl: -1, minor: 1},
		{name: "options asterisk", raw: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", method: "OPTIONS", path: "*", auth: "a", cl: -1, minor: 1},
		{name: "connect", raw: "CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n",
			method: "CONNECT", path: "db.internal:5432", auth: "db.internal:5432", cl: -1, minor: 1},
		{name: "connection close", raw: "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n",
			fields: []string{"Connection", "keep-alive, Close"}, method: "GET", path: "/", auth: "a", cl: -1, minor: 1, close: true},
		{name: "expect", raw: "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n",
			fields: []string{"Expect", "100-Continue", "Content-Length", "3"}, method: "PUT", path: "/", auth: "a", cl: 3, minor: 1, expect: true},
		{name: "obs-text value", raw: "GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xc3\xa9\r\n\r\n",
			fields: []string{"X-A", "caf\xc3\xa9"}, method: "GET", path: "/", auth: "a", cl: -1, minor: 1},
		{name: "utf-8 in path", raw: "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", method: "GET", path: "/caf\xc3\xa9", auth: "a", cl: -1, minor: 1},
		{name: "custom method", raw: "PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n", method: "PURGE", path: "/x", auth: "a", cl: -1, minor: 1},
		{name: "ipv6 host", raw: "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", method: "GET", path: "/", auth: "[::1]:8080", cl: -1, minor: 1},
		{name: "chunked body framing ok", raw: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=\"v;x\"\r\nhello\r\n0\r\n\r\n",
			method: "POST", path: "/", auth: "a", cl: -1, chunk: true, minor: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, ri, err := parseRequest(tc.raw, defaultMaxHeaderBytes, defaultMaxHeaders)
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			want := mapOf(":method", tc.method, ":path", tc.path, ":authority", tc.auth, ":scheme", "http")
			for i := 0; i+1 < len(tc.fields); i += 2 {
				want.Add(tc.fields[i], tc.fields[i+1])
			}
			if !sameFields(h.Fields(), want.Fields()) {
				t.Errorf("fields\n got %q\nwant %q", h.Fields(), want.Fields())
			}
			if ri.contentLength != tc.cl || ri.chunked != tc.chunk || ri.minor != tc.minor || ri.expect100 != tc.expect {
				t.Errorf("info %+v", ri)
			}
			if closes := ri.connClose || ri.minor == 0 && !ri.connKeepAlive; closes != tc.close {
				t.Errorf("close = %v, want %v", closes, tc.close)
			}
		})
	}
}

// smugglingCases are requests that must never reach a handler: the status
// each is answered with.
var smugglingCases = []struct {
	name   string
	raw    string
	status int
}{
	{"cl and te", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	{"te and cl", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400},
	{"duplicate cl equal", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400},
	{"duplicate cl different", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400},
	{"cl list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400},
	{"negative cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\nhello", 400},
	{"plus cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400},
	{"non-digit cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\nhello", 400},
	{"hex cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", 400},
	{"empty cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400},
	{"space inside cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400},
	{"overflowing cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400},
	{"obs-fold tab", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400},
	{"obs-fold first line", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400},
	{"bare lf", "GET / HTTP/1.1\nHost: a\n\n", 400},
	{"bare lf request line", "GET / HTTP/1.1\nHost: a\r\n\r\n", 400},
	{"bare lf in headers", "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 400},
	{"bare lf terminator", "GET / HTTP/1.1\r\nHost: a\r\n\n", 400},
	{"bare lf then smuggled", "GET / HTTP/1.1\r\nHost: a\r\n\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"bare cr in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400},
	{"bare cr request line", "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"nul in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400},
	{"nul in name", "GET / HTTP/1.1\r\nHost: a\r\nX\x00A: b\r\n\r\n", 400},
	{"ctl in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400},
	{"del in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n", 400},
	{"space before colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400},
	{"tab before colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A\t: b\r\n\r\n", 400},
	{"space before colon te", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc", 400},
	{"invalid name char", "GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", 400},
	{"space in name", "GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400},
	{"empty name", "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400},
	{"no colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n", 400},
	{"te gzip chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400},
	{"te chunked identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400},
	{"te chunked chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400},
	{"te identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nhello", 400},
	{"te empty", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400},
	{"te with params", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400},
	{"te chunkedx", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400},
	{"duplicate te", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	{"te on http/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	{"bad chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400},
	{"chunk size overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400},
	{"chunk size 0x prefix", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400},
	{"negative chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400},
	{"chunk size bare lf", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400},
	{"chunk data without crlf", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400},
	{"chunk size trailing space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 400},
	{"chunk ext bad char", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n", 400},
	{"chunk ext unterminated quote", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"x\r\nhello\r\n0\r\n\r\n", 400},
	{"chunk ext no name", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n", 400},
	{"second chunk bad", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nq\r\n0\r\n\r\n", 400},
	{"request line two spaces", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"request line three parts spaces", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"request line trailing space", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400},
	{"request line leading space", " GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"request line tab", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"no version", "GET /\r\nHost: a\r\n\r\n", 400},
	{"bad version", "GET / HTTP/1.7\r\nHost: a\r\n\r\n", 400},
	{"http/2 version", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400},
	{"lowercase version", "GET / http/1.1\r\nHost: a\r\n\r\n", 400},
	{"bad method", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"empty method", " / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"relative target", "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"asterisk not options", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"fragment", "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"del in target", "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"absolute form bad scheme", "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"absolute form userinfo", "GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"missing host", "GET / HTTP/1.1\r\n\r\n", 400},
	{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
	{"two equal hosts", "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400},
	{"two hosts http/1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400},
	{"host with slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
	{"host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400},
	{"host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
	{"connect without port", "CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"too many empty lines", "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"too many headers", "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-A: b\r\n", 20) + "\r\n", 431},
	{"header block too large", "GET / HTTP/1.1\r\nHost: a\r\nX-A: " + strings.Repeat("b", 2000) + "\r\n\r\n", 431},
	{"request line too long", "GET /" + strings.Repeat("a", 2000) + " HTTP/1.1\r\nHost: a\r\n\r\n", 414},
}

// smugglingLimits are the limits the smuggling table assumes.
const smugMaxBytes, smugMaxHeaders = 1024, 16

func TestParseRequestInvalid(t *testing.T) {
	for _, tc := range smugglingCases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseRequest(tc.raw, smugMaxBytes, smugMaxHeaders)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := statusOf(err); got != tc.status {
				t.Fatalf("status %d (%v), want %d", got, err, tc.status)
			}
			if !strings.HasPrefix(err.Error(), "http1: ") {
				t.Errorf("error %q lacks prefix", err)
			}
		})
	}
}

func TestReadHeadTruncated(t *testing.T) {
	for _, raw := range []string{"G", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: a\r\n", "GET / HTTP/1.1\r\nHost: a\r\n\r"} {
		br := bufio.NewReader(strings.NewReader(raw))
		var acc []byte
		if _, err := readHead(br, &acc, 1024, false); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%q: %v, want unexpected EOF", raw, err)
		}
	}
	br := bufio.NewReader(strings.NewReader(""))
	var acc []byte
	if _, err := readHead(br, &acc, 1024, false); err != io.EOF {
		t.Errorf("empty: %v, want EOF", err)
	}
}

// A head longer than the bufio buffer and split across reads takes the
// slow path and gives the same result.
func TestReadHeadSlowPath(t *testing.T) {
	raw := "GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + strings.Repeat("v", 6000) + "\r\nX-B: c\r\n\r\n"
	for _, r := range []io.Reader{strings.NewReader(raw), iotest.OneByteReader(strings.NewReader(raw)), iotest.HalfReader(strings.NewReader(raw))} {
		br := bufio.NewReaderSize(r, bufSize)
		var acc []byte
		s, err := readHead(br, &acc, 8<<10, false)
		if err != nil || s != raw {
			t.Fatalf("got %d bytes, %v", len(s), err)
		}
		var h header.Map
		var ri reqInfo
		if err := parseRequestHead(s, "https", 100, &h, &ri); err != nil {
			t.Fatal(err)
		}
		if h.Value("x-b") != "c" || len(h.Value("x-long")) != 6000 || h.Value(":scheme") != "https" {
			t.Fatalf("fields %q", h.Fields()[4:])
		}
	}
}

func TestChunkedDecode(t *testing.T) {
	tests := []struct {
		name     string
		raw      string
		body     string
		trailers []string
		err      error
	}{
		{name: "one chunk", raw: "5\r\nhello\r\n0\r\n\r\n", body: "hello"},
		{name: "several", raw: "5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n", body: "hello world"},
		{name: "upper hex and zeros", raw: "00A\r\n0123456789\r\n000\r\n\r\n", body: "0123456789"},
		{name: "empty", raw: "0\r\n\r\n", body: ""},
		{name: "extensions", raw: "5;a=b;c\r\nhello\r\n5 ; d = \"q\\\"s\" \t;e\r\nworld\r\n0;last\r\n\r\n", body: "helloworld"},
		{name: "trailers", raw: "5\r\nhello\r\n0\r\nX-Sum: abc\r\nx-other:  v \r\n\r\n", body: "hello", trailers: []string{"X-Sum", "abc", "x-other", "v"}},
		{name: "bad size", raw: "zz\r\nhello\r\n0\r\n\r\n", err: errChunkSize},
		{name: "overflow", raw: "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n", err: errChunkOverflow},
		{name: "bare lf size", raw: "5\nhello\r\n0\r\n\r\n", err: errChunkSize},
		{name: "missing crlf after data", raw: "5\r\nhelloX\r\n0\r\n\r\n", body: "hello", err: errChunkCRLF},
		{name: "trailing space", raw: "5 \r\nhello\r\n0\r\n\r\n", err: errChunkExt},
		{name: "bad ext", raw: "5;=x\r\nhello\r\n0\r\n\r\n", err: errChunkExt},
		{name: "bad ext value", raw: "5;a=\r\nhello\r\n0\r\n\r\n", err: errChunkExt},
		{name: "truncated data", raw: "5\r\nhel", body: "hel", err: ErrBodyTruncated},
		{name: "truncated before end", raw: "5\r\nhello\r\n", body: "hello", err: ErrBodyTruncated},
		{name: "truncated trailers", raw: "5\r\nhello\r\n0\r\nX-A: b\r\n", body: "hello", err: ErrBodyTruncated},
		{name: "trailer obs-fold", raw: "0\r\nX-A: b\r\n c\r\n\r\n", err: errObsFold},
		{name: "trailer bare lf", raw: "0\r\nX-A: b\n\r\n", err: errBareLF},
		{name: "trailer nul", raw: "0\r\nX-A: b\x00\r\n\r\n", err: errHeaderValue},
		{name: "trailers too large", raw: "0\r\nX-A: " + strings.Repeat("b", 300) + "\r\n\r\n", err: errTrailers},
		{name: "chunk line too long", raw: "5;a=" + strings.Repeat("b", 5000) + "\r\nhello\r\n0\r\n\r\n", err: errChunkLine},
	}
	for _, tc := range tests {
		for _, mode := range []string{"whole", "onebyte"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				var r io.Reader = strings.NewReader(tc.raw)
				if mode == "onebyte" {
					r = iotest.OneByteReader(r)
				}
				var tr header.Map
				var acc []byte
				br := bufio.NewReaderSize(r, bufSize)
				body := bodyReader{trailers: &tr, acc: &acc, maxBytes: 256, maxTrailers: 10}
				body.reset(br, bodyChunked, 0)
				got, err := io.ReadAll(&body)
				if string(got) != tc.body {
					t.Errorf("body %q, want %q", got, tc.body)
				}
				if tc.err == nil && err != nil || tc.err != nil && !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				if tc.err == nil {
					if !sameFields(tr.Fields(), mapOf(tc.trailers...).Fields()) {
						t.Errorf("trailers %q", tr.Fields())
					}
					// The prevalidation agrees with the decoder.
					if err := checkBufferedChunks(bufio.NewReader(strings.NewReader(tc.raw))); err != nil {
						t.Errorf("checkBufferedChunks: %v", err)
					}
				}
			})
		}
	}
}

// Body readers hand over the last bytes together with io.EOF when the end
// is already known.
func TestBodyLastDataWithEOF(t *testing.T) {
	tests := []struct {
		name string
		mode bodyMode
		n    int64
		raw  string
		want string
	}{
		{"content-length", bodyLength, 5, "helloGET /next", "hello"},
		{"chunked", bodyChunked, 0, "5\r\nhello\r\n0\r\n\r\nGET /next", "hello"},
		{"chunked several", bodyChunked, 0, "2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", "hello"},
		{"chunked trailers", bodyChunked, 0, "5\r\nhello\r\n0\r\nX-A: b\r\n\r\n", "hello"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tr header.Map
			var acc []byte
			br := bufio.NewReaderSize(strings.NewReader(tc.raw), bufSize)
			br.Peek(1) // everything is buffered, as after a head
			body := bodyReader{trailers: &tr, acc: &acc, maxBytes: 1024, maxTrailers: 10}
			body.reset(br, tc.mode, tc.n)
			p := make([]byte, 64)
			n, err := body.Read(p)
			if string(p[:n]) != tc.want || err != io.EOF {
				t.Fatalf("Read = %q, %v; want %q, EOF", p[:n], err, tc.want)
			}
			if rest, _ := io.ReadAll(br); strings.Contains(tc.raw, "GET") && string(rest) != "GET /next" {
				t.Errorf("left %q", rest)
			}
		})
	}
	// A chunk that is not complete yet returns what there is, without EOF.
	var tr header.Map
	var acc []byte
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("5\r\nhel"))
		pw.Write([]byte("lo\r\n0\r\n\r\n"))
		pw.Close()
	}()
	body := bodyReader{trailers: &tr, acc: &acc, maxBytes: 1024, maxTrailers: 10}
	body.reset(bufio.NewReader(pr), bodyChunked, 0)
	got, err := io.ReadAll(&body)
	if string(got) != "hello" || err != nil {
		t.Fatalf("%q %v", got, err)
	}
}

func TestParseChunkLine(t *testing.T) {
	ok := []string{"0\r\n", "a\r\n", "FFFF\r\n", "7fffffffffffffff\r\n", "0000000000000000000001\r\n", "1;x\r\n", "1 ;x\r\n", "1;x=y\r\n", "1;x=\"\"\r\n", "1; x = \"a b\"\r\n", "1;x;y=z\r\n"}
	bad := []string{"\r\n", "g\r\n", "1\n", "1", "8000000000000000\r\n", "1 \r\n", "1;\r\n", "1;x=\r\n", "1;x=\"\r\n", "1;x y\r\n", "1x\r\n", "1;x=\"a\x00\"\r\n", "1;x=\"\\\r\n"}
	for _, s := range ok {
		if _, err := parseChunkLine([]byte(s)); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range bad {
		if _, err := parseChunkLine([]byte(s)); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestContentLengthLenient(t *testing.T) {
	tests := []struct {
		v       string
		lenient bool
		n       int64
		val     string
		ok      bool
	}{
		{"42", false, 42, "42", true},
		{"42, 42", false, 0, "", false},
		{"42, 42", true, 42, "42", true},
		{"42,42 ,42", true, 42, "42", true},
		{"42, 43", true, 0, "", false},
		{"42,", true, 0, "", false},
		{"-1", true, 0, "", false},
	}
	for _, tc := range tests {
		n, val, err := contentLength(tc.v, tc.lenient)
		if (err == nil) != tc.ok || n != tc.n || val != tc.val {
			t.Errorf("contentLength(%q, %v) = %d %q %v", tc.v, tc.lenient, n, val, err)
		}
	}
}

func TestParseResponseHead(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		fields []string
		status int
		cl     int64
		chunk  bool
		err    bool
	}{
		{name: "ok", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\n", fields: []string{":status", "200", "Content-Length", "3", "X-A", "b"}, status: 200, cl: 3},
		{name: "no reason", raw: "HTTP/1.1 204\r\n\r\n", fields: []string{":status", "204"}, status: 204, cl: -1},
		{name: "empty reason", raw: "HTTP/1.0 404 \r\n\r\n", fields: []string{":status", "404"}, status: 404, cl: -1},
		{name: "odd reason", raw: "HTTP/1.1 599 Caf\xc3\xa9 (x)\r\n\r\n", fields: []string{":status", "599"}, status: 599, cl: -1},
		{name: "chunked removed", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", fields: []string{":status", "200"}, status: 200, cl: -1, chunk: true},
		{name: "duplicate equal cl tolerated", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", fields: []string{":status", "200", "Content-Length", "3"}, status: 200, cl: 3},
		{name: "cl list tolerated", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", fields: []string{":status", "200", "Content-Length", "3"}, status: 200, cl: 3},
		{name: "cl and te", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", err: true},
		{name: "different cl", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", err: true},
		{name: "te gzip", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", err: true},
		{name: "bare lf", raw: "HTTP/1.1 200 OK\nContent-Length: 0\n\n", err: true},
		{name: "obs-fold", raw: "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n", err: true},
		{name: "nul", raw: "HTTP/1.1 200 OK\r\nX-A: b\x00\r\n\r\n", err: true},
		{name: "bad version", raw: "HTTP/2 200 OK\r\n\r\n", err: true},
		{name: "short status", raw: "HTTP/1.1 20 OK\r\n\r\n", err: true},
		{name: "status 099", raw: "HTTP/1.1 099 OK\r\n\r\n", err: true},
		{name: "no space", raw: "HTTP/1.1 200OK\r\n\r\n", err: true},
		{name: "space before colon", raw: "HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n", err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h header.Map
			var ri respInfo
			err := parseResponseHead(tc.raw, 100, &h, &ri)
			if tc.err {
				if err == nil {
					t.Fatal("accepted")
				}
				if statusOf(err) != 502 {
					t.Errorf("status %d for %v", statusOf(err), err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !sameFields(h.Fields(), mapOf(tc.fields...).Fields()) || ri.status != tc.status || ri.contentLength != tc.cl || ri.chunked != tc.chunk {
				t.Errorf("got %q %+v", h.Fields(), ri)
			}
		})
	}
}

func TestWriteBigBatches(t *testing.T) {
	fc := &fakeConn{r: strings.NewReader("")}
	var cw connWriter
	cw.conn = fc
	bw := bufio.NewWriterSize(&cw, 64)
	bw.WriteString("head")
	big := bytes.Repeat([]byte("x"), 100)
	if err := writeBig(bw, &cw, big, crlf); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	if got := fc.w.String(); got != "head"+string(big)+"\r\n" {
		t.Fatalf("wrote %q", got)
	}
	// small writes are buffered
	fc.w.Reset()
	writeBig(bw, &cw, []byte("abc"), nil)
	if fc.w.Len() != 0 || bw.Buffered() != 3 {
		t.Fatalf("small write not buffered")
	}
}

func TestValidValue(t *testing.T) {
	for c := 0; c < 256; c++ {
		want := c == '\t' || c >= 0x20 && c != 0x7f
		for _, pos := range []int{0, 3, 7, 8, 12, 15, 16, 20} {
			b := []byte(strings.Repeat("abcdefgh", 3))
			b[pos] = byte(c)
			if got := validValue(string(b)); got != want {
				t.Fatalf("byte %#x at %d: %v", c, pos, got)
			}
		}
	}
}
