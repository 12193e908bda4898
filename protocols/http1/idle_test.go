package http1

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/stream"
)

type idleState struct {
	nreq   int
	br, bw bool // still held
	chunk  bool // a first-read chunk still held
	raw    bool // waiting on the raw socket
}

// watchIdle reports every wait for a request that happens without buffers.
func watchIdle(t *testing.T) <-chan idleState {
	ch := make(chan idleState, 64)
	hook := func(c *serverConn) {
		select {
		case ch <- idleState{c.nreq, c.br != nil, c.bw != nil, c.prefix.chunk != nil, c.raw != nil}:
		default:
		}
	}
	testHookIdle.Store(&hook)
	t.Cleanup(func() { testHookIdle.Store(nil) })
	return ch
}

func waitIdle(t *testing.T, ch <-chan idleState, nreq int) {
	t.Helper()
	select {
	case s := <-ch:
		if s.nreq != nreq || s.br || s.bw || s.chunk {
			t.Fatalf("idle after %d requests holds reader %v writer %v chunk %v; want after %d, none", s.nreq, s.br, s.bw, s.chunk, nreq)
		}
		if !s.raw {
			t.Fatal("a TCP connection waits for its next request without its raw socket")
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("connection not idle without buffers after %d requests", nreq)
	}
}

// An idle keep-alive connection gives its reader and writer back, and a
// request that ends the idleness (alone, split after its first byte, or
// with a pipelined one behind it) is read whole.
func TestIdleConnHoldsNoBuffers(t *testing.T) {
	idle := watchIdle(t)
	ts := startServer(t, handlerFunc(echo), &stream.ServerOptions{IdleTimeout: time.Minute, RequestHeadersTimeout: 5 * time.Second})
	c := dial(t, ts.addr)
	br := bufio.NewReader(c)
	waitIdle(t, idle, 0) // a fresh connection holds none either

	check := func(method, path, auth, body string) {
		t.Helper()
		resp, got := readResp(t, br, method)
		if resp.StatusCode != 200 || resp.Close || resp.Header.Get("X-Path") != path || resp.Header.Get("X-Authority") != auth || got != body {
			t.Fatalf("got %d close=%v %s %s %q, want %s %s %q", resp.StatusCode, resp.Close,
				resp.Header.Get("X-Path"), resp.Header.Get("X-Authority"), got, path, auth, body)
		}
	}
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
	check("GET", "/1", "a", "")
	waitIdle(t, idle, 1)

	// After idleness, two requests in one packet.
	io.WriteString(c, "POST /2 HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc"+
		"GET /3 HTTP/1.1\r\nHost: c\r\n\r\n")
	check("POST", "/2", "b", "abc")
	check("GET", "/3", "c", "")
	waitIdle(t, idle, 3)

	// The first byte alone, then the rest with a pipelined chunked request.
	io.WriteString(c, "P")
	time.Sleep(20 * time.Millisecond)
	io.WriteString(c, "OST /4 HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\nxy"+
		"POST /5 HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n")
	check("POST", "/4", "d", "xy")
	check("POST", "/5", "e", "xyz")
	waitIdle(t, idle, 5)

	// A head larger than the first read's chunk, with a pipelined request
	// behind it: the rest comes from the connection.
	big := strings.Repeat("v", 6000)
	io.WriteString(c, "GET /6 HTTP/1.1\r\nHost: f\r\nX-Big: "+big+"\r\n\r\nGET /7 HTTP/1.1\r\nHost: g\r\n\r\n")
	check("GET", "/6", "f", "")
	check("GET", "/7", "g", "")
	waitIdle(t, idle, 7)

	// The client's FIN while idle ends the connection quietly.
	c.(*net.TCPConn).CloseWrite()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the client's FIN: %v, want EOF", err)
	}

	if n := ts.calls.Load(); n != 7 {
		t.Fatalf("handler calls %d", n)
	}
}

// countConn feeds one request per Read (its first byte alone when asked
// for one) and counts read deadline updates.
type countConn struct {
	fakeConn
	msg       []byte
	n         int
	off       int
	deadlines int
}

func (c *countConn) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, io.EOF
	}
	k := copy(p, c.msg[c.off:])
	if c.off += k; c.off == len(c.msg) {
		c.off = 0
		c.n--
	}
	return k, nil
}

func (c *countConn) Write(p []byte) (int, error)     { c.writes++; return len(p), nil }
func (c *countConn) SetReadDeadline(time.Time) error { c.deadlines++; return nil }

// Keep-alive requests with timeouts configured do not re-arm the read
// deadline each time.
func TestReadDeadlineNotRearmed(t *testing.T) {
	const n = 100
	h := handlerFunc(func(s stream.ServerStream) {
		s.WriteHeaders(mapOf(":status", "204"), true)
	})
	cc := &countConn{msg: []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), n: n}
	opts := &stream.ServerOptions{IdleTimeout: time.Minute, RequestHeadersTimeout: time.Minute}
	if err := NewServerCodec().ServeConn(context.Background(), cc, &stream.ConnInfo{}, h, opts); err != nil {
		t.Fatal(err)
	}
	if cc.writes != n {
		t.Fatalf("%d responses for %d requests", cc.writes, n)
	}
	if cc.deadlines > 2 {
		t.Fatalf("%d read deadline updates for %d requests", cc.deadlines, n)
	}
}

// BenchmarkServeConnIdle is BenchmarkServeConn with each request arriving
// on its own after the connection went idle (buffers given back and taken
// again every time), with timeouts set.
func BenchmarkServeConnIdle(b *testing.B) {
	body := []byte("hello world\n")
	resp := mapOf(":status", "200", "Content-Type", "text/plain", "Content-Length", "12")
	h := handlerFunc(func(s stream.ServerStream) {
		s.WriteHeaders(resp, false)
		s.WriteBody(body, true)
	})
	b.ReportAllocs()
	b.ResetTimer()
	cc := &countConn{msg: benchRequest, n: b.N}
	opts := &stream.ServerOptions{IdleTimeout: time.Minute, RequestHeadersTimeout: time.Minute}
	if err := NewServerCodec().ServeConn(context.Background(), cc, &stream.ConnInfo{}, h, opts); err != nil {
		b.Fatal(err)
	}
	if cc.writes != b.N {
		b.Fatalf("%d writes for %d requests", cc.writes, b.N)
	}
	b.ReportMetric(float64(cc.deadlines)/float64(b.N), "deadlines/op")
}
