package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Every smuggling shape, over a real connection: the handler is never
// called, the answer is the error status with Connection: close, and the
// connection is closed.
func TestSmugglingOverTCP(t *testing.T) {
	ts := startServer(t, handlerFunc(echo), &stream.ServerOptions{MaxHeaderBytes: smugMaxBytes, MaxHeaders: smugMaxHeaders, RequestHeadersTimeout: 2 * time.Second})
	for _, tc := range smugglingCases {
		t.Run(tc.name, func(t *testing.T) {
			before := ts.calls.Load()
			out, closed := rawExchange(t, ts.addr, tc.raw, 3*time.Second)
			want := "HTTP/1.1 " + itoa(tc.status) + " "
			if !strings.HasPrefix(out, want) {
				t.Errorf("got %q, want %q", firstLine(out), want)
			}
			if !strings.Contains(out, "\r\nConnection: close\r\n") {
				t.Errorf("no Connection: close in %q", out)
			}
			if strings.Count(out, "HTTP/1.1 ") != 1 {
				t.Errorf("more than one response: %q", out)
			}
			if !closed {
				t.Errorf("connection left open")
			}
			if ts.calls.Load() != before {
				t.Errorf("handler was called")
			}
		})
	}
}

func firstLine(s string) string {
	if i := strings.Index(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

func TestPipelining(t *testing.T) {
	ts := startServer(t, handlerFunc(echo), nil)
	c := dial(t, ts.addr)
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"+
		"POST /2 HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc"+
		"POST /3 HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []struct{ path, auth, body string }{{"/1", "a", ""}, {"/2", "b", "abc"}, {"/3", "c", "xy"}} {
		resp, body := readResp(t, br, "GET")
		if resp.Header.Get("X-Path") != want.path || resp.Header.Get("X-Authority") != want.auth || body != want.body {
			t.Fatalf("got %s %s %q, want %+v", resp.Header.Get("X-Path"), resp.Header.Get("X-Authority"), body, want)
		}
	}
	if ts.calls.Load() != 3 {
		t.Fatalf("calls %d", ts.calls.Load())
	}
}

func TestChunkedRequestAndResponseWithTrailers(t *testing.T) {
	var gotBody string
	var gotTrailers []header.Field
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		if !s.HasBody() || s.ContentLength() != -1 || s.RequestHeaders().Has("transfer-encoding") {
			t.Errorf("framing seen: has %v cl %d", s.HasBody(), s.ContentLength())
		}
		b, err := io.ReadAll(s.Body())
		if err != nil {
			t.Errorf("body: %v", err)
		}
		gotBody, gotTrailers = string(b), fieldsOf(s.RequestTrailers())
		s.WriteHeaders(mapOf(":status", "200", "Trailer", "X-Checksum"), false)
		s.WriteBody([]byte("part one,"), false)
		s.WriteBody(nil, false) // must not end the body
		s.WriteBody([]byte(" part two"), false)
		s.WriteTrailers(mapOf("X-Checksum", "42", ":bad", "x", "Content-Length", "9"))
	}), nil)
	c := dial(t, ts.addr)
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: t1\r\n\r\n")
	br := bufio.NewReader(c)
	resp, body := readResp(t, br, "POST")
	if gotBody != "wikipedia" || !sameFields(gotTrailers, mapOf("X-Trailer", "t1").Fields()) {
		t.Errorf("server got %q %q", gotBody, gotTrailers)
	}
	if body != "part one, part two" || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("client got %q %v", body, resp.TransferEncoding)
	}
	if resp.Trailer.Get("X-Checksum") != "42" || len(resp.Trailer) != 1 {
		t.Errorf("trailers %v", resp.Trailer)
	}
}

func TestLargeBodies(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 100<<10/16)
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		b, _ := io.ReadAll(s.Body())
		chunked := s.RequestHeaders().Value(":path") == "/chunked"
		h := mapOf(":status", "200")
		if !chunked {
			h.Add("Content-Length", itoa(len(b)))
		}
		s.WriteHeaders(h, false)
		for len(b) > 0 {
			n := min(len(b), 32<<10)
			s.WriteBody(b[:n], n == len(b))
			b = b[n:]
		}
	}), nil)
	c := dial(t, ts.addr)
	br := bufio.NewReader(c)
	for _, path := range []string{"/cl", "/chunked"} {
		io.WriteString(c, "PUT "+path+" HTTP/1.1\r\nHost: a\r\nContent-Length: "+itoa(len(big))+"\r\n\r\n")
		c.Write(big)
		_, body := readResp(t, br, "PUT")
		if body != string(big) {
			t.Fatalf("%s: body of %d bytes differs", path, len(body))
		}
	}
}

func TestExpectContinue(t *testing.T) {
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		if s.RequestHeaders().Value(":path") == "/deny" {
			s.WriteHeaders(mapOf(":status", "403", "Content-Length", "0"), true)
			return
		}
		if !s.RequestHeaders().Has("expect") {
			t.Errorf("Expect header removed")
		}
		echo(s)
	}), nil)

	t.Run("read", func(t *testing.T) {
		c := dial(t, ts.addr)
		io.WriteString(c, "PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
			t.Fatalf("got %q %v", line, err)
		}
		if l, _ := br.ReadString('\n'); l != "\r\n" {
			t.Fatalf("100 head not empty: %q", l)
		}
		io.WriteString(c, "hello")
		resp, body := readResp(t, br, "PUT")
		if resp.StatusCode != 200 || body != "hello" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
	t.Run("not read", func(t *testing.T) {
		c := dial(t, ts.addr)
		io.WriteString(c, "PUT /deny HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
		br := bufio.NewReader(c)
		resp, _ := readResp(t, br, "PUT")
		if resp.StatusCode != 403 || !resp.Close {
			t.Fatalf("status %d close %v", resp.StatusCode, resp.Close)
		}
		if !readClosed(c, 2*time.Second) {
			t.Fatal("connection not closed")
		}
	})
}

func TestHead(t *testing.T) {
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		s.WriteHeaders(mapOf(":status", "200", "Content-Length", "5"), false)
		if err := s.WriteBody([]byte("hello"), true); err != nil {
			t.Errorf("WriteBody: %v", err)
		}
	}), nil)
	c := dial(t, ts.addr)
	io.WriteString(c, "HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	resp, body := readResp(t, br, "HEAD")
	if resp.ContentLength != 5 || body != "" {
		t.Fatalf("HEAD: cl %d body %q", resp.ContentLength, body)
	}
	_, body = readResp(t, br, "GET")
	if body != "hello" {
		t.Fatalf("GET after HEAD: %q", body)
	}
}

func TestNoBodyStatuses(t *testing.T) {
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		st := strings.TrimPrefix(s.RequestHeaders().Value(":path"), "/")
		s.WriteHeaders(mapOf(":status", st, "Content-Length", "3"), false)
		s.WriteBody([]byte("abc"), true)
	}), nil)
	c := dial(t, ts.addr)
	io.WriteString(c, "GET /204 HTTP/1.1\r\nHost: a\r\n\r\nGET /304 HTTP/1.1\r\nHost: a\r\n\r\nGET /200 HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []struct {
		code int
		body string
	}{{204, ""}, {304, ""}, {200, "abc"}} {
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != want.code || body != want.body {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		if want.code == 204 && resp.Header.Get("Content-Length") != "" {
			t.Errorf("204 with Content-Length")
		}
	}
}

func TestInformational(t *testing.T) {
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		if err := s.WriteInformational(mapOf(":status", "103", "Link", "</s.css>; rel=preload")); err != nil {
			t.Errorf("103: %v", err)
		}
		if err := s.WriteInformational(mapOf(":status", "101")); err == nil {
			t.Errorf("101 accepted as informational")
		}
		s.WriteHeaders(mapOf(":status", "200", "Content-Length", "2"), false)
		s.WriteBody([]byte("ok"), true)
	}), nil)
	for _, v := range []string{"1.1", "1.0"} {
		out, _ := rawExchange(t, ts.addr, "GET / HTTP/"+v+"\r\nHost: a\r\n\r\n", 2*time.Second)
		if v == "1.1" && !strings.HasPrefix(out, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n") {
			t.Errorf("1.1: %q", out)
		}
		if v == "1.0" && !strings.HasPrefix(out, "HTTP/1.1 200 OK\r\n") {
			t.Errorf("1.0 client got a 1xx: %q", out)
		}
	}
}

func TestConnectionClose(t *testing.T) {
	ts := startServer(t, handlerFunc(echo), nil)
	t.Run("request", func(t *testing.T) {
		c := dial(t, ts.addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
		resp, _ := readResp(t, bufio.NewReader(c), "GET")
		if !resp.Close {
			t.Errorf("response does not say close")
		}
		if !readClosed(c, 2*time.Second) {
			t.Errorf("not closed")
		}
	})
	t.Run("handler", func(t *testing.T) {
		ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
			s.WriteHeaders(mapOf(":status", "200", "Connection", "close", "Content-Length", "0"), true)
		}), nil)
		out, closed := rawExchange(t, ts.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 2*time.Second)
		if out != "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" || !closed {
			t.Errorf("closed %v %q", closed, out)
		}
	})
}

func TestHTTP10(t *testing.T) {
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		if s.Protocol() != "HTTP/1.0" {
			t.Errorf("protocol %q", s.Protocol())
		}
		h := mapOf(":status", "200")
		if s.RequestHeaders().Value(":path") == "/cl" {
			h.Add("Content-Length", "5")
		}
		s.WriteHeaders(h, false)
		s.WriteBody([]byte("hel"), false)
		s.WriteBody([]byte("lo"), true)
	}), nil)
	t.Run("close delimited", func(t *testing.T) {
		out, closed := rawExchange(t, ts.addr, "GET / HTTP/1.0\r\n\r\n", 2*time.Second)
		if !closed || out != "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello" {
			t.Fatalf("closed %v %q", closed, out)
		}
	})
	t.Run("keep-alive", func(t *testing.T) {
		c := dial(t, ts.addr)
		br := bufio.NewReader(c)
		for i := 0; i < 2; i++ {
			io.WriteString(c, "GET /cl HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
			resp, body := readResp(t, br, "GET")
			if body != "hello" || resp.Header.Get("Connection") != "keep-alive" {
				t.Fatalf("%q %q", body, resp.Header.Get("Connection"))
			}
		}
	})
	t.Run("keep-alive without length", func(t *testing.T) {
		out, closed := rawExchange(t, ts.addr, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 2*time.Second)
		if !closed || !strings.HasSuffix(out, "\r\n\r\nhello") || !strings.Contains(out, "Connection: close") {
			t.Fatalf("closed %v %q", closed, out)
		}
	})
}

func TestHeaderLimits(t *testing.T) {
	ts := startServer(t, handlerFunc(echo), &stream.ServerOptions{MaxHeaders: 5, MaxHeaderBytes: 512})
	tests := []struct {
		name string
		raw  string
		want string
	}{
		{"at count limit", "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", "HTTP/1.1 200 "},
		{"over count limit", "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n", "HTTP/1.1 431 "},
		{"at byte limit", "GET / HTTP/1.1\r\nHost: a\r\nA: " + strings.Repeat("x", 512-32) + "\r\n\r\n", "HTTP/1.1 200 "},
		{"over byte limit", "GET / HTTP/1.1\r\nHost: a\r\nA: " + strings.Repeat("x", 512-31) + "\r\n\r\n", "HTTP/1.1 431 "},
		{"huge header", "GET / HTTP/1.1\r\nHost: a\r\nA: " + strings.Repeat("x", 100<<10) + "\r\n\r\n", "HTTP/1.1 431 "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if strings.HasPrefix(tc.name, "at byte") && len(tc.raw) != 512 {
				t.Fatalf("test head is %d bytes", len(tc.raw))
			}
			c := dial(t, ts.addr)
			io.WriteString(c, tc.raw)
			br := bufio.NewReader(c)
			line, _ := br.ReadString('\n')
			if !strings.HasPrefix(line, tc.want) {
				t.Fatalf("got %q", line)
			}
		})
	}
	// Defaults apply when options are zero.
	ts2 := startServer(t, handlerFunc(echo), &stream.ServerOptions{})
	out, _ := rawExchange(t, ts2.addr, "GET / HTTP/1.1\r\nHost: a\r\n"+strings.Repeat("X: y\r\n", 100)+"\r\n", 2*time.Second)
	if !strings.HasPrefix(out, "HTTP/1.1 431 ") {
		t.Fatalf("101 headers with defaults: %q", firstLine(out))
	}
	out, _ = rawExchange(t, ts2.addr, "GET / HTTP/1.1\r\nHost: a\r\nX: "+strings.Repeat("y", 61<<10)+"\r\n\r\n", 2*time.Second)
	if !strings.HasPrefix(out, "HTTP/1.1 431 ") {
		t.Fatalf("61 KiB header with defaults: %q", firstLine(out))
	}
}

// A client trickling a header byte every 100ms is cut off by the
// request-headers timeout.
func TestSlowloris(t *testing.T) {
	ts := startServer(t, handlerFunc(echo), &stream.ServerOptions{RequestHeadersTimeout: 300 * time.Millisecond, IdleTimeout: time.Minute})
	for _, first := range []bool{true, false} {
		c := dial(t, ts.addr)
		br := bufio.NewReader(c)
		if !first {
			// A keep-alive request first: the timeout counts from the next
			// request's first byte.
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
			readResp(t, br, "GET")
			time.Sleep(400 * time.Millisecond) // idle time does not count
		}
		start := time.Now()
		io.WriteString(c, "GET / HTTP/1.1\r\n")
		cut := false
		for i := 0; i < 40; i++ {
			if _, err := c.Write([]byte{"X-Slow: abcdefghijklmnopqrstuvwxyz\r\n"[i%35]}); err != nil {
				cut = true
				break
			}
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := br.ReadByte(); err == nil || !isTimeout(err) {
				// The server answered (408) or closed.
				br.UnreadByte()
				cut = true
				break
			}
		}
		if cut {
			line, _ := br.ReadString('\n')
			if line != "" && line != "HTTP/1.1 408 Request Timeout\r\n" {
				t.Errorf("got %q", line)
			}
			if !readClosed(c, time.Second) {
				t.Fatalf("first=%v: not closed after the 408", first)
			}
		}
		if !cut {
			t.Fatalf("first=%v: connection still open after %v", first, time.Since(start))
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("cut off after %v", d)
		}
	}
	if ts.calls.Load() != 1 {
		t.Fatalf("handler calls %d", ts.calls.Load())
	}
}

func TestIdleTimeout(t *testing.T) {
	ts := startServer(t, handlerFunc(echo), &stream.ServerOptions{IdleTimeout: 200 * time.Millisecond})
	c := dial(t, ts.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	readResp(t, br, "GET")
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("got %v, want EOF", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Fatalf("closed after %v", d)
	}
	// A connection that never sends a byte is closed too.
	c2 := dial(t, ts.addr)
	if !readClosed(c2, 2*time.Second) {
		t.Fatal("silent connection not closed")
	}
}

func TestRequestTimeoutBody(t *testing.T) {
	var bodyErr atomic.Value
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		_, err := io.ReadAll(s.Body())
		if err != nil {
			bodyErr.Store(err)
			s.WriteHeaders(mapOf(":status", "408", "Content-Length", "0"), true)
			return
		}
		echo(s)
	}), &stream.ServerOptions{RequestTimeout: 300 * time.Millisecond})
	c := dial(t, ts.addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
	resp, _ := readResp(t, bufio.NewReader(c), "POST")
	if resp.StatusCode != 408 || !resp.Close {
		t.Fatalf("status %d close %v", resp.StatusCode, resp.Close)
	}
	if err, _ := bodyErr.Load().(error); !isTimeout(err) || !strings.HasPrefix(err.Error(), "http1: ") {
		t.Fatalf("body error %v", err)
	}
}

func TestDrain(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		ts := startServer(t, handlerFunc(echo), nil)
		c := dial(t, ts.addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		br := bufio.NewReader(c)
		readResp(t, br, "GET")
		c2 := dial(t, ts.addr) // never sends a byte
		time.Sleep(50 * time.Millisecond)
		ts.cancel()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("idle connection: %v", err)
		}
		if !readClosed(c2, 2*time.Second) {
			t.Fatal("fresh connection not closed")
		}
	})
	t.Run("active", func(t *testing.T) {
		started, release := make(chan struct{}), make(chan struct{})
		ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
			close(started)
			<-release
			echo(s)
		}), nil)
		c := dial(t, ts.addr)
		io.WriteString(c, "GET /busy HTTP/1.1\r\nHost: a\r\n\r\n")
		<-started
		ts.cancel()
		time.Sleep(50 * time.Millisecond)
		close(release)
		br := bufio.NewReader(c)
		resp, _ := readResp(t, br, "GET")
		if resp.Header.Get("X-Path") != "/busy" || !resp.Close {
			t.Fatalf("path %q close %v", resp.Header.Get("X-Path"), resp.Close)
		}
		if !readClosed(c, 2*time.Second) {
			t.Fatal("not closed after the response")
		}
	})
}

func TestMaxRequestsPerConnection(t *testing.T) {
	ts := startServer(t, handlerFunc(echo), &stream.ServerOptions{MaxRequestsPerConnection: 2})
	c := dial(t, ts.addr)
	br := bufio.NewReader(c)
	for i := 0; i < 2; i++ {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		resp, _ := readResp(t, br, "GET")
		if resp.Close != (i == 1) {
			t.Fatalf("request %d: close %v", i, resp.Close)
		}
	}
	if !readClosed(c, 2*time.Second) {
		t.Fatal("not closed")
	}
}

func TestHijackAfter101(t *testing.T) {
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		h := s.RequestHeaders()
		if h.Value("upgrade") != "echo" {
			s.WriteHeaders(mapOf(":status", "400", "Content-Length", "0"), true)
			return
		}
		if _, err := s.Hijack(); err == nil {
			t.Errorf("hijack before 101 allowed")
		}
		if err := s.WriteHeaders(mapOf(":status", "101", "Connection", "Upgrade", "Upgrade", "echo"), false); err != nil {
			t.Errorf("101: %v", err)
		}
		rw, err := s.Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer rw.Close()
		io.Copy(rw, rw)
	}), nil)
	c := dial(t, ts.addr)
	// "ping" arrives with the head, so it sits in the codec's buffer.
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nping")
	br := bufio.NewReader(c)
	head := ""
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		head += line
		if line == "\r\n" {
			break
		}
	}
	if head != "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n" {
		t.Fatalf("head %q", head)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("%q %v", buf, err)
	}
	io.WriteString(c, "pong")
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("%q %v", buf, err)
	}
	c.(*net.TCPConn).CloseWrite()
	if !readClosed(c, 2*time.Second) {
		t.Fatal("tunnel not closed")
	}
}

// A chunked body that breaks after the handler started: Body() fails and
// the connection closes after the response.
func TestChunkErrorMidBody(t *testing.T) {
	var bodyErr atomic.Value
	got := make(chan string, 1)
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		b, err := io.ReadAll(s.Body())
		got <- string(b)
		if err != nil {
			bodyErr.Store(err)
			s.WriteHeaders(mapOf(":status", "400", "Content-Length", "0"), true)
			return
		}
		echo(s)
	}), nil)
	c := dial(t, ts.addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	time.Sleep(100 * time.Millisecond)
	io.WriteString(c, "zz\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, _ := readResp(t, bufio.NewReader(c), "POST")
	if resp.StatusCode != 400 || !resp.Close {
		t.Fatalf("status %d close %v", resp.StatusCode, resp.Close)
	}
	if b := <-got; b != "hello" {
		t.Errorf("body before the error %q", b)
	}
	var pe *ProtocolError
	if err, _ := bodyErr.Load().(error); !errors.As(err, &pe) {
		t.Errorf("body error %v", err)
	}
	if !readClosed(c, 2*time.Second) {
		t.Fatal("not closed")
	}
	if ts.calls.Load() != 1 {
		t.Fatalf("calls %d", ts.calls.Load())
	}
}

// Handlers that break the response framing get the connection closed.
func TestResponseFramingBugs(t *testing.T) {
	tests := []struct {
		name string
		h    func(s stream.ServerStream)
	}{
		{"body longer than content-length", func(s stream.ServerStream) {
			s.WriteHeaders(mapOf(":status", "200", "Content-Length", "2"), false)
			if err := s.WriteBody([]byte("abc"), true); !errors.Is(err, ErrBodyLength) {
				t.Errorf("WriteBody: %v", err)
			}
		}},
		{"body shorter than content-length", func(s stream.ServerStream) {
			s.WriteHeaders(mapOf(":status", "200", "Content-Length", "5"), false)
			if err := s.WriteBody([]byte("abc"), true); !errors.Is(err, ErrBodyLength) {
				t.Errorf("WriteBody: %v", err)
			}
		}},
		{"end without promised body", func(s stream.ServerStream) {
			if err := s.WriteHeaders(mapOf(":status", "200", "Content-Length", "5"), true); !errors.Is(err, ErrBodyLength) {
				t.Errorf("WriteHeaders: %v", err)
			}
		}},
		{"no response", func(s stream.ServerStream) {}},
		{"unfinished response", func(s stream.ServerStream) {
			s.WriteHeaders(mapOf(":status", "200"), false)
			s.WriteBody([]byte("abc"), false)
		}},
		{"reset", func(s stream.ServerStream) {
			s.WriteHeaders(mapOf(":status", "200"), false)
			s.Reset()
		}},
		{"header injection", func(s stream.ServerStream) {
			if err := s.WriteHeaders(mapOf(":status", "200", "X-A", "a\r\nSet-Cookie: x"), true); !errors.Is(err, ErrInvalidField) {
				t.Errorf("WriteHeaders: %v", err)
			}
		}},
		{"bad status", func(s stream.ServerStream) {
			if err := s.WriteHeaders(mapOf(":status", "2000"), true); !errors.Is(err, ErrInvalidStatus) {
				t.Errorf("WriteHeaders: %v", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, handlerFunc(tc.h), nil)
			c := dial(t, ts.addr)
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n")
			if !readClosed(c, 2*time.Second) {
				t.Fatal("connection not closed")
			}
			if n := ts.calls.Load(); n != 1 {
				t.Fatalf("%d handler calls", n)
			}
		})
	}
}

// An unread request body is skipped (small) so the connection lives on.
func TestUnreadBodyDiscarded(t *testing.T) {
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		s.WriteHeaders(mapOf(":status", "200", "Content-Length", "2"), false)
		s.WriteBody([]byte("ok"), true)
	}), nil)
	c := dial(t, ts.addr)
	br := bufio.NewReader(c)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	for i := 0; i < 2; i++ {
		resp, body := readResp(t, br, "GET")
		if body != "ok" || resp.Close {
			t.Fatalf("request %d: %q close %v", i, body, resp.Close)
		}
	}
}

// The head is buffered and leaves with the body in one write.
func TestHeadAndBodyOneWrite(t *testing.T) {
	fc := &fakeConn{r: strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")}
	err := NewServerCodec().ServeConn(t.Context(), fc, &stream.ConnInfo{}, handlerFunc(func(s stream.ServerStream) {
		h := mapOf(":status", "200", "Content-Type", "text/plain")
		if s.RequestHeaders().Value(":path") == "/" {
			h.Add("Content-Length", "5")
		}
		before := fc.writes
		s.WriteHeaders(h, false)
		if fc.writes != before {
			t.Errorf("WriteHeaders flushed")
		}
		s.WriteBody([]byte("hello"), true)
		if fc.writes != before+1 {
			t.Errorf("%d writes, want 1", fc.writes-before)
		}
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello" +
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
	if got := fc.w.String(); got != want {
		t.Fatalf("wrote\n%q\nwant\n%q", got, want)
	}
}

func TestRequestPseudoHeaders(t *testing.T) {
	got := make(chan []header.Field, 1)
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		got <- fieldsOf(s.RequestHeaders())
		echo(s)
	}), &stream.ServerOptions{Scheme: "https"})
	c := dial(t, ts.addr)
	io.WriteString(c, "DELETE /x?y HTTP/1.1\r\nX-First: 1\r\nHOST: Example.COM\r\nx-last: 2\r\n\r\n")
	readResp(t, bufio.NewReader(c), "DELETE")
	want := mapOf(":method", "DELETE", ":path", "/x?y", ":authority", "Example.COM", ":scheme", "https", "X-First", "1", "x-last", "2")
	if f := <-got; !sameFields(f, want.Fields()) {
		t.Fatalf("got %q", f)
	}
}

func TestMaxConnectionDuration(t *testing.T) {
	ts := startServer(t, handlerFunc(echo), &stream.ServerOptions{MaxConnectionDuration: 200 * time.Millisecond})
	c := dial(t, ts.addr)
	br := bufio.NewReader(c)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, _ := readResp(t, br, "GET"); resp.Close {
		t.Fatal("first response closes")
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("got %v, want EOF", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

// Trailers cannot ride a length-delimited or HTTP/1.0 response: they are
// dropped and the message still ends properly.
func TestTrailersDroppedWithoutChunking(t *testing.T) {
	fc := &fakeConn{r: strings.NewReader("GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\n\r\n")}
	err := NewServerCodec().ServeConn(t.Context(), fc, &stream.ConnInfo{}, handlerFunc(func(s stream.ServerStream) {
		h := mapOf(":status", "200")
		if s.Protocol() == "HTTP/1.1" {
			h.Add("Content-Length", "2")
		}
		s.WriteHeaders(h, false)
		s.WriteBody([]byte("ok"), false)
		if err := s.WriteTrailers(mapOf("X-T", "1")); err != nil {
			t.Errorf("WriteTrailers: %v", err)
		}
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok"
	if got := fc.w.String(); got != want {
		t.Fatalf("wrote %q", got)
	}
}
