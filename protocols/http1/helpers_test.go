package http1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

type handlerFunc func(s stream.ServerStream)

func (f handlerFunc) ServeStream(s stream.ServerStream) { f(s) }

// fields turns "name: value" pairs into a Map.
func mapOf(kv ...string) *header.Map {
	var m header.Map
	for i := 0; i+1 < len(kv); i += 2 {
		m.Add(kv[i], kv[i+1])
	}
	return &m
}

func fieldsOf(m *header.Map) []header.Field {
	return append([]header.Field(nil), m.Fields()...)
}

func sameFields(a, b []header.Field) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// testServer runs the server codec on a loopback listener.
type testServer struct {
	addr   string
	cancel context.CancelFunc
	calls  atomic.Int64
	errs   chan error
}

func startServer(t *testing.T, h stream.Handler, opts *stream.ServerOptions) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{addr: ln.Addr().String(), cancel: cancel, errs: make(chan error, 64)}
	var wg sync.WaitGroup
	wg.Add(1)
	codec := NewServerCodec()
	counted := handlerFunc(func(s stream.ServerStream) {
		ts.calls.Add(1)
		h.ServeStream(s)
	})
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := codec.ServeConn(ctx, c, &stream.ConnInfo{}, counted, opts)
				select {
				case ts.errs <- err:
				default:
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Errorf("server goroutines did not end")
		}
	})
	return ts
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// rawExchange writes req and reads until the peer closes or timeout.
func rawExchange(t *testing.T, addr, req string, timeout time.Duration) (string, bool) {
	t.Helper()
	c := dial(t, addr)
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String(), !isTimeout(err)
		}
	}
}

// readClosed reports whether the peer closes c within d (reading and
// dropping anything it sends).
func readClosed(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 1024)
	for {
		_, err := c.Read(buf)
		if err != nil {
			return !isTimeout(err)
		}
	}
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	resp.Body.Close()
	return resp, string(b)
}

// echo answers with the request's pseudo-headers and body.
func echo(s stream.ServerStream) {
	h := s.RequestHeaders()
	body, err := io.ReadAll(s.Body())
	if err != nil {
		s.WriteHeaders(mapOf(":status", "400", "Content-Length", "0"), true)
		return
	}
	resp := mapOf(":status", "200", "X-Method", h.Value(":method"), "X-Path", h.Value(":path"), "X-Authority", h.Value(":authority"))
	tr := s.RequestTrailers()
	for i := 0; i < tr.Len(); i++ {
		resp.Add("X-Trailer-"+tr.At(i).Name, tr.At(i).Value)
	}
	resp.Add("Content-Length", itoa(len(body)))
	s.WriteHeaders(resp, len(body) == 0)
	if len(body) > 0 {
		s.WriteBody(body, true)
	}
}

func itoa(n int) string { return string(appendInt(nil, int64(n))) }

// fakeConn is an in-memory net.Conn: reads come from r, writes go to w.
type fakeConn struct {
	r      io.Reader
	w      bytes.Buffer
	writes int
	closed bool
}

func (c *fakeConn) Read(p []byte) (int, error) {
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}

func (c *fakeConn) Write(p []byte) (int, error) {
	if c.closed {
		return 0, net.ErrClosed
	}
	c.writes++
	return c.w.Write(p)
}
func (c *fakeConn) Close() error                     { c.closed = true; return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// discardConn reads forever from a repeated request and drops writes.
type discardConn struct {
	fakeConn
}

func (c *discardConn) Write(p []byte) (int, error) { c.writes++; return len(p), nil }

// repeatReader yields msg n times, then EOF.
type repeatReader struct {
	msg []byte
	off int
	n   int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.EOF
	}
	k := 0
	for k < len(p) && r.n > 0 {
		c := copy(p[k:], r.msg[r.off:])
		k += c
		r.off += c
		if r.off == len(r.msg) {
			r.off = 0
			r.n--
		}
	}
	return k, nil
}

func statusOf(err error) int {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return pe.Status
	}
	return 0
}
