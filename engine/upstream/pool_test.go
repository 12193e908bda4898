package upstream

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// poolCluster commits one cluster "p" with one host per address.
func poolCluster(t testing.TB, mod func(*config.Cluster), addrs ...string) (*Cluster, *Manager) {
	t.Helper()
	m, _ := newTestManager(t)
	cfg := &config.Cluster{Name: "p", ConnectTimeout: 2 * time.Second}
	for _, a := range addrs {
		cfg.Endpoints = append(cfg.Endpoints, ep(a, 1))
	}
	if mod != nil {
		mod(cfg)
	}
	return commit(t, m, cfg).Get("p"), m
}

func mustAcquire(t testing.TB, h *Host) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPoolReuse(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, nil, srv.addr())
	h := c.Hosts()[0]
	a := mustAcquire(t, h)
	if a.Reused() || a.Host() != h || a.ClientConn() == nil {
		t.Fatal("first connection")
	}
	a.Release(true)
	b := mustAcquire(t, h)
	if b != a || !b.Reused() {
		t.Fatal("idle connection not reused")
	}
	// LIFO: the most recently released connection goes out first.
	c2 := mustAcquire(t, h)
	b.Release(true)
	c2.Release(true)
	if d := mustAcquire(t, h); d != c2 {
		t.Fatal("not LIFO")
	} else {
		d.Release(true)
	}
	eventually(t, "two accepted connections", func() bool { return srv.accepted.Load() == 2 })
	if got := c.Stats.CxTotal.Value(); got != 2 {
		t.Fatalf("upstream_cx_total %d", got)
	}
	if got := c.Stats.CxActive.Value(); got != 2 || h.Stats.CxActive.Load() != 2 || h.IdleConns() != 2 {
		t.Fatalf("cx_active %d / host %d / idle %d", got, h.Stats.CxActive.Load(), h.IdleConns())
	}
	// Not reusable: closed, slot freed.
	e := mustAcquire(t, h)
	e.Release(false)
	e.Release(false) // a second release is ignored
	if c.Stats.CxDestroy.Value() != 1 || c.Stats.CxActive.Value() != 1 || c.cx.count.Load() != 1 {
		t.Fatalf("destroy %d active %d count %d", c.Stats.CxDestroy.Value(), c.Stats.CxActive.Value(), c.cx.count.Load())
	}
	c.CloseIdle()
	if h.IdleConns() != 0 || c.Stats.CxActive.Value() != 0 || c.cx.count.Load() != 0 {
		t.Fatal("CloseIdle")
	}
}

func TestStaleConnection(t *testing.T) {
	tests := []struct {
		name  string
		spoil func(*testServer)
	}{
		{"peer closed", (*testServer).closeAll},
		{"unsolicited bytes", func(s *testServer) { s.writeAll([]byte("HTTP/1.1 408 Request Timeout\r\n\r\n")) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTestServer(t)
			c, _ := poolCluster(t, nil, srv.addr())
			h := c.Hosts()[0]
			a := mustAcquire(t, h)
			a.Release(true)
			eventually(t, "server to accept", func() bool { return srv.accepted.Load() == 1 })
			tt.spoil(srv)
			eventually(t, "the client to see it", a.peerClosed)
			time.Sleep(peekAfterIdle) // only connections idle that long are peeked
			b := mustAcquire(t, h)
			if b == a {
				t.Fatal("handed out a dead connection")
			}
			if !a.cc.(*fakeConn).closed.Load() {
				t.Fatal("dead connection not closed")
			}
			if b.Reused() || c.Stats.CxDestroy.Value() != 1 || c.Stats.CxTotal.Value() != 2 {
				t.Fatalf("reused %v destroy %d total %d", b.Reused(), c.Stats.CxDestroy.Value(), c.Stats.CxTotal.Value())
			}
			b.Release(true)
		})
	}
}

func TestIdleConnectionIsAlive(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, nil, srv.addr())
	a := mustAcquire(t, c.Hosts()[0])
	a.Release(true)
	if a.peerClosed() {
		t.Fatal("open connection reported closed")
	}
}

func TestIdleTimeout(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, func(c *config.Cluster) { c.IdleTimeout = 40 * time.Millisecond }, srv.addr())
	h := c.Hosts()[0]
	a := mustAcquire(t, h)
	a.Release(true)
	// The reaper takes the connection off the idle list, then closes it
	// and counts it: wait for all of it.
	eventually(t, "the reaper", func() bool {
		return h.IdleConns() == 0 && c.Stats.CxActive.Value() == 0 && a.cc.(*fakeConn).closed.Load()
	})
	if c.Stats.CxIdleTimeout.Value() != 1 || c.Stats.CxActive.Value() != 0 || !a.cc.(*fakeConn).closed.Load() {
		t.Fatalf("idle_timeout %d active %d", c.Stats.CxIdleTimeout.Value(), c.Stats.CxActive.Value())
	}
	if b := mustAcquire(t, h); b == a {
		t.Fatal("reused a reaped connection")
	} else {
		b.Release(true)
	}
}

func TestIdleTimeoutAtAcquire(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, func(c *config.Cluster) { c.IdleTimeout = time.Hour }, srv.addr())
	h := c.Hosts()[0]
	a := mustAcquire(t, h)
	a.Release(true)
	// Age the idle connection past the timeout instead of sleeping an hour.
	h.pool.mu.Lock()
	a.idleSince -= int64(2 * time.Hour)
	h.pool.mu.Unlock()
	b := mustAcquire(t, h)
	if b == a || c.Stats.CxIdleTimeout.Value() != 1 {
		t.Fatalf("expired connection reused (idle_timeout %d)", c.Stats.CxIdleTimeout.Value())
	}
	b.Release(true)
}

func TestMaxRequestsPerConnection(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, func(c *config.Cluster) { c.MaxRequestsPerConnection = 2 }, srv.addr())
	h := c.Hosts()[0]
	var got []*Conn
	for range 5 {
		conn := mustAcquire(t, h)
		got = append(got, conn)
		conn.Release(true)
	}
	if got[0] != got[1] || got[1] == got[2] || got[2] != got[3] || got[3] == got[4] {
		t.Fatal("connections not rotated after 2 requests")
	}
	if n := c.Stats.CxMaxRequests.Value(); n != 2 {
		t.Fatalf("upstream_cx_max_requests %d", n)
	}
}

// freePort returns a loopback port with nothing listening (briefly bound).
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestConnectRefused(t *testing.T) {
	c, _ := poolCluster(t, nil, freePort(t))
	h := c.Hosts()[0]
	_, err := h.Acquire(context.Background())
	var ce *ConnectError
	if !errors.Is(err, ErrConnectFailure) || errors.Is(err, ErrConnectTimeout) || !errors.As(err, &ce) || ce.Addr != h.Address() {
		t.Fatalf("err = %v", err)
	}
	if c.Stats.CxConnectFail.Value() != 1 || c.Stats.CxConnectTimeout.Value() != 0 || h.Stats.CxConnectFail.Load() != 1 {
		t.Fatal("connect_fail stats")
	}
	if c.cx.count.Load() != 0 || h.pool.total != 0 || c.Stats.CxActive.Value() != 0 {
		t.Fatal("failed dial leaked a slot")
	}
}

func TestConnectTimeout(t *testing.T) {
	addr, ok := fullBacklogListener(t)
	if !ok {
		t.Skip("cannot make a loopback listener drop SYNs here")
	}
	c, _ := poolCluster(t, func(c *config.Cluster) { c.ConnectTimeout = 50 * time.Millisecond }, addr)
	_, err := c.Hosts()[0].Acquire(context.Background())
	if !errors.Is(err, ErrConnectTimeout) || !errors.Is(err, ErrConnectFailure) {
		t.Fatalf("err = %v", err)
	}
	if c.Stats.CxConnectTimeout.Value() != 1 || c.Stats.CxConnectFail.Value() != 1 {
		t.Fatal("connect_timeout stats")
	}
}

func TestAcquireContextCancelledWhileDialling(t *testing.T) {
	addr, ok := fullBacklogListener(t)
	if !ok {
		t.Skip("cannot make a loopback listener drop SYNs here")
	}
	c, _ := poolCluster(t, nil, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err := c.Hosts()[0].Acquire(ctx)
	if !errors.Is(err, ErrPoolTimeout) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrConnectFailure) {
		t.Fatalf("err = %v", err)
	}
}

func TestConcurrentAcquireRelease(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, func(c *config.Cluster) {
		c.CircuitBreakers = config.CircuitBreakers{MaxConnections: 4, MaxPendingRequests: 1000}
		c.MaxRequestsPerConnection = 7
	}, srv.addr(), srv.addr())
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 200 {
				h := c.Pick(nil)
				conn, err := h.Acquire(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				conn.Release((g+i)%5 != 0)
			}
		})
	}
	wg.Wait()
	if c.pending.count.Load() != 0 || c.Stats.RqPendingActive.Value() != 0 {
		t.Fatal("pending leaked")
	}
	idle := 0
	for _, h := range c.Hosts() {
		idle += h.IdleConns()
		if h.pool.total != h.IdleConns() || len(h.pool.waiters) != 0 {
			t.Fatalf("host total %d idle %d waiters %d", h.pool.total, h.IdleConns(), len(h.pool.waiters))
		}
	}
	if int64(idle) != c.cx.count.Load() || int64(idle) != c.Stats.CxActive.Value() {
		t.Fatalf("idle %d, count %d, cx_active %d", idle, c.cx.count.Load(), c.Stats.CxActive.Value())
	}
	if c.Stats.CxTotal.Value()-c.Stats.CxDestroy.Value() != uint64(idle) {
		t.Fatal("cx_total - cx_destroy != active")
	}
	// Each host may exceed the limit by one only when it had no connection.
	if idle > 4+1 {
		t.Fatalf("%d connections with max_connections 4", idle)
	}
}
