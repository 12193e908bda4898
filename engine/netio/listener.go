// Package netio is the NET/IO layer: listening sockets, the accept loop,
// connection limits and tracking, filter-chain matching on connection
// properties, and graceful drain.
package netio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// ServeFunc serves one accepted connection and returns when it is done.
// Cancelling ctx asks it to drain: finish what is in flight, then close.
type ServeFunc func(ctx context.Context, c net.Conn, info *stream.ConnInfo)

var connIDs atomic.Uint64

// Listener accepts connections on one address and hands each to a
// ServeFunc on its own goroutine.
type Listener struct {
	name  string
	ln    net.Listener
	serve ServeFunc
	log   *slog.Logger

	maxConns atomic.Int64
	active   atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}

	drainCtx context.Context
	drain    context.CancelFunc
	closed   atomic.Bool
	wg       sync.WaitGroup
	done     chan struct{}

	cxTotal, cxOverflow, cxDestroy *observe.Counter
	cxActive                       *observe.Gauge
}

// Listen binds addr. The listener does not accept until Start.
func Listen(name, addr string, serve ServeFunc, stats *observe.Store, log *slog.Logger) (*Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("netio: listener %q: %w", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sc := stats.Scope("listener."+name+".", "listener_", observe.Label{Name: "envoy_listener_address", Value: name})
	return &Listener{
		name: name, ln: ln, serve: serve, log: log,
		conns:    map[net.Conn]struct{}{},
		drainCtx: ctx, drain: cancel,
		done:    make(chan struct{}),
		cxTotal: sc.Counter("downstream_cx_total"), cxOverflow: sc.Counter("downstream_cx_overflow"),
		cxDestroy: sc.Counter("downstream_cx_destroy"), cxActive: sc.Gauge("downstream_cx_active"),
	}, nil
}

// Name returns the listener's name.
func (l *Listener) Name() string { return l.name }

// Addr returns the bound address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// SetMaxConnections caps concurrent connections (0: no cap).
func (l *Listener) SetMaxConnections(n int) { l.maxConns.Store(int64(n)) }

// ActiveConnections returns the number of open connections.
func (l *Listener) ActiveConnections() int64 { return l.active.Load() }

// Start runs the accept loop in the background.
func (l *Listener) Start() {
	go l.acceptLoop()
}

func (l *Listener) acceptLoop() {
	defer close(l.done)
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and go on rather
			// than spin or give up.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			l.log.Warn("accept failed", "listener", l.name, "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		l.cxTotal.Inc()
		if max := l.maxConns.Load(); max > 0 && l.active.Load() >= max {
			l.cxOverflow.Inc()
			c.Close()
			continue
		}
		l.track(c, true)
		l.wg.Add(1)
		go l.handle(c)
	}
}

func (l *Listener) track(c net.Conn, add bool) {
	l.mu.Lock()
	if add {
		l.conns[c] = struct{}{}
		l.active.Add(1)
		l.cxActive.Inc()
	} else {
		delete(l.conns, c)
		l.active.Add(-1)
		l.cxActive.Dec()
		l.cxDestroy.Inc()
	}
	l.mu.Unlock()
}

func (l *Listener) handle(c net.Conn) {
	defer l.wg.Done()
	defer l.track(c, false)
	defer c.Close()
	defer func() {
		if r := recover(); r != nil {
			l.log.Error("connection handler panicked", "listener", l.name, "panic", fmt.Sprint(r))
		}
	}()
	local := addrPort(c.LocalAddr())
	info := &stream.ConnInfo{ID: connIDs.Add(1), Remote: addrPort(c.RemoteAddr()), Local: local, Accepted: local}
	l.serve(l.drainCtx, c, info)
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// Drain stops accepting and asks every connection to finish its stream in
// flight and close.
func (l *Listener) Drain() {
	if l.closed.CompareAndSwap(false, true) {
		l.ln.Close()
	}
	l.drain()
}

// DrainConnections asks every connection, and every one accepted from now
// on, to finish its stream in flight and close, while the listener keeps
// accepting (Envoy's graceful drain period before listeners stop).
func (l *Listener) DrainConnections() { l.drain() }

// Draining reports whether Drain was called.
func (l *Listener) Draining() bool { return l.closed.Load() }

// Wait blocks until every connection has closed or ctx ends; then it
// closes whatever is left. It reports whether all closed by themselves.
func (l *Listener) Wait(ctx context.Context) bool {
	all := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(all)
	}()
	select {
	case <-all:
		return true
	case <-ctx.Done():
	}
	l.mu.Lock()
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	<-all
	return false
}

// Close drains and closes every connection at once.
func (l *Listener) Close() {
	l.Drain()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l.Wait(ctx)
	<-l.done
}
