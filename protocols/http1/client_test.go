package http1

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

func TestClientWriteRequest(t *testing.T) {
	tests := []struct {
		name  string
		h     *header.Map
		end   bool
		body  []string // body writes; the last one ends the stream
		trail *header.Map
		want  string
		err   error
	}{
		{name: "get", h: mapOf(":method", "GET", ":path", "/a?b", ":authority", "up:8080", ":scheme", "http", "User-Agent", "x", "accept", "*/*"), end: true,
			want: "GET /a?b HTTP/1.1\r\nHost: up:8080\r\nUser-Agent: x\r\naccept: */*\r\n\r\n"},
		{name: "post without body", h: mapOf(":method", "POST", ":path", "/", ":authority", "a"), end: true,
			want: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"},
		{name: "content-length", h: mapOf(":method", "PUT", ":path", "/", ":authority", "a", "Content-Length", "5"), body: []string{"hel", "lo"},
			want: "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"},
		{name: "chunked", h: mapOf(":method", "POST", ":path", "/", ":authority", "a", "Transfer-Encoding", "gzip"), body: []string{"hello", "", "world"},
			want: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"},
		{name: "chunked with trailers", h: mapOf(":method", "POST", ":path", "/", ":authority", "a"), body: []string{"abc"}, trail: mapOf("X-Sum", "1", "Host", "no"),
			want: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"},
		{name: "host field without authority", h: mapOf(":method", "GET", ":path", "/", "X-A", "1", "Host", "h"), end: true,
			want: "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"},
		{name: "host field dropped for authority", h: mapOf(":method", "GET", ":path", "/", ":authority", "a", "host", "h"), end: true,
			want: "GET / HTTP/1.1\r\nHost: a\r\n\r\n"},
		{name: "path with space", h: mapOf(":method", "GET", ":path", "/a b", ":authority", "a"), end: true, err: ErrInvalidRequest},
		{name: "path with crlf", h: mapOf(":method", "GET", ":path", "/a\r\nX: y", ":authority", "a"), end: true, err: ErrInvalidRequest},
		{name: "bad method", h: mapOf(":method", "G T", ":path", "/", ":authority", "a"), end: true, err: ErrInvalidRequest},
		{name: "bad authority", h: mapOf(":method", "GET", ":path", "/", ":authority", "a\r\nb"), end: true, err: ErrInvalidRequest},
		{name: "value injection", h: mapOf(":method", "GET", ":path", "/", ":authority", "a", "X", "1\r\nY: 2"), end: true, err: ErrInvalidField},
		{name: "bad name", h: mapOf(":method", "GET", ":path", "/", ":authority", "a", "X Y", "1"), end: true, err: ErrInvalidField},
		{name: "conflicting lengths", h: mapOf(":method", "PUT", ":path", "/", ":authority", "a", "Content-Length", "1", "content-length", "2"), err: ErrInvalidField},
		{name: "declared body not sent", h: mapOf(":method", "PUT", ":path", "/", ":authority", "a", "Content-Length", "1"), end: true, err: ErrBodyLength},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fc := &fakeConn{r: strings.NewReader("")}
			cc := NewClientCodec().NewClientConn(fc)
			err := cc.WriteRequestHeaders(tc.h, tc.end)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				cc.Flush()
				if fc.w.Len() != 0 {
					t.Fatalf("wrote %q after an error", fc.w.String())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.end && fc.writes != 0 {
				t.Errorf("head flushed before the body")
			}
			for i, b := range tc.body {
				last := i == len(tc.body)-1 && tc.trail == nil
				if err := cc.WriteRequestBody([]byte(b), last); err != nil {
					t.Fatal(err)
				}
			}
			if tc.trail != nil {
				if err := cc.WriteRequestTrailers(tc.trail); err != nil {
					t.Fatal(err)
				}
			}
			if got := fc.w.String(); got != tc.want {
				t.Fatalf("wrote\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

func TestClientReadResponse(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		raw      string
		heads    int // 1xx heads before the final one
		fields   []string
		body     string
		trailers []string
		reusable bool
		err      bool // head error
		bodyErr  bool
	}{
		{name: "content-length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", fields: []string{":status", "200", "Content-Length", "5", "X-A", "b"}, body: "hello", reusable: true},
		{name: "chunked trailers", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", fields: []string{":status", "200"}, body: "hello", trailers: []string{"X-T", "1"}, reusable: true},
		{name: "close delimited", raw: "HTTP/1.1 200 OK\r\n\r\nhello world", fields: []string{":status", "200"}, body: "hello world"},
		{name: "connection close", raw: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", fields: []string{":status", "200", "Connection", "close", "Content-Length", "2"}, body: "ok"},
		{name: "http/1.0", raw: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", fields: []string{":status", "200", "Content-Length", "2"}, body: "ok"},
		{name: "http/1.0 keep-alive", raw: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", fields: []string{":status", "200", "Connection", "keep-alive", "Content-Length", "2"}, body: "ok", reusable: true},
		{name: "head", method: "HEAD", raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", fields: []string{":status", "200", "Content-Length", "5"}, reusable: true},
		{name: "204", raw: "HTTP/1.1 204 No Content\r\n\r\n", fields: []string{":status", "204"}, reusable: true},
		{name: "304 with length", raw: "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", fields: []string{":status", "304", "Content-Length", "10"}, reusable: true},
		{name: "1xx", raw: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", heads: 2, fields: []string{":status", "200", "Content-Length", "0"}, reusable: true},
		{name: "extra bytes after response", raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokjunk", fields: []string{":status", "200", "Content-Length", "2"}, body: "ok"},
		{name: "truncated body", raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", fields: []string{":status", "200", "Content-Length", "5"}, body: "hel", bodyErr: true},
		{name: "bad chunk", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", fields: []string{":status", "200"}, bodyErr: true},
		{name: "cl and te", raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", err: true},
		{name: "te gzip", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", err: true},
		{name: "bare lf", raw: "HTTP/1.1 200 OK\nContent-Length: 0\n\n", err: true},
		{name: "obs-fold", raw: "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", err: true},
		{name: "garbage", raw: "hello\r\n\r\n", err: true},
		{name: "empty", raw: "", err: true},
		{name: "truncated head", raw: "HTTP/1.1 200 OK\r\nX: a", err: true},
		{name: "huge head", raw: "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fc := &fakeConn{r: strings.NewReader(tc.raw)}
			cc := NewClientCodec().NewClientConn(fc)
			method := tc.method
			if method == "" {
				method = "GET"
			}
			if err := cc.WriteRequestHeaders(mapOf(":method", method, ":path", "/", ":authority", "a"), true); err != nil {
				t.Fatal(err)
			}
			var h header.Map
			var err error
			for i := 0; i <= tc.heads; i++ {
				h.Reset()
				if err = cc.ReadResponseHeaders(&h); err != nil {
					break
				}
			}
			if tc.err {
				if err == nil {
					t.Fatalf("accepted: %q", h.Fields())
				}
				if !strings.HasPrefix(err.Error(), "http1: ") {
					t.Errorf("error %q", err)
				}
				if cc.Reusable() {
					t.Errorf("reusable after an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !sameFields(h.Fields(), mapOf(tc.fields...).Fields()) {
				t.Errorf("fields %q", h.Fields())
			}
			body, err := io.ReadAll(cc.ResponseBody())
			if string(body) != tc.body || (err != nil) != tc.bodyErr {
				t.Fatalf("body %q %v", body, err)
			}
			if !sameFields(cc.ResponseTrailers().Fields(), mapOf(tc.trailers...).Fields()) {
				t.Errorf("trailers %q", cc.ResponseTrailers().Fields())
			}
			if cc.Reusable() != tc.reusable {
				t.Errorf("reusable %v", cc.Reusable())
			}
		})
	}
}

func TestClientNotReusableUntilBodyRead(t *testing.T) {
	fc := &fakeConn{r: strings.NewReader("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")}
	cc := NewClientCodec().NewClientConn(fc)
	cc.WriteRequestHeaders(mapOf(":method", "GET", ":path", "/", ":authority", "a"), true)
	var h header.Map
	if err := cc.ReadResponseHeaders(&h); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4)
	cc.ResponseBody().Read(p)
	if cc.Reusable() {
		t.Fatal("reusable with body left")
	}
	if err := cc.WriteRequestHeaders(mapOf(":method", "GET", ":path", "/", ":authority", "a"), true); !errors.Is(err, ErrBusy) {
		t.Fatalf("second request on a busy connection: %v", err)
	}
	// The last bytes come with io.EOF.
	p = make([]byte, 64)
	n, err := cc.ResponseBody().Read(p)
	if string(p[:n]) != "456789" || err != io.EOF {
		t.Fatalf("%q %v", p[:n], err)
	}
	if !cc.Reusable() {
		t.Fatal("not reusable after the body")
	}
}

func TestClientRequestClose(t *testing.T) {
	fc := &fakeConn{r: strings.NewReader("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")}
	cc := NewClientCodec().NewClientConn(fc)
	cc.WriteRequestHeaders(mapOf(":method", "GET", ":path", "/", ":authority", "a", "Connection", "close"), true)
	var h header.Map
	if err := cc.ReadResponseHeaders(&h); err != nil {
		t.Fatal(err)
	}
	io.ReadAll(cc.ResponseBody())
	if cc.Reusable() {
		t.Fatal("reusable after Connection: close")
	}
}

func TestClientHijack(t *testing.T) {
	fc := &fakeConn{r: strings.NewReader("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nhello")}
	cc := NewClientCodec().NewClientConn(fc)
	cc.WriteRequestHeaders(mapOf(":method", "GET", ":path", "/", ":authority", "a", "Connection", "Upgrade", "Upgrade", "x"), true)
	if _, err := cc.Hijack(); !errors.Is(err, ErrNotHijackable) {
		t.Fatalf("hijack before the response: %v", err)
	}
	var h header.Map
	if err := cc.ReadResponseHeaders(&h); err != nil {
		t.Fatal(err)
	}
	if cc.Reusable() {
		t.Fatal("upgraded connection reusable")
	}
	rw, err := cc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rw)
	if string(b) != "hello" {
		t.Fatalf("%q", b)
	}
	rw.Write([]byte("up"))
	if !strings.HasSuffix(fc.w.String(), "\r\n\r\nup") {
		t.Fatalf("wrote %q", fc.w.String())
	}
}

// The client and server codecs against each other over TCP: header case and
// order survive both ways, bodies and trailers too, and the connection is
// reused.
func TestClientServerRoundTrip(t *testing.T) {
	type seen struct {
		fields, trailers []header.Field
		body             string
	}
	got := make(chan seen, 4)
	respFields := mapOf(":status", "201", "X-UPPER", "A", "x-lower", "b", "Set-Cookie", "1", "Set-Cookie", "2")
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		b, err := io.ReadAll(s.Body())
		if err != nil {
			t.Errorf("server body: %v", err)
		}
		got <- seen{fieldsOf(s.RequestHeaders()), fieldsOf(s.RequestTrailers()), string(b)}
		s.WriteHeaders(respFields, false)
		s.WriteBody(b, false)
		s.WriteTrailers(mapOf("Grpc-Status", "0"))
	}), nil)
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	cc := NewClientCodec().NewClientConn(nc)
	defer cc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < 3; i++ {
		req := mapOf(":method", "POST", ":path", "/p/"+itoa(i), ":authority", "svc.local", ":scheme", "http",
			"X-CamelCase", "1", "lower", "2", "X-Dup", "a", "X-Dup", "b")
		if err := cc.WriteRequestHeaders(req, false); err != nil {
			t.Fatal(err)
		}
		cc.WriteRequestBody([]byte("body-"+itoa(i)), false)
		cc.WriteRequestTrailers(mapOf("X-Req-Trailer", "t"))
		if err := cc.Flush(); err != nil {
			t.Fatal(err)
		}
		var h header.Map
		if err := cc.ReadResponseHeaders(&h); err != nil {
			t.Fatal(err)
		}
		if !sameFields(h.Fields(), respFields.Fields()) {
			t.Errorf("response fields %q", h.Fields())
		}
		b, err := io.ReadAll(cc.ResponseBody())
		if err != nil || string(b) != "body-"+itoa(i) {
			t.Fatalf("response body %q %v", b, err)
		}
		if !sameFields(cc.ResponseTrailers().Fields(), mapOf("Grpc-Status", "0").Fields()) {
			t.Errorf("response trailers %q", cc.ResponseTrailers().Fields())
		}
		if !cc.Reusable() {
			t.Fatalf("request %d: not reusable", i)
		}
		s := <-got
		if !sameFields(s.fields, req.Fields()) || s.body != "body-"+itoa(i) || !sameFields(s.trailers, mapOf("X-Req-Trailer", "t").Fields()) {
			t.Errorf("server saw %q %q %q", s.fields, s.body, s.trailers)
		}
	}
}

// A request body streamed in pieces reaches the handler as it is written.
func TestClientStreamsBody(t *testing.T) {
	pieces := make(chan string, 4)
	ts := startServer(t, handlerFunc(func(s stream.ServerStream) {
		buf := make([]byte, 64)
		for {
			n, err := s.Body().Read(buf)
			if n > 0 {
				pieces <- string(buf[:n])
			}
			if err != nil {
				break
			}
		}
		s.WriteHeaders(mapOf(":status", "204"), true)
	}), nil)
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	cc := NewClientCodec().NewClientConn(nc)
	defer cc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	cc.WriteRequestHeaders(mapOf(":method", "POST", ":path", "/", ":authority", "a"), false)
	for _, p := range []string{"one", "two"} {
		cc.WriteRequestBody([]byte(p), false)
		select {
		case got := <-pieces:
			if got != p {
				t.Fatalf("got %q want %q", got, p)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("piece %q not delivered", p)
		}
	}
	cc.WriteRequestBody(nil, true)
	var h header.Map
	if err := cc.ReadResponseHeaders(&h); err != nil || h.Value(":status") != "204" {
		t.Fatalf("%v %q", err, h.Fields())
	}
	if !cc.Reusable() {
		t.Fatal("not reusable")
	}
}

func TestClientTimeoutError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			bufio.NewReader(c).ReadString('\n')
			time.Sleep(500 * time.Millisecond)
			c.Close()
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := NewClientCodec().NewClientConn(nc)
	defer cc.Close()
	nc.SetDeadline(time.Now().Add(100 * time.Millisecond))
	cc.WriteRequestHeaders(mapOf(":method", "GET", ":path", "/", ":authority", "a"), true)
	var h header.Map
	err = cc.ReadResponseHeaders(&h)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !isTimeout(err) {
		t.Fatalf("got %v, want a timeout", err)
	}
}
