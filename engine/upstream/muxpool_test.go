package upstream

import (
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeMux stands in for the HTTP/2 codec: connections with a fixed stream
// limit, whose streams are fakeConns over the one network connection.
type fakeMux struct {
	limit int
	mu    sync.Mutex
	conns []*fakeMuxConn
}

func (f *fakeMux) NewMuxConn(c net.Conn, _ *stream.ClientOptions) (stream.MuxConn, error) {
	mc := &fakeMuxConn{nc: c, limit: f.limit, done: make(chan struct{})}
	f.mu.Lock()
	f.conns = append(f.conns, mc)
	f.mu.Unlock()
	return mc, nil
}

func (f *fakeMux) get(i int) *fakeMuxConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns[i]
}

func (f *fakeMux) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

type fakeMuxConn struct {
	nc       net.Conn
	limit    int
	mu       sync.Mutex
	active   int
	opened   int
	shutdown bool
	closed   bool
	done     chan struct{}
}

func (m *fakeMuxConn) NewStream() (stream.ClientConn, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.shutdown || m.closed {
		return nil, stream.ErrConnClosed
	}
	if m.active >= m.limit {
		return nil, stream.ErrStreamLimit
	}
	m.active++
	m.opened++
	return &fakeStream{m: m}, nil
}

func (m *fakeMuxConn) Capacity() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.shutdown || m.closed {
		return 0
	}
	return m.limit - m.active
}

func (m *fakeMuxConn) Active() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.active
}

func (m *fakeMuxConn) Usable() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.shutdown && !m.closed
}

func (m *fakeMuxConn) Done() <-chan struct{} { return m.done }

var readyNow = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (m *fakeMuxConn) Ready() <-chan struct{} { return readyNow }

func (m *fakeMuxConn) Shutdown() error {
	m.mu.Lock()
	m.shutdown = true
	idle := m.active == 0
	m.mu.Unlock()
	if idle {
		m.Close()
	}
	return nil
}

func (m *fakeMuxConn) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.closed = true
		m.nc.Close()
		close(m.done)
	}
	return nil
}

func (m *fakeMuxConn) isShutdown() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.shutdown
}

// fakeStream is one stream: Close frees its slot.
type fakeStream struct {
	fakeConn
	m    *fakeMuxConn
	once sync.Once
}

func (s *fakeStream) Close() error {
	s.once.Do(func() {
		s.m.mu.Lock()
		s.m.active--
		last := s.m.shutdown && s.m.active == 0
		s.m.mu.Unlock()
		if last {
			s.m.Close()
		}
	})
	return nil
}

func newMuxManager(t *testing.T, limit int) (*Manager, *fakeMux) {
	t.Helper()
	fm := &fakeMux{limit: limit}
	reg := testRegistry()
	reg.RegisterMuxCodec("http2", fm)
	m := NewManager(nil, reg, nil)
	t.Cleanup(m.Close)
	return m, fm
}

func h2Cluster(addr string, edit func(*config.Cluster)) *config.Cluster {
	c := &config.Cluster{Name: "h2", Type: "STATIC", Protocol: config.ProtocolHTTP2, Endpoints: []*config.Endpoint{ep(addr, 1)}}
	if edit != nil {
		edit(c)
	}
	return c
}

func TestMuxPoolStreamsShareConnections(t *testing.T) {
	srv := newTestServer(t)
	m, fm := newMuxManager(t, 3)
	set := commit(t, m, h2Cluster(srv.addr(), nil))
	h := set.Get("h2").Hosts()[0]
	deadline := time.Now().Add(5 * time.Second)

	// Seven streams with room for three per connection: three connections.
	var conns []*Conn
	for range 7 {
		c, err := h.AcquireFor(deadline, false)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if n := fm.count(); n != 3 {
		t.Fatalf("connections dialled = %d, want 3", n)
	}
	if n := h.MuxConns(); n != 3 {
		t.Fatalf("open connections = %d, want 3", n)
	}
	// Freed slots are reused before dialling again.
	conns[0].Release(true)
	c, err := h.AcquireFor(deadline, false)
	if err != nil {
		t.Fatal(err)
	}
	conns[0] = c
	if n := fm.count(); n != 3 {
		t.Fatalf("connections after reuse = %d, want 3", n)
	}
	for _, c := range conns {
		c.Release(true)
	}
	if got := h.Stats.CxActive.Load(); got != 3 {
		t.Fatalf("cx_active = %d, want 3", got)
	}
}

func TestMuxPoolWaitsAtMaxConnections(t *testing.T) {
	srv := newTestServer(t)
	m, fm := newMuxManager(t, 2)
	set := commit(t, m, h2Cluster(srv.addr(), func(c *config.Cluster) {
		c.CircuitBreakers.MaxConnections = 1
		c.CircuitBreakers.MaxPendingRequests = 1
	}))
	cl := set.Get("h2")
	h := cl.Hosts()[0]
	a, err := h.AcquireFor(time.Now().Add(5*time.Second), false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.AcquireFor(time.Now().Add(5*time.Second), false)
	if err != nil {
		t.Fatal(err)
	}
	// Full: the next request waits for a stream to end.
	got := make(chan error, 1)
	go func() {
		c, err := h.AcquireFor(time.Now().Add(5*time.Second), false)
		if err == nil {
			c.Release(true)
		}
		got <- err
	}()
	eventually(t, "a pending request", func() bool { return cl.Stats.RqPendingActive.Value() == 1 })
	// A second waiter overflows max_pending_requests at once.
	if _, err := h.AcquireFor(time.Now().Add(5*time.Second), false); !errors.Is(err, ErrPendingOverflow) {
		t.Fatalf("second waiter: err = %v, want pending overflow", err)
	}
	a.Release(true)
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if n := fm.count(); n != 1 {
		t.Fatalf("connections = %d, want 1 (max_connections)", n)
	}
	// A waiter whose deadline passes gets a pool timeout.
	c, err := h.AcquireFor(time.Now().Add(5*time.Second), false)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.AcquireFor(time.Now().Add(50*time.Millisecond), false)
	if !errors.Is(err, ErrPoolTimeout) || !isTimeoutErr(err) {
		t.Fatalf("expired waiter: err = %v, want a pool timeout", err)
	}
	b.Release(true)
	c.Release(true)
	if v := cl.Stats.RqPendingActive.Value(); v != 0 {
		t.Fatalf("rq_pending_active = %d after the waits", v)
	}
}

func isTimeoutErr(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

func TestMuxPoolConnectionLifecycle(t *testing.T) {
	srv := newTestServer(t)
	m, fm := newMuxManager(t, 10)
	set := commit(t, m, h2Cluster(srv.addr(), func(c *config.Cluster) { c.MaxRequestsPerConnection = 2 }))
	cl := set.Get("h2")
	h := cl.Hosts()[0]
	deadline := time.Now().Add(5 * time.Second)

	// max_requests_per_connection: the second stream is the last of its
	// connection, which shuts down (GOAWAY) and goes once it ends.
	a, _ := h.AcquireFor(deadline, false)
	b, _ := h.AcquireFor(deadline, false)
	first := fm.get(0)
	if !first.isShutdown() {
		t.Fatal("connection not shut down after its last allowed stream")
	}
	c, err := h.AcquireFor(deadline, false)
	if err != nil {
		t.Fatal(err)
	}
	if fm.count() != 2 {
		t.Fatalf("connections = %d, want a second one", fm.count())
	}
	a.Release(true)
	b.Release(true)
	eventually(t, "the first connection to close", func() bool {
		select {
		case <-first.done:
			return cl.Stats.CxDestroy.Value() == 1
		default:
			return false
		}
	})
	// A connection the peer closes leaves the pool; the next request dials.
	fm.get(1).Close()
	c.Release(false)
	eventually(t, "the closed connection to leave the pool", func() bool { return h.MuxConns() == 0 })
	d, err := h.AcquireFor(deadline, false)
	if err != nil {
		t.Fatal(err)
	}
	d.Release(true)
	if fm.count() != 3 {
		t.Fatalf("connections = %d, want 3", fm.count())
	}
	// Retiring the cluster shuts its connections down.
	commit(t, m)
	eventually(t, "connections of the removed cluster to close", func() bool { return h.MuxConns() == 0 && cl.Stats.CxActive.Value() == 0 })
}

func TestProtocolSelection(t *testing.T) {
	srv := newTestServer(t)
	m, fm := newMuxManager(t, 10)
	set := commit(t, m, h2Cluster(srv.addr(), func(c *config.Cluster) { c.Name = "ds"; c.Protocol = config.ProtocolDownstream }))
	h := set.Get("ds").Hosts()[0]
	deadline := time.Now().Add(5 * time.Second)
	c1, err := h.AcquireFor(deadline, false)
	if err != nil {
		t.Fatal(err)
	}
	if c1.mux != nil {
		t.Fatal("an HTTP/1 request took an HTTP/2 stream on a use-downstream cluster")
	}
	c1.Release(true)
	c2, err := h.AcquireFor(deadline, true)
	if err != nil {
		t.Fatal(err)
	}
	if c2.mux == nil || fm.count() != 1 {
		t.Fatal("an HTTP/2 request did not take an HTTP/2 stream on a use-downstream cluster")
	}
	c2.Release(true)

	// auto without TLS has no ALPN to ask: HTTP/1.1.
	set = commit(t, m, h2Cluster(srv.addr(), func(c *config.Cluster) { c.Name = "auto"; c.Protocol = config.ProtocolAuto }))
	c3, err := set.Get("auto").Hosts()[0].AcquireFor(deadline, true)
	if err != nil {
		t.Fatal(err)
	}
	if c3.mux != nil {
		t.Fatal("a plaintext auto cluster used HTTP/2")
	}
	c3.Release(true)

	// An http2 cluster needs the HTTP/2 codec registered.
	if _, err := NewManager(nil, testRegistry(), nil).Build([]*config.Cluster{h2Cluster(srv.addr(), nil)}); err == nil {
		t.Fatal("http2 cluster built without an HTTP/2 codec")
	}
}
