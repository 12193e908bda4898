package upstream

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeCodec stands in for the HTTP/1 codec: the pool only needs Close.
type fakeCodec struct{}

func (fakeCodec) NewClientConn(c net.Conn) stream.ClientConn { return &fakeConn{nc: c} }

type fakeConn struct {
	nc     net.Conn
	closed atomic.Bool
}

func (f *fakeConn) SetDeadline(time.Time) error                 { return nil }
func (f *fakeConn) WriteRequestHeaders(*header.Map, bool) error { return nil }
func (f *fakeConn) WriteRequestBody([]byte, bool) error         { return nil }
func (f *fakeConn) WriteRequestTrailers(*header.Map) error      { return nil }
func (f *fakeConn) Flush() error                                { return nil }
func (f *fakeConn) ReadResponseHeaders(*header.Map) error       { return nil }
func (f *fakeConn) ResponseBody() io.Reader                     { return eofReader{} }
func (f *fakeConn) ResponseTrailers() *header.Map               { return nil }
func (f *fakeConn) Reusable() bool                              { return !f.closed.Load() }
func (f *fakeConn) Hijack() (io.ReadWriteCloser, error)         { return f.nc, nil }
func (f *fakeConn) Close() error {
	f.closed.Store(true)
	return f.nc.Close()
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

func testRegistry() *stream.Registry {
	r := stream.NewRegistry()
	r.RegisterCodec("http1", nil, fakeCodec{})
	return r
}

func newTestManager(t testing.TB) (*Manager, *observe.Store) {
	t.Helper()
	store := observe.NewStore()
	m := NewManager(store, testRegistry(), nil)
	t.Cleanup(m.Close)
	return m, store
}

// commit builds and commits clusters, failing the test on error.
func commit(t testing.TB, m *Manager, cs ...*config.Cluster) *Set {
	t.Helper()
	set, err := m.Build(cs)
	if err != nil {
		t.Fatal(err)
	}
	m.Commit(set)
	return set
}

// ep is a healthy endpoint.
func ep(addr string, weight uint32) *config.Endpoint {
	return &config.Endpoint{Address: addr, Weight: weight, Healthy: true}
}

// testServer accepts TCP connections on 127.0.0.1 and keeps them open.
type testServer struct {
	ln       net.Listener
	mu       sync.Mutex
	conns    []net.Conn
	accepted atomic.Int64
	done     chan struct{}
}

func newTestServer(t testing.TB) *testServer {
	t.Helper()
	return newTestServerAt(t, "127.0.0.1:0")
}

func newTestServerAt(t testing.TB, addr string) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return serveTest(t, ln)
}

// serveTest accepts on ln until the test ends.
func serveTest(t testing.TB, ln net.Listener) *testServer {
	s := &testServer{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.accepted.Add(1)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-s.done
		s.closeAll()
	})
	return s
}

func (s *testServer) addr() string { return s.ln.Addr().String() }

// closeAll closes the server side of every accepted connection.
func (s *testServer) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// writeAll sends b on every accepted connection.
func (s *testServer) writeAll(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Write(b)
	}
}

// eventually polls cond every 5ms for up to 5s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
