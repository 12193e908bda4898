package upstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

func limits(cb config.CircuitBreakers) func(*config.Cluster) {
	return func(c *config.Cluster) { c.CircuitBreakers = cb }
}

type acquireResult struct {
	conn *Conn
	err  error
}

func acquireAsync(h *Host, ctx context.Context) chan acquireResult {
	ch := make(chan acquireResult, 1)
	go func() {
		c, err := h.Acquire(ctx)
		ch <- acquireResult{c, err}
	}()
	return ch
}

func TestMaxConnectionsAndPending(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, limits(config.CircuitBreakers{MaxConnections: 1, MaxPendingRequests: 2}), srv.addr())
	h := c.Hosts()[0]
	a := mustAcquire(t, h)
	if c.Stats.CxOpen.Value() != 1 {
		t.Fatal("cx_open not set at the limit")
	}

	// Two requests wait, FIFO.
	ctx := context.Background()
	w1 := acquireAsync(h, ctx)
	eventually(t, "first waiter", func() bool { return c.Stats.RqPendingActive.Value() == 1 })
	w2 := acquireAsync(h, ctx)
	eventually(t, "second waiter", func() bool { return c.Stats.RqPendingActive.Value() == 2 })
	if c.Stats.RqPendingOpen.Value() != 1 {
		t.Fatal("rq_pending_open not set")
	}

	// A third overflows at once.
	if _, err := h.Acquire(ctx); !errors.Is(err, ErrPendingOverflow) {
		t.Fatalf("err = %v", err)
	}
	if c.Stats.RqPendingOverflow.Value() != 1 || c.Stats.CxOverflow.Value() != 3 || c.Stats.RqPendingTotal.Value() != 2 {
		t.Fatalf("pending_overflow %d cx_overflow %d pending_total %d",
			c.Stats.RqPendingOverflow.Value(), c.Stats.CxOverflow.Value(), c.Stats.RqPendingTotal.Value())
	}

	// Releasing hands the connection to the first waiter.
	a.Release(true)
	r1 := <-w1
	if r1.err != nil || r1.conn != a || !r1.conn.Reused() {
		t.Fatalf("first waiter got %v, %v", r1.conn, r1.err)
	}
	select {
	case <-w2:
		t.Fatal("second waiter served too early")
	case <-time.After(10 * time.Millisecond):
	}
	// A connection closed instead of reused frees its slot: the next waiter dials.
	r1.conn.Release(false)
	r2 := <-w2
	if r2.err != nil || r2.conn == a || r2.conn.Reused() {
		t.Fatalf("second waiter got %v, %v", r2.conn, r2.err)
	}
	if c.Stats.RqPendingActive.Value() != 0 || c.Stats.RqPendingOpen.Value() != 0 {
		t.Fatal("pending gauges")
	}

	// A waiter gives up with its context.
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := h.Acquire(tctx); !errors.Is(err, ErrPoolTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if len(h.pool.waiters) != 0 || c.pending.count.Load() != 0 {
		t.Fatal("cancelled waiter left behind")
	}
	r2.conn.Release(true)
	if c.cx.count.Load() != 1 || h.IdleConns() != 1 {
		t.Fatalf("count %d idle %d", c.cx.count.Load(), h.IdleConns())
	}
}

func TestHostWithoutConnectionsMayExceedMaxConnections(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, limits(config.CircuitBreakers{MaxConnections: 1}), srv.addr(), srv.addr())
	a := mustAcquire(t, c.Hosts()[0])
	b := mustAcquire(t, c.Hosts()[1]) // over the limit, but host 1 had none
	if c.Stats.CxOverflow.Value() != 1 || c.cx.count.Load() != 2 {
		t.Fatalf("cx_overflow %d count %d", c.Stats.CxOverflow.Value(), c.cx.count.Load())
	}
	b.Release(false)
	a.Release(false)
	if c.cx.count.Load() != 0 || c.Stats.CxOpen.Value() != 0 {
		t.Fatal("count or cx_open after release")
	}
}

func TestMaxRequests(t *testing.T) {
	c, _ := poolCluster(t, limits(config.CircuitBreakers{MaxRequests: 2}), "10.0.0.1:80")
	d1, ok1 := c.TryStartRequest()
	d2, ok2 := c.TryStartRequest()
	if !ok1 || !ok2 || c.Stats.RqActive.Value() != 2 || c.Stats.RqOpen.Value() != 1 {
		t.Fatal("first two requests")
	}
	if _, ok := c.TryStartRequest(); ok {
		t.Fatal("third request allowed")
	}
	if c.Stats.RqPendingOverflow.Value() != 1 {
		t.Fatal("overflow not counted")
	}
	d1()
	if c.Stats.RqOpen.Value() != 0 || c.Stats.RqActive.Value() != 1 {
		t.Fatal("rq_open still set")
	}
	d3, ok := c.TryStartRequest()
	if !ok {
		t.Fatal("request refused after one ended")
	}
	d2()
	d3()
	if c.rq.count.Load() != 0 || c.Stats.RqActive.Value() != 0 {
		t.Fatal("leak")
	}
}

func TestRetryLimits(t *testing.T) {
	tests := []struct {
		name    string
		cb      config.CircuitBreakers
		active  int // requests in flight
		allowed int
	}{
		{"max_retries", config.CircuitBreakers{MaxRetries: 2}, 0, 2},
		{"default max_retries", config.CircuitBreakers{}, 0, 3},
		{"budget floor", config.CircuitBreakers{RetryBudgetPercent: 20}, 5, 3},
		{"budget", config.CircuitBreakers{RetryBudgetPercent: 20, MaxRequests: 100}, 50, 10},
		{"budget min", config.CircuitBreakers{RetryBudgetPercent: 20, MinRetryConcurrency: 1}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := poolCluster(t, limits(tt.cb), "10.0.0.1:80")
			for range tt.active {
				if _, ok := c.TryStartRequest(); !ok {
					t.Fatal("request refused")
				}
			}
			var dones []func()
			for range tt.allowed {
				d, ok := c.TryStartRetry()
				if !ok {
					t.Fatalf("retry %d refused", len(dones)+1)
				}
				dones = append(dones, d)
			}
			if _, ok := c.TryStartRetry(); ok {
				t.Fatal("retry over the limit allowed")
			}
			if c.Stats.RqRetryOverflow.Value() != 1 || c.Stats.RqRetryOpen.Value() != 1 || c.Stats.RqRetry.Value() != uint64(tt.allowed) {
				t.Fatal("retry stats")
			}
			dones[0]()
			if c.Stats.RqRetryOpen.Value() != 0 {
				t.Fatal("rq_retry_open still set")
			}
			if _, ok := c.TryStartRetry(); !ok {
				t.Fatal("retry refused after one ended")
			}
		})
	}
}

func TestAcquireDeadline(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, limits(config.CircuitBreakers{MaxConnections: 1, MaxPendingRequests: 1}), srv.addr())
	h := c.Hosts()[0]
	a, err := h.AcquireDeadline(time.Time{})
	if err != nil || a.NetConn() == nil {
		t.Fatal(err)
	}
	// Waiting for the busy connection until the deadline.
	_, err = h.AcquireDeadline(time.Now().Add(20 * time.Millisecond))
	if !errors.Is(err, ErrPoolTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	// Overflow matches both overflow errors.
	w := acquireAsync(h, context.Background())
	eventually(t, "waiter", func() bool { return c.Stats.RqPendingActive.Value() == 1 })
	_, err = h.AcquireDeadline(time.Now().Add(time.Second))
	if !errors.Is(err, ErrPendingOverflow) || !errors.Is(err, ErrConnectionOverflow) || errors.Is(err, ErrPoolTimeout) {
		t.Fatalf("err = %v", err)
	}
	a.Release(true)
	r := <-w
	if r.err != nil || r.conn != a {
		t.Fatal("waiter not served")
	}
	r.conn.Release(true)
}

func TestAcquireDeadlineWhileDialling(t *testing.T) {
	addr, ok := fullBacklogListener(t)
	if !ok {
		t.Skip("cannot make a loopback listener drop SYNs here")
	}
	c, _ := poolCluster(t, nil, addr)
	_, err := c.Hosts()[0].AcquireDeadline(time.Now().Add(30 * time.Millisecond))
	if !errors.Is(err, ErrPoolTimeout) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrConnectFailure) {
		t.Fatalf("err = %v", err)
	}
	if c.Stats.CxConnectFail.Value() != 0 || c.cx.count.Load() != 0 {
		t.Fatal("a request deadline counted as a connect failure, or leaked a slot")
	}
}

func TestHostSnapshot(t *testing.T) {
	srv := newTestServer(t)
	c, _ := poolCluster(t, nil, srv.addr())
	h := c.Hosts()[0]
	conn := mustAcquire(t, h)
	h.RequestStarted()
	h.Stats.RqSuccess.Add(1)
	s := h.Snapshot()
	if s.CxActive != 1 || s.CxTotal != 1 || s.RqActive != 1 || s.RqTotal != 1 || s.RqSuccess != 1 {
		t.Fatalf("%+v", s)
	}
	h.RequestDone()
	conn.Release(true)
}
