package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/engine/stream"
)

// Per-host connection pool. One mutex per host guards the idle stack, the
// FIFO of waiting requests and the host's connection count; the cluster's
// connection count (max_connections) and pending count are atomics. A *Conn
// is allocated once per upstream connection and reused for every request
// it carries, so taking and returning an idle connection allocates nothing.

type connState uint8

const (
	connInUse connState = iota
	connIdle
	connClosed
)

// Conn is a pooled upstream connection, owned by one request between
// Acquire and Release.
type Conn struct {
	host      *Host
	nc        net.Conn
	cc        stream.ClientConn
	rc        syscall.RawConn // for the stale check; nil if unavailable
	peekFn    func(fd uintptr)
	peekDead  bool
	peekBuf   [1]byte
	state     connState // guarded by host.pool.mu
	reused    bool
	requests  int      // requests handed out on this connection
	idleSince int64    // monoNow() when it went idle
	mux       *muxConn // set for a stream of a multiplexed connection
}

// ClientConn is the protocol connection to run the exchange on.
func (conn *Conn) ClientConn() stream.ClientConn { return conn.cc }

// NetConn is the underlying network connection, for I/O deadlines. Reads
// and writes go through ClientConn.
func (conn *Conn) NetConn() net.Conn { return conn.nc }

// Reused reports whether an HTTP/1 connection carried an earlier request (so a
// failure before any response byte may be a stale keep-alive race, safe to
// retry for idempotent requests).
func (conn *Conn) Reused() bool { return conn.reused && conn.mux == nil }

// Multiplexed reports whether this is a stream of a multiplexed (HTTP/2)
// connection, whose request and response may flow at the same time.
func (conn *Conn) Multiplexed() bool { return conn.mux != nil }

// Host is the host the connection belongs to.
func (conn *Conn) Host() *Host { return conn.host }

type pool struct {
	mu      sync.Mutex
	idle    []*Conn   // oldest first; Acquire takes the newest (LIFO)
	waiters []*waiter // FIFO of requests waiting for a connection
	total   int       // connections of this host, connecting ones included
}

// waiter is a request waiting for a connection: it is given either a
// released connection (conn) or a freed connection slot to dial with (dial).
type waiter struct {
	ch   chan struct{} // buffered; signalled once
	conn *Conn
	dial bool
}

func (p *pool) popWaiter() *waiter {
	w := p.waiters[0]
	p.waiters[0] = nil
	p.waiters = p.waiters[1:]
	if len(p.waiters) == 0 {
		p.waiters = nil
	}
	return w
}

func (p *pool) removeWaiter(w *waiter) bool {
	for i, x := range p.waiters {
		if x == w {
			copy(p.waiters[i:], p.waiters[i+1:])
			p.waiters[len(p.waiters)-1] = nil
			p.waiters = p.waiters[:len(p.waiters)-1]
			return true
		}
	}
	return false
}

var epoch = time.Now()

// monoNow is a monotonic clock in nanoseconds.
func monoNow() int64 { return int64(time.Since(epoch)) }

// Acquire returns a connection to the host: the most recently idle one that
// is still open and not past the idle timeout, or a new one. At the
// cluster's max_connections the request waits (counting against
// max_pending_requests) for a connection of this host to be released; a
// host with no connection at all may always open one, as in Envoy.
//
// Errors: a *ConnectError (errors.Is ErrConnectFailure, and
// ErrConnectTimeout for a connect timeout), an overflow error matching
// ErrPendingOverflow and ErrConnectionOverflow, or an error matching
// ErrPoolTimeout and the context's error when ctx ends first (while
// waiting or while connecting).
func (h *Host) Acquire(ctx context.Context) (*Conn, error) {
	return h.acquire(ctx, time.Time{})
}

// AcquireDeadline is Acquire bounded by a deadline (zero: none) instead of
// a context, so the proxy needs no context per try; a request that runs out
// of time gets an error matching ErrPoolTimeout and
// context.DeadlineExceeded.
func (h *Host) AcquireDeadline(deadline time.Time) (*Conn, error) {
	return h.acquire(nil, deadline)
}

// acquire is Acquire with an optional ctx (nil: none) and deadline (zero:
// none).
func (h *Host) acquire(ctx context.Context, deadline time.Time) (*Conn, error) {
	c := h.cluster
	p := &h.pool
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			break // with p.mu held
		}
		conn := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		conn.state = connInUse
		p.mu.Unlock()
		idle := monoNow() - conn.idleSince
		if c.idleTimeout > 0 && idle >= c.idleTimeout {
			c.Stats.CxIdleTimeout.Inc()
			h.discard(conn)
			continue
		}
		// A connection idle for a moment is almost never closed by its peer
		// (servers close after seconds of keep-alive idleness), so the
		// peek syscall is saved on busy pools; the proxy retries a reused
		// connection that fails before any response byte anyway.
		if idle >= int64(peekAfterIdle) && conn.peerClosed() {
			h.discard(conn)
			continue
		}
		conn.reused = true
		conn.requests++
		return conn, nil
	}
	if !c.cx.tryInc(c.cx.max) {
		c.Stats.CxOverflow.Inc()
		if p.total > 0 {
			return h.wait(ctx, deadline)
		}
		c.cx.forceInc()
	}
	p.total++
	p.mu.Unlock()
	return h.dial(ctx, deadline)
}

// wait queues the request for a released connection; p.mu is held.
func (h *Host) wait(ctx context.Context, deadline time.Time) (*Conn, error) {
	c := h.cluster
	p := &h.pool
	if !c.pending.tryInc(c.pending.max) {
		p.mu.Unlock()
		c.Stats.RqPendingOverflow.Inc()
		return nil, errOverflow
	}
	w := &waiter{ch: make(chan struct{}, 1)}
	p.waiters = append(p.waiters, w)
	p.mu.Unlock()
	c.Stats.RqPendingTotal.Inc()
	c.Stats.RqPendingActive.Inc()

	var done <-chan struct{}
	if ctx != nil {
		done = ctx.Done()
	}
	var expired <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		expired = t.C
	}
	var cause error
	select {
	case <-w.ch:
	case <-done:
		cause = context.Cause(ctx)
	case <-expired:
		cause = context.DeadlineExceeded
	}
	var err error
	if cause != nil {
		p.mu.Lock()
		removed := p.removeWaiter(w)
		p.mu.Unlock()
		if !removed { // served meanwhile: give it back
			<-w.ch
			if w.conn != nil {
				w.conn.Release(true)
			} else {
				h.freeSlot(nil)
			}
		}
		err = &poolWaitError{cause: cause}
	}
	c.pending.dec(c.pending.max)
	c.Stats.RqPendingActive.Dec()
	if err != nil {
		return nil, err
	}
	if conn := w.conn; conn != nil {
		conn.reused = true
		conn.requests++
		return conn, nil
	}
	return h.dial(ctx, deadline)
}

// dial opens a connection in a slot already counted in p.total and the
// cluster's connection count.
func (h *Host) dial(ctx context.Context, deadline time.Time) (*Conn, error) {
	nc, err := h.dialNet(ctx, deadline, h.tls.h1)
	if err != nil {
		h.freeSlot(nil)
		return nil, err
	}
	return h.newConn(nc), nil
}

// newConn wraps a dialled connection for the HTTP/1 pool.
func (h *Host) newConn(nc net.Conn) *Conn {
	conn := &Conn{host: h, nc: nc, cc: h.cluster.codec.NewClientConn(nc), requests: 1}
	conn.peekFn = conn.peek
	sc, ok := nc.(syscall.Conn)
	if tc, isTLS := nc.(*tls.Conn); isTLS {
		sc, ok = tc.NetConn().(syscall.Conn)
	}
	if ok {
		if rc, err := sc.SyscallConn(); err == nil {
			conn.rc = rc
		}
	}
	return conn
}

// adoptDialled puts a connection dialled by the multiplexed pool of an
// auto cluster, which negotiated HTTP/1.1, into the HTTP/1 pool as idle;
// its slot in the cluster's connection count moves with it.
func (h *Host) adoptDialled(nc net.Conn) {
	conn := h.newConn(nc)
	conn.requests = 0
	p := &h.pool
	p.mu.Lock()
	p.total++
	if len(p.waiters) > 0 {
		w := p.popWaiter()
		p.mu.Unlock()
		w.conn = conn
		w.ch <- struct{}{}
		return
	}
	conn.state = connIdle
	conn.idleSince = monoNow()
	p.idle = append(p.idle, conn)
	p.mu.Unlock()
}

// dialNet opens a network connection to the host, over TLS when tlsConf is
// set, counting it in the connection stats. On failure the counts are
// undone and the error is a *ConnectError or a poolWaitError; the caller
// frees the pool slot.
func (h *Host) dialNet(ctx context.Context, deadline time.Time, tlsConf *tls.Config) (net.Conn, error) {
	c := h.cluster
	c.Stats.CxTotal.Inc()
	c.Stats.CxActive.Inc()
	h.Stats.CxTotal.Add(1)
	h.Stats.CxActive.Add(1)
	d := &c.dialer
	if h.network == "unix" {
		d = &c.unixDialer
	}
	if !deadline.IsZero() {
		local := *d
		local.Deadline = deadline
		d = &local
	}
	if ctx == nil {
		ctx = context.Background()
	} else if cd, ok := ctx.Deadline(); ok && (deadline.IsZero() || cd.Before(deadline)) {
		deadline = cd
	}
	start := time.Now()
	addr := h.dialAddr
	if p := h.dialTo.Load(); p != nil {
		addr = *p
	}
	nc, err := d.DialContext(ctx, h.network, addr)
	if err == nil && tlsConf != nil {
		// The handshake counts against the connect timeout, as in Envoy.
		hsDeadline := start.Add(c.dialer.Timeout)
		if !deadline.IsZero() && deadline.Before(hsDeadline) {
			hsDeadline = deadline
		}
		tc := tls.Client(nc, tlsConf)
		nc.SetDeadline(hsDeadline)
		if err = tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			c.Stats.CxDestroy.Inc()
			c.Stats.CxActive.Dec()
			h.Stats.CxActive.Add(-1)
			c.Stats.CxConnectFail.Inc()
			h.Stats.CxConnectFail.Add(1)
			h.OutlierLocalFailure(isNetTimeout(err))
			return nil, &ConnectError{Addr: h.addr, Timeout: isNetTimeout(err), Err: fmt.Errorf("tls handshake: %w", err)}
		}
		nc.SetDeadline(time.Time{})
		nc = tc
	}
	if err != nil {
		c.Stats.CxDestroy.Inc()
		c.Stats.CxActive.Dec()
		h.Stats.CxActive.Add(-1)
		var ne net.Error
		timeout := errors.As(err, &ne) && ne.Timeout()
		// The request's own cancellation or deadline (when it came before
		// the connect timeout) is not an upstream failure.
		if cause := context.Cause(ctx); cause != nil {
			return nil, &poolWaitError{cause: cause}
		}
		if timeout && !deadline.IsZero() && deadline.Before(start.Add(c.dialer.Timeout)) {
			return nil, &poolWaitError{cause: context.DeadlineExceeded}
		}
		c.Stats.CxConnectFail.Inc()
		h.Stats.CxConnectFail.Add(1)
		if timeout {
			c.Stats.CxConnectTimeout.Inc()
		}
		h.OutlierLocalFailure(timeout)
		return nil, &ConnectError{Addr: h.addr, Timeout: timeout, Err: err}
	}
	h.outlierConnected()
	return nc, nil
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// peekAfterIdle is how long a connection must have been idle before
// Acquire checks that its peer has not closed it.
const peekAfterIdle = 100 * time.Millisecond

// peerClosed reports whether an idle connection was closed by the peer or
// has unexpected bytes to read: a non-blocking MSG_PEEK, no goroutine.
func (conn *Conn) peerClosed() bool {
	if conn.rc == nil {
		return false
	}
	conn.peekDead = true
	if err := conn.rc.Control(conn.peekFn); err != nil {
		return true
	}
	return conn.peekDead
}

// Release returns the connection after a request. With reusable (the
// response was read to its end and the codec says the connection can carry
// another request) it goes to the oldest waiting request or the idle stack,
// unless the cluster was removed, max_requests_per_connection is reached or
// the host already keeps its maximum of idle connections; otherwise it is
// closed. Release must be called exactly once per Acquire; the Conn must
// not be used afterwards.
func (conn *Conn) Release(reusable bool) {
	if conn.mux != nil {
		conn.releaseStream()
		return
	}
	h := conn.host
	c := h.cluster
	if reusable && c.maxRequestsPerConn > 0 && conn.requests >= c.maxRequestsPerConn {
		reusable = false
		c.Stats.CxMaxRequests.Inc()
	}
	p := &h.pool
	p.mu.Lock()
	if conn.state != connInUse {
		p.mu.Unlock()
		return
	}
	if reusable {
		if len(p.waiters) > 0 {
			w := p.popWaiter()
			p.mu.Unlock()
			w.conn = conn
			w.ch <- struct{}{}
			return
		}
		if !c.retired.Load() {
			if len(p.idle) < c.maxIdle && !h.removed.Load() {
				conn.state = connIdle
				conn.idleSince = monoNow()
				p.idle = append(p.idle, conn)
				p.mu.Unlock()
				return
			}
		} else if next := h.successor(); next != nil {
			p.mu.Unlock()
			if h.handOver(conn, next) {
				return
			}
			h.discard(conn)
			return
		}
	}
	p.mu.Unlock()
	h.discard(conn)
}

// handOver moves an owned, reusable connection of a retired cluster to the
// host that replaced h.
func (h *Host) handOver(conn *Conn, next *Host) bool {
	if !next.adopt(conn) {
		return false
	}
	if next.Stats != h.Stats {
		h.Stats.CxActive.Add(-1)
		next.Stats.CxActive.Add(1)
	}
	h.freeSlot(nil)
	return true
}

// adopt takes over a connection from the host this one replaced.
func (h *Host) adopt(conn *Conn) bool {
	c := h.cluster
	p := &h.pool
	p.mu.Lock()
	if c.retired.Load() || h.removed.Load() || (c.maxRequestsPerConn > 0 && conn.requests >= c.maxRequestsPerConn) {
		p.mu.Unlock()
		return false
	}
	if len(p.waiters) > 0 {
		p.total++
		c.cx.forceInc()
		w := p.popWaiter()
		conn.host = h
		conn.state = connInUse
		p.mu.Unlock()
		w.conn = conn
		w.ch <- struct{}{}
		return true
	}
	if len(p.idle) >= c.maxIdle {
		p.mu.Unlock()
		return false
	}
	p.total++
	c.cx.forceInc()
	conn.host = h
	conn.state = connIdle
	conn.idleSince = monoNow()
	p.idle = append(p.idle, conn)
	p.mu.Unlock()
	return true
}

// discard closes an owned connection and frees its slot.
func (h *Host) discard(conn *Conn) {
	c := h.cluster
	_ = conn.cc.Close()
	c.Stats.CxDestroy.Inc()
	c.Stats.CxActive.Dec()
	h.Stats.CxActive.Add(-1)
	h.freeSlot(conn)
}

// freeSlot gives a connection slot of this host to the oldest waiting
// request (which then dials), or returns it. conn, if not nil, is marked
// closed.
func (h *Host) freeSlot(conn *Conn) {
	c := h.cluster
	p := &h.pool
	p.mu.Lock()
	if conn != nil {
		conn.state = connClosed
	}
	if len(p.waiters) > 0 {
		w := p.popWaiter()
		p.mu.Unlock()
		w.dial = true
		w.ch <- struct{}{}
		return
	}
	p.total--
	p.mu.Unlock()
	c.cx.dec(c.cx.max)
}

// drainIdle closes the idle connections, or hands them to the successor
// host when handOver is set and there is one.
func (h *Host) drainIdle(handOver bool) {
	p := &h.pool
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	for _, conn := range idle {
		conn.state = connInUse
	}
	p.mu.Unlock()
	for _, conn := range idle {
		if handOver {
			if next := h.successor(); next != nil && h.handOver(conn, next) {
				continue
			}
		}
		h.discard(conn)
	}
}

// reapBatch bounds the connections one reaper pass closes per host.
const reapBatch = 32

// reapIdle closes idle connections older than the idle timeout, oldest
// first, at most reapBatch of them.
func (h *Host) reapIdle(now int64) {
	c := h.cluster
	if c.idleTimeout <= 0 {
		return
	}
	var batch [reapBatch]*Conn
	p := &h.pool
	p.mu.Lock()
	k := 0
	for k < len(p.idle) && k < reapBatch && now-p.idle[k].idleSince >= c.idleTimeout {
		batch[k] = p.idle[k]
		batch[k].state = connInUse
		k++
	}
	if k > 0 {
		n := copy(p.idle, p.idle[k:])
		clear(p.idle[n:])
		p.idle = p.idle[:n]
	}
	p.mu.Unlock()
	for _, conn := range batch[:k] {
		c.Stats.CxIdleTimeout.Inc()
		h.discard(conn)
	}
}
