package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/header"
)

const (
	fuzzMaxBytes   = 4096
	fuzzMaxHeaders = 32
)

// checkFields asserts what every accepted field must satisfy.
func checkFields(t *testing.T, fields []header.Field) {
	t.Helper()
	for _, f := range fields {
		if !isToken(f.Name) {
			t.Fatalf("accepted name %q", f.Name)
		}
		if !validValue(f.Value) || header.TrimOWS(f.Value) != f.Value {
			t.Fatalf("accepted value %q", f.Value)
		}
		if header.EqualFold(f.Name, "transfer-encoding") {
			t.Fatalf("transfer-encoding left in the map")
		}
	}
}

// serialiseRequest writes a parsed request back in canonical form.
func serialiseRequest(h *header.Map, ri *reqInfo) string {
	var b strings.Builder
	b.WriteString(h.At(0).Value + " " + h.At(1).Value + " HTTP/1." + itoa(ri.minor) + "\r\n")
	b.WriteString("Host: " + h.At(2).Value + "\r\n")
	for _, f := range h.Fields()[4:] {
		b.WriteString(f.Name + ": " + f.Value + "\r\n")
	}
	if ri.chunked {
		b.WriteString("Transfer-Encoding: chunked\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

func FuzzParseRequest(f *testing.F) {
	for _, tc := range smugglingCases {
		f.Add([]byte(tc.raw))
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"))
	f.Add([]byte("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=\"y\"\r\nabc\r\n0\r\nT: 1\r\n\r\n"))
	f.Add([]byte("GET http://h:1/p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), bufSize)
		var acc []byte
		s, err := readHead(br, &acc, fuzzMaxBytes, false)
		if err != nil {
			return
		}
		if len(s) > fuzzMaxBytes {
			t.Fatalf("head of %d bytes accepted", len(s))
		}
		var h header.Map
		var ri reqInfo
		if err := parseRequestHead(s, "http", fuzzMaxHeaders, &h, &ri); err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) || pe.Status < 400 || !strings.HasPrefix(err.Error(), "http1: ") {
				t.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		// Only CRLF line ends, no stray CR.
		for i := 0; i < len(s); i++ {
			if s[i] == '\n' && (i == 0 || s[i-1] != '\r') || s[i] == '\r' && (i+1 == len(s) || s[i+1] != '\n') {
				t.Fatalf("accepted a bare CR or LF at %d in %q", i, s)
			}
		}
		if h.Len() < 4 || h.At(0).Name != ":method" || h.At(1).Name != ":path" || h.At(2).Name != ":authority" || h.At(3).Name != ":scheme" {
			t.Fatalf("pseudo-headers %q", h.Fields())
		}
		if !isToken(h.At(0).Value) || h.At(1).Value == "" {
			t.Fatalf("request line %q %q", h.At(0).Value, h.At(1).Value)
		}
		rest := h.Fields()[4:]
		checkFields(t, rest)
		if len(rest) > fuzzMaxHeaders {
			t.Fatalf("%d fields accepted", len(rest))
		}
		for _, f := range rest {
			if header.EqualFold(f.Name, "host") || f.Name[0] == ':' {
				t.Fatalf("field %q in the map", f.Name)
			}
		}
		if ri.chunked && ri.contentLength >= 0 {
			t.Fatal("both chunked and content-length")
		}
		if n := h.Count("content-length"); n > 1 || n == 1 != (ri.contentLength >= 0) {
			t.Fatalf("%d content-length fields, length %d", n, ri.contentLength)
		}
		if ri.contentLength >= 0 {
			if n, ok := parseDecimal(h.Value("content-length")); !ok || n != ri.contentLength {
				t.Fatalf("content-length %q vs %d", h.Value("content-length"), ri.contentLength)
			}
		}
		if ri.chunked && ri.minor == 0 {
			t.Fatal("chunked http/1.0 accepted")
		}
		// Re-serialised, it parses to the same request.
		wire := serialiseRequest(&h, &ri)
		br2 := bufio.NewReaderSize(strings.NewReader(wire), bufSize)
		s2, err := readHead(br2, &acc, 1<<20, false)
		if err != nil {
			t.Fatalf("re-read %q: %v", wire, err)
		}
		var h2 header.Map
		var ri2 reqInfo
		if err := parseRequestHead(s2, "http", 1<<10, &h2, &ri2); err != nil {
			t.Fatalf("re-parse %q: %v", wire, err)
		}
		if !sameFields(h.Fields(), h2.Fields()) || ri != ri2 {
			t.Fatalf("round trip differs:\n%q %+v\n%q %+v", h.Fields(), ri, h2.Fields(), ri2)
		}
		// A broken chunked body at hand is refused; whatever the
		// prevalidation refuses, the decoder refuses too.
		if ri.chunked {
			if err := checkBufferedChunks(br); err != nil {
				if _, _, derr := decodeChunked(br, 0); derr == nil {
					t.Fatalf("prevalidation refused %q, decoder accepted", data)
				}
			}
		}
	})
}

// decodeChunked reads a chunked body from br, split pieces a time.
func decodeChunked(br *bufio.Reader, split int) ([]byte, []header.Field, error) {
	var tr header.Map
	var acc []byte
	r := bodyReader{trailers: &tr, acc: &acc, maxBytes: 1024, maxTrailers: 20}
	r.reset(br, bodyChunked, 0)
	var out []byte
	buf := make([]byte, 4096)
	if split > 0 {
		buf = buf[:split]
	}
	for i := 0; i < 1<<20; i++ {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, tr.Fields(), nil
		}
		if err != nil {
			return out, nil, err
		}
	}
	return nil, nil, errors.New("no progress")
}

// pieceReader returns at most n bytes per Read.
type pieceReader struct {
	r io.Reader
	n int
}

func (p *pieceReader) Read(b []byte) (int, error) {
	if len(b) > p.n {
		b = b[:p.n]
	}
	return p.r.Read(b)
}

func encodeChunked(body []byte, trailers []header.Field) []byte {
	var b []byte
	if len(body) > 0 {
		b = appendChunkHeader(b, len(body))
		b = append(b, body...)
		b = append(b, "\r\n"...)
	}
	var t header.Map
	for _, f := range trailers {
		t.Add(f.Name, f.Value)
	}
	b, _ = appendTrailers(b, &t)
	return b
}

func FuzzChunked(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), 1)
	f.Add([]byte("5;a=b\r\nhello\r\n6 ; c=\"d\\\"\"\r\n world\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n"), 3)
	f.Add([]byte("zz\r\nhello\r\n0\r\n\r\n"), 2)
	f.Add([]byte("ffffffffffffffffff\r\n"), 7)
	f.Add([]byte("5\r\nhelloXX0\r\n\r\n"), 0)
	f.Add([]byte("0\r\nX: a\r\n b\r\n\r\n"), 4)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		split = 1 + (split&0xff)%13
		b1, t1, e1 := decodeChunked(bufio.NewReaderSize(bytes.NewReader(data), bufSize), 0)
		b2, t2, e2 := decodeChunked(bufio.NewReaderSize(&pieceReader{bytes.NewReader(data), split}, bufSize), split)
		// Read sizes do not change the outcome.
		if (e1 == nil) != (e2 == nil) || !bytes.Equal(b1, b2) || !sameFields(t1, t2) {
			t.Fatalf("whole: %q %q %v\npieces of %d: %q %q %v", b1, t1, e1, split, b2, t2, e2)
		}
		full := bufio.NewReaderSize(bytes.NewReader(data), len(data)+16)
		full.Peek(len(data))
		cerr := checkBufferedChunks(full)
		if e1 != nil {
			if !strings.HasPrefix(e1.Error(), "http1: ") {
				t.Fatalf("error %q", e1)
			}
			return
		}
		if cerr != nil {
			t.Fatalf("decoder accepted, prevalidation refused: %v", cerr)
		}
		checkFields(t, t1)
		// Re-encoded, it decodes to the same body and trailers.
		enc := encodeChunked(b1, t1)
		b3, t3, e3 := decodeChunked(bufio.NewReaderSize(bytes.NewReader(enc), bufSize), 0)
		if e3 != nil || !bytes.Equal(b1, b3) || !sameFields(t1, t3) {
			t.Fatalf("re-encoded %q: %q %q %v", enc, b3, t3, e3)
		}
	})
}

func FuzzParseResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), false)
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.0 200 OK\r\n\r\nclose delimited"), false)
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"), true)
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nraw"), false)
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), false)
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		h, body, trailers, ok := readFuzzResponse(t, data, method)
		if !ok {
			return
		}
		// Re-serialised canonically, it parses to the same response.
		var b strings.Builder
		b.WriteString("HTTP/1.1 " + h.At(0).Value + " X\r\n")
		for _, f := range h.Fields()[1:] {
			b.WriteString(f.Name + ": " + f.Value + "\r\n")
		}
		st, _ := parseStatus(h.At(0).Value)
		noBody := head || st == 204 || st == 304 || st == 101
		switch {
		case noBody || h.Has("content-length"):
			b.WriteString("\r\n")
			b.Write(body)
		default:
			b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
			b.Write(encodeChunked(body, trailers))
		}
		h2, body2, trailers2, ok := readFuzzResponse(t, []byte(b.String()), method)
		if !ok || !sameFields(h.Fields(), h2.Fields()) || !bytes.Equal(body, body2) || !sameFields(trailers, trailers2) {
			t.Fatalf("round trip of %q:\n%q %q %q\n%q %q %q", b.String(), h.Fields(), body, trailers, h2.Fields(), body2, trailers2)
		}
	})
}

func readFuzzResponse(t *testing.T, data []byte, method string) (*header.Map, []byte, []header.Field, bool) {
	fc := &fakeConn{r: bytes.NewReader(data)}
	cc := (&ClientCodec{MaxHeaderBytes: fuzzMaxBytes, MaxHeaders: fuzzMaxHeaders}).NewClientConn(fc)
	if err := cc.WriteRequestHeaders(mapOf(":method", method, ":path", "/", ":authority", "a"), true); err != nil {
		t.Fatal(err)
	}
	var h header.Map
	final := false
	for i := 0; i < 8 && !final; i++ {
		h.Reset()
		if err := cc.ReadResponseHeaders(&h); err != nil {
			if !strings.HasPrefix(err.Error(), "http1: ") {
				t.Fatalf("error %q", err)
			}
			return nil, nil, nil, false
		}
		if h.Len() == 0 || h.At(0).Name != ":status" {
			t.Fatalf("fields %q", h.Fields())
		}
		st, ok := parseStatus(h.At(0).Value)
		if !ok {
			t.Fatalf("status %q", h.At(0).Value)
		}
		checkFields(t, h.Fields()[1:])
		final = st >= 200 || st == 101
	}
	if !final {
		return nil, nil, nil, false
	}
	if n := h.Count("content-length"); n > 1 {
		t.Fatalf("%d content-length fields", n)
	}
	cl := int64(-1)
	if v, ok := h.Get("content-length"); ok {
		n, ok := parseDecimal(v)
		if !ok {
			t.Fatalf("content-length %q", v)
		}
		cl = n
	}
	body, err := io.ReadAll(cc.ResponseBody())
	if err != nil {
		if cc.Reusable() {
			t.Fatal("reusable after a body error")
		}
		return nil, nil, nil, false
	}
	st, _ := parseStatus(h.At(0).Value)
	noBody := method == "HEAD" || st == 204 || st == 304 || st == 101
	if noBody && len(body) != 0 {
		t.Fatalf("body for %s %d", method, st)
	}
	if !noBody && cl >= 0 && int64(len(body)) != cl {
		t.Fatalf("body of %d bytes for content-length %d", len(body), cl)
	}
	return &h, body, fieldsOf(cc.ResponseTrailers()), true
}
