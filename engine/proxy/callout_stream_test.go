package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/upstream"
)

// A fake HTTP/2 client codec whose streams the test answers.

type csMux struct{ streams chan *csStream }

func (m *csMux) NewMuxConn(c net.Conn, _ *stream.ClientOptions) (stream.MuxConn, error) {
	return &csMuxConn{m: m, nc: c, done: make(chan struct{})}, nil
}

type csMuxConn struct {
	m      *csMux
	nc     net.Conn
	mu     sync.Mutex
	active int
	closed bool
	done   chan struct{}
}

func (c *csMuxConn) NewStream() (stream.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, stream.ErrConnClosed
	}
	c.active++
	pr, pw := io.Pipe()
	s := &csStream{c: c, body: make(chan csBody, 8), heads: make(chan header.Map, 1), pr: pr, pw: pw, closed: make(chan struct{})}
	c.m.streams <- s
	return s, nil
}

func (c *csMuxConn) Capacity() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0
	}
	return 100 - c.active
}

func (c *csMuxConn) Active() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active
}

func (c *csMuxConn) Usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed
}

var csReady = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

func (c *csMuxConn) Ready() <-chan struct{} { return csReady }
func (c *csMuxConn) Done() <-chan struct{}  { return c.done }
func (c *csMuxConn) Shutdown() error        { return c.Close() }
func (c *csMuxConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		c.nc.Close()
		close(c.done)
	}
	return nil
}

type csBody struct {
	data string
	end  bool
}

// csStream is one stream: what the proxy writes arrives on head and
// body; the test answers with heads, the pipe and trailers.
type csStream struct {
	c        *csMuxConn
	head     header.Map
	body     chan csBody
	heads    chan header.Map
	pr       *io.PipeReader
	pw       *io.PipeWriter
	trailers header.Map
	closed   chan struct{}

	mu              sync.Mutex
	sentEnd, eof    bool
	isClosed, reset bool
}

func (s *csStream) SetDeadline(time.Time) error { return nil }
func (s *csStream) WriteRequestHeaders(h *header.Map, end bool) error {
	s.head = h.Clone()
	return nil
}
func (s *csStream) WriteRequestBody(p []byte, end bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return errors.New("fake: stream closed")
	}
	s.sentEnd = s.sentEnd || end
	s.body <- csBody{string(p), end}
	return nil
}
func (s *csStream) WriteRequestTrailers(*header.Map) error { return nil }
func (s *csStream) Flush() error                           { return nil }
func (s *csStream) ReadResponseHeaders(h *header.Map) error {
	select {
	case head := <-s.heads:
		h.CopyFrom(&head)
		return nil
	case <-s.closed:
		return errors.New("fake: stream closed")
	}
}
func (s *csStream) ResponseBody() io.Reader { return csReader{s} }
func (s *csStream) ResponseTrailers() *header.Map {
	return &s.trailers
}
func (s *csStream) Reusable() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sentEnd && s.eof && !s.isClosed
}
func (s *csStream) Hijack() (io.ReadWriteCloser, error) { return nil, errors.New("no") }
func (s *csStream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return nil
	}
	s.isClosed = true
	s.reset = !(s.sentEnd && s.eof)
	close(s.closed)
	s.pr.CloseWithError(errors.New("fake: stream closed"))
	s.c.mu.Lock()
	s.c.active--
	s.c.mu.Unlock()
	return nil
}

type csReader struct{ s *csStream }

func (r csReader) Read(p []byte) (int, error) {
	n, err := r.s.pr.Read(p)
	if err == io.EOF {
		r.s.mu.Lock()
		r.s.eof = true
		r.s.mu.Unlock()
	}
	return n, err
}

type csHTTP1 struct{}

func (csHTTP1) NewClientConn(c net.Conn) stream.ClientConn { return csH1Conn{c} }

// csH1Conn is an HTTP/1.1 connection a stream call must not use.
type csH1Conn struct{ nc net.Conn }

func (csH1Conn) SetDeadline(time.Time) error                 { return nil }
func (csH1Conn) WriteRequestHeaders(*header.Map, bool) error { return errors.New("fake: http1") }
func (csH1Conn) WriteRequestBody([]byte, bool) error         { return errors.New("fake: http1") }
func (csH1Conn) WriteRequestTrailers(*header.Map) error      { return errors.New("fake: http1") }
func (csH1Conn) Flush() error                                { return nil }
func (csH1Conn) ReadResponseHeaders(*header.Map) error       { return errors.New("fake: http1") }
func (csH1Conn) ResponseBody() io.Reader                     { return nil }
func (csH1Conn) ResponseTrailers() *header.Map               { return nil }
func (csH1Conn) Reusable() bool                              { return false }
func (c csH1Conn) Hijack() (io.ReadWriteCloser, error)       { return c.nc, nil }
func (c csH1Conn) Close() error                              { return c.nc.Close() }

// calloutSet builds clusters "h2" (HTTP/2) and "h1" (HTTP/1.1) on a
// listener that accepts and holds connections.
func calloutSet(t *testing.T) (*upstream.Set, *csMux) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	mux := &csMux{streams: make(chan *csStream, 8)}
	reg := stream.NewRegistry()
	reg.RegisterCodec("http1", nil, csHTTP1{})
	reg.RegisterMuxCodec("http2", mux)
	m := upstream.NewManager(nil, reg, nil)
	t.Cleanup(m.Close)
	ep := func() []*config.Endpoint {
		return []*config.Endpoint{{Address: ln.Addr().String(), Weight: 1, Healthy: true}}
	}
	set, err := m.Build([]*config.Cluster{
		{Name: "h2", Type: "STATIC", Protocol: config.ProtocolHTTP2, Endpoints: ep()},
		{Name: "h1", Type: "STATIC", Protocol: config.ProtocolHTTP1, Endpoints: ep()},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Commit(set)
	return set, mux
}

func grpcHead() *header.Map {
	var h header.Map
	h.Add(":method", "POST")
	h.Add(":path", "/svc/Chat")
	h.Add("content-type", "application/grpc")
	return &h
}

func nextCS(t *testing.T, mux *csMux) *csStream {
	t.Helper()
	select {
	case s := <-mux.streams:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no upstream stream opened")
		return nil
	}
}

func expectBody(t *testing.T, s *csStream, want csBody) {
	t.Helper()
	select {
	case got := <-s.body:
		if got != want {
			t.Fatalf("upstream got %+v, want %+v", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("upstream did not get %+v", want)
	}
}

func readN(t *testing.T, cs *CalloutStream, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(cs, b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCalloutStreamFullDuplex: the request body and the response
// interleave; the exchange completes both ways and counts as a success.
func TestCalloutStreamFullDuplex(t *testing.T) {
	set, mux := calloutSet(t)
	cs, err := OpenStream(context.Background(), set, "h2", grpcHead())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-mux.streams:
		t.Fatal("OpenStream connected before the first use")
	default:
	}
	if err := cs.Send([]byte("a"), false); err != nil {
		t.Fatal(err)
	}
	up := nextCS(t, mux)
	if h := &up.head; h.Value(":scheme") != "http" || h.Value(":authority") != "h2" || h.Value(":path") != "/svc/Chat" {
		t.Errorf("head %v", h.Fields())
	}
	expectBody(t, up, csBody{"a", false})
	var rh header.Map
	rh.Add(":status", "200")
	up.heads <- rh
	h, ended, err := cs.ResponseHeaders()
	if err != nil || ended || h.Value(":status") != "200" {
		t.Fatalf("head %v ended %v err %v", h, ended, err)
	}
	go up.pw.Write([]byte("A"))
	if got := readN(t, cs, 1); got != "A" {
		t.Fatalf("read %q", got)
	}
	if err := cs.Send([]byte("b"), true); err != nil {
		t.Fatal(err)
	}
	expectBody(t, up, csBody{"b", true})
	go func() {
		up.pw.Write([]byte("B"))
		up.trailers.Add("grpc-status", "0")
		up.pw.Close()
	}()
	if b, err := io.ReadAll(cs); err != nil || string(b) != "B" {
		t.Fatalf("rest %q %v", b, err)
	}
	if cs.ResponseTrailers().Value("grpc-status") != "0" {
		t.Errorf("trailers %v", cs.ResponseTrailers().Fields())
	}
	cs.Close()
	cs.Close()
	host := set.Get("h2").Hosts()[0]
	if up.reset || host.Stats.RqSuccess.Load() != 1 || host.Stats.RqActive.Load() != 0 {
		t.Errorf("reset %v success %d active %d", up.reset, host.Stats.RqSuccess.Load(), host.Stats.RqActive.Load())
	}
}

// TestCalloutStreamContextEnds: the caller's context ending resets the
// stream and unblocks its reader with the context's cause.
func TestCalloutStreamContextEnds(t *testing.T) {
	set, mux := calloutSet(t)
	ctx, cancel := context.WithCancel(context.Background())
	cs, err := OpenStream(ctx, set, "h2", grpcHead())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := cs.ResponseHeaders()
		done <- err
	}()
	up := nextCS(t, mux)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reader was not unblocked")
	}
	<-up.closed
	host := set.Get("h2").Hosts()[0]
	if !up.reset || host.Stats.RqError.Load() != 1 || host.Stats.RqActive.Load() != 0 {
		t.Errorf("reset %v errors %d active %d", up.reset, host.Stats.RqError.Load(), host.Stats.RqActive.Load())
	}
	if err := cs.Send([]byte("x"), true); err == nil {
		t.Error("send after the end succeeded")
	}
}

func TestCalloutStreamRefused(t *testing.T) {
	set, mux := calloutSet(t)
	if _, err := OpenStream(context.Background(), set, "nope", grpcHead()); !errors.Is(err, ErrUnknownCluster) {
		t.Errorf("unknown cluster: %v", err)
	}
	var h header.Map
	h.Add(":method", "POST")
	if _, err := OpenStream(context.Background(), set, "h2", &h); err == nil {
		t.Error("a head without :path was accepted")
	}
	cs, err := OpenStream(context.Background(), set, "h1", grpcHead())
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.Send([]byte("x"), true); !errors.Is(err, ErrStreamNeedsHTTP2) {
		t.Errorf("HTTP/1 cluster: %v", err)
	}
	cs.Close()

	// Closed before its first use: it never connects.
	cs, err = OpenStream(context.Background(), set, "h2", grpcHead())
	if err != nil {
		t.Fatal(err)
	}
	cs.Close()
	if _, _, err := cs.ResponseHeaders(); err == nil {
		t.Error("a closed stream connected")
	}
	select {
	case <-mux.streams:
		t.Error("a closed stream took a stream of the pool")
	default:
	}
}
