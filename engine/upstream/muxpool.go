package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/engine/stream"
)

// Multiplexed (HTTP/2) pool of a host. A request takes a stream, not a
// connection: it goes to the first open connection with room for another
// stream; when every connection is at its stream limit the pool dials one
// more (within the cluster's max_connections), and requests beyond what
// the connections being dialled will hold wait for room. Waiters are woken
// by broadcast (a stream freed, a connection opened or gone) and look
// again, so no hand-over bookkeeping can leak a slot.

// muxPool holds the host's multiplexed connections.
type muxPool struct {
	mu      sync.Mutex
	conns   []*muxConn    // open, accepting new streams, in dial order
	all     int           // connections of this host, dialling and draining ones included
	dialing int           // connections being dialled
	waiting int           // requests waiting for room
	wake    chan struct{} // closed and replaced to wake every waiter
}

// muxConn is one multiplexed connection of the pool.
type muxConn struct {
	host      *Host
	mc        stream.MuxConn
	nc        net.Conn
	streams   int   // streams opened on it (max_requests_per_connection); under mu
	idleSince int64 // monoNow() when its last stream ended; under mu
	gone      bool  // removed from conns; under mu
}

// expectedStreams is how many requests a connection being dialled is
// assumed to take, so a burst of requests opens one connection, not one
// each (the peer's real limit is known only after its SETTINGS).
const expectedStreams = 100

// broadcast wakes every waiter; p.mu is held.
func (p *muxPool) broadcast() {
	if p.wake != nil {
		close(p.wake)
		p.wake = nil
	}
}

// waitChan is the channel the next broadcast closes; p.mu is held.
func (p *muxPool) waitChan() chan struct{} {
	if p.wake == nil {
		p.wake = make(chan struct{})
	}
	return p.wake
}

// remove takes conn out of the open list; p.mu is held.
func (p *muxPool) remove(mc *muxConn) {
	if mc.gone {
		return
	}
	mc.gone = true
	for i, x := range p.conns {
		if x == mc {
			copy(p.conns[i:], p.conns[i+1:])
			p.conns[len(p.conns)-1] = nil
			p.conns = p.conns[:len(p.conns)-1]
			break
		}
	}
}

var streamConns = sync.Pool{New: func() any { return new(Conn) }}

// acquireMux returns a stream on a multiplexed connection to the host.
// Errors are those of Acquire.
func (h *Host) acquireMux(deadline time.Time) (*Conn, error) {
	c := h.cluster
	p := &h.mux
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	counted := false // counted in the cluster's pending requests
	defer func() {
		if counted {
			c.pending.dec(c.pending.max)
			c.Stats.RqPendingActive.Dec()
		}
	}()
	for {
		p.mu.Lock()
		for i := 0; i < len(p.conns); i++ {
			mc := p.conns[i]
			if !mc.mc.Usable() {
				p.remove(mc)
				i--
				continue
			}
			if mc.mc.Capacity() <= 0 {
				continue
			}
			cc, err := mc.mc.NewStream()
			if err != nil {
				if errors.Is(err, stream.ErrConnClosed) {
					p.remove(mc)
					i--
				}
				continue
			}
			mc.streams++
			n := mc.streams
			reused := n > 1
			last := c.maxRequestsPerConn > 0 && n >= c.maxRequestsPerConn
			if last {
				p.remove(mc)
			}
			p.mu.Unlock()
			if last {
				// Its last stream: no more on this connection; it goes
				// away when that stream ends.
				c.Stats.CxMaxRequests.Inc()
				mc.mc.Shutdown()
			}
			conn := streamConns.Get().(*Conn)
			*conn = Conn{host: h, nc: mc.nc, cc: cc, mux: mc, reused: reused, requests: n}
			return conn, nil
		}
		// No room. Dial unless the connections being dialled will take the
		// requests already waiting.
		if p.dialing == 0 || p.waiting >= p.dialing*expectedStreams {
			if c.cx.tryInc(c.cx.max) {
				p.dialing++
				p.all++
				p.mu.Unlock()
				if err := h.dialMux(deadline); err != nil {
					return nil, err
				}
				continue
			}
			c.Stats.CxOverflow.Inc()
			if p.all == 0 {
				// A host with no connection may always open one.
				c.cx.forceInc()
				p.dialing++
				p.all++
				p.mu.Unlock()
				if err := h.dialMux(deadline); err != nil {
					return nil, err
				}
				continue
			}
		}
		// Wait for room.
		if !counted {
			if !c.pending.tryInc(c.pending.max) {
				p.mu.Unlock()
				c.Stats.RqPendingOverflow.Inc()
				return nil, errOverflow
			}
			counted = true
			c.Stats.RqPendingTotal.Inc()
			c.Stats.RqPendingActive.Inc()
		}
		p.waiting++
		wake := p.waitChan()
		p.mu.Unlock()
		var expired <-chan time.Time
		if !deadline.IsZero() {
			if timer == nil {
				timer = time.NewTimer(time.Until(deadline))
			}
			expired = timer.C
		}
		select {
		case <-wake:
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
		case <-expired:
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
			return nil, &poolWaitError{cause: context.DeadlineExceeded}
		}
	}
}

// dialMux opens a multiplexed connection in a slot already counted in
// p.dialing, p.all and the cluster's connection count, and adds it to the
// pool.
func (h *Host) dialMux(deadline time.Time) error {
	c := h.cluster
	p := &h.mux
	nc, err := h.dialNet(nil, deadline, h.tls.h2)
	if err != nil {
		h.muxGone(nil, true, false)
		return err
	}
	if c.proto == protoAuto {
		if tc, ok := nc.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol != "h2" {
			// The upstream chose HTTP/1.1: the connection (and its slot)
			// moves to the HTTP/1 pool, and so do later requests.
			h.alpn.Store(alpnHTTP1)
			p.mu.Lock()
			p.dialing--
			p.all--
			p.broadcast()
			p.mu.Unlock()
			h.adoptDialled(nc)
			return errUseHTTP1
		}
		h.alpn.Store(alpnHTTP2)
	}
	mc, err := c.mux.NewMuxConn(nc, &c.clientOpts)
	if err != nil {
		nc.Close()
		h.muxGone(nil, true, true)
		return &ConnectError{Addr: h.addr, Err: err}
	}
	// Streams are handed out once the peer's SETTINGS tell its stream
	// limit: one round trip, bounded by the connect timeout.
	d := c.dialer.Timeout
	if !deadline.IsZero() {
		d = min(d, time.Until(deadline))
	}
	wait := time.NewTimer(d)
	select {
	case <-mc.Ready():
		wait.Stop()
	case <-wait.C:
		mc.Close()
		<-mc.Done()
		h.muxGone(nil, true, true)
		return &ConnectError{Addr: h.addr, Timeout: true, Err: errors.New("http2: no SETTINGS from the upstream")}
	}
	select {
	case <-mc.Done():
		h.muxGone(nil, true, true)
		return &ConnectError{Addr: h.addr, Err: errors.New("http2: connection closed before its SETTINGS")}
	default:
	}
	conn := &muxConn{host: h, mc: mc, nc: nc, idleSince: monoNow()}
	p.mu.Lock()
	p.dialing--
	p.conns = append(p.conns, conn)
	p.broadcast()
	p.mu.Unlock()
	go h.watchMux(conn)
	return nil
}

// errUseHTTP1 tells AcquireFor that an auto cluster's host negotiated
// HTTP/1.1: the request takes the HTTP/1 pool, where the new connection is.
var errUseHTTP1 = errors.New("upstream: host negotiated http/1.1")

// watchMux releases a connection's slot once it is closed.
func (h *Host) watchMux(mc *muxConn) {
	<-mc.mc.Done()
	h.muxGone(mc, false, true)
}

// muxGone accounts for a connection that closed (mc) or failed to dial
// (dialling); counted says whether it was counted as an active connection
// (dialNet undoes its own counts when the dial fails).
func (h *Host) muxGone(mc *muxConn, dialling, counted bool) {
	c := h.cluster
	p := &h.mux
	p.mu.Lock()
	if dialling {
		p.dialing--
	} else {
		p.remove(mc)
	}
	p.all--
	p.broadcast()
	p.mu.Unlock()
	c.cx.dec(c.cx.max)
	if counted {
		c.Stats.CxDestroy.Inc()
		c.Stats.CxActive.Dec()
		h.Stats.CxActive.Add(-1)
	}
}

// releaseStream ends a stream taken by acquireMux.
func (conn *Conn) releaseStream() {
	mc := conn.mux
	h := mc.host
	p := &h.mux
	_ = conn.cc.Close()
	p.mu.Lock()
	if mc.mc.Active() == 0 {
		mc.idleSince = monoNow()
	}
	if p.waiting > 0 {
		p.broadcast()
	}
	retired := (h.cluster.retired.Load() || h.removed.Load()) && !mc.gone
	if retired {
		p.remove(mc)
	}
	p.mu.Unlock()
	if retired {
		mc.mc.Shutdown()
	}
	*conn = Conn{}
	streamConns.Put(conn)
}

// drainMux stops new streams on every connection of the host (GOAWAY);
// streams in flight finish. With idleOnly only connections with no stream
// are shut down.
func (h *Host) drainMux(idleOnly bool) {
	p := &h.mux
	p.mu.Lock()
	var shut []*muxConn
	for i := 0; i < len(p.conns); i++ {
		mc := p.conns[i]
		if idleOnly && mc.mc.Active() > 0 {
			continue
		}
		shut = append(shut, mc)
		p.remove(mc)
		i--
	}
	p.mu.Unlock()
	for _, mc := range shut {
		mc.mc.Shutdown()
	}
}

// reapMux shuts down connections with no stream for the idle timeout.
func (h *Host) reapMux(now int64) {
	c := h.cluster
	if c.idleTimeout <= 0 {
		return
	}
	p := &h.mux
	p.mu.Lock()
	var shut []*muxConn
	for i := 0; i < len(p.conns); i++ {
		mc := p.conns[i]
		if mc.mc.Active() == 0 && now-mc.idleSince >= c.idleTimeout {
			shut = append(shut, mc)
			p.remove(mc)
			i--
		}
	}
	p.mu.Unlock()
	for _, mc := range shut {
		c.Stats.CxIdleTimeout.Inc()
		mc.mc.Shutdown()
	}
}

// MuxConns is the number of open multiplexed connections of the host.
func (h *Host) MuxConns() int {
	h.mux.mu.Lock()
	defer h.mux.mu.Unlock()
	return len(h.mux.conns)
}
