package upstream

// Pooled hosts of an ORIGINAL_DST cluster for HTTP. Envoy's original_dst
// cluster makes a host for each destination it is asked for and keeps it,
// with its connection pool, while it is used: a host no request picked for
// a whole cleanup interval is removed and its idle connections closed.
// Here the hosts live in a map by destination, behind a read-write lock;
// only ORIGINAL_DST clusters have one, so an ordinary cluster's pick never
// looks at it. A removed host may still have connections (a request that
// picked it just before, an HTTP/2 connection with streams): it is kept
// on a draining list and its connections closed as they become idle.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCleanupInterval is how long an ORIGINAL_DST host may go unused
// before it is removed (Envoy's cleanup_interval default).
const DefaultCleanupInterval = 5 * time.Second

// ErrNotOriginalDst is OriginalDstPooled's error for a cluster that is
// not of type ORIGINAL_DST.
var ErrNotOriginalDst = errors.New("upstream: not an ORIGINAL_DST cluster")

// origDst is an ORIGINAL_DST cluster's hosts made on demand.
type origDst struct {
	cleanup int64 // ns

	mu       sync.RWMutex
	hosts    map[netip.AddrPort]*Host
	draining []*Host // removed, with connections left
	swept    int64   // monoNow of the last cleanup pass
	n        atomic.Int64
}

func newOrigDst(cleanup time.Duration) *origDst {
	if cleanup <= 0 {
		cleanup = DefaultCleanupInterval
	}
	return &origDst{cleanup: int64(cleanup), hosts: make(map[netip.AddrPort]*Host), swept: monoNow()}
}

// OriginalDstPooled returns the cluster's pooled host for dst, the
// original destination of a request's downstream connection, making it on
// first use. Its connections are pooled and reused by later requests to
// the same destination, count against the cluster's circuit breakers and
// stats, and close when idle for the idle timeout or when the host goes
// unused for the cleanup interval. The caller refuses destinations that
// are the proxy itself.
func (c *Cluster) OriginalDstPooled(dst netip.AddrPort) (*Host, error) {
	od := c.od
	if od == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotOriginalDst, c.name)
	}
	if !dst.IsValid() || dst.Port() == 0 || dst.Addr().IsUnspecified() {
		return nil, fmt.Errorf("upstream: cluster %q: no usable original destination (%v)", c.name, dst)
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	od.mu.RLock()
	h := od.hosts[dst]
	if h != nil {
		h.used.Store(true)
	}
	od.mu.RUnlock()
	if h != nil {
		return h, nil
	}
	od.mu.Lock()
	defer od.mu.Unlock()
	if h = od.hosts[dst]; h == nil {
		addr := dst.String()
		h = &Host{cluster: c, addr: addr, network: "tcp", dialAddr: addr, tls: &c.tls, weight: 1, healthy: true, Stats: new(HostStats)}
		if c.proto == protoAuto && h.tls.h2 == nil {
			h.alpn.Store(alpnHTTP1)
		}
		od.hosts[dst] = h
		n := od.n.Add(1)
		c.Stats.MembershipTotal.Set(n) // an ORIGINAL_DST cluster lists no endpoints
		c.Stats.MembershipHealthy.Set(n)
	}
	h.used.Store(true)
	return h, nil
}

// OriginalDstHostList returns the pooled hosts an ORIGINAL_DST cluster
// made on demand, sorted by address (for /clusters); nil for other
// clusters.
func (c *Cluster) OriginalDstHostList() []*Host {
	od := c.od
	if od == nil {
		return nil
	}
	od.mu.RLock()
	hosts := make([]*Host, 0, len(od.hosts))
	for _, h := range od.hosts {
		hosts = append(hosts, h)
	}
	od.mu.RUnlock()
	slices.SortFunc(hosts, func(a, b *Host) int { return strings.Compare(a.addr, b.addr) })
	return hosts
}

// OriginalDstHosts is the number of pooled ORIGINAL_DST hosts.
func (c *Cluster) OriginalDstHosts() int {
	if c.od == nil {
		return 0
	}
	return int(c.od.n.Load())
}

// idleHost reports whether h has no connection but idle ones and no
// request waiting.
func idleHost(h *Host) bool {
	p := &h.pool
	p.mu.Lock()
	idle := p.total == len(p.idle) && len(p.waiters) == 0
	p.mu.Unlock()
	if !idle {
		return false
	}
	m := &h.mux
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mc := range m.conns {
		if mc.mc.Active() > 0 {
			return false
		}
	}
	return true
}

// noConns reports whether h has no connection at all.
func noConns(h *Host) bool {
	h.pool.mu.Lock()
	n := h.pool.total
	h.pool.mu.Unlock()
	h.mux.mu.Lock()
	n += len(h.mux.conns)
	h.mux.mu.Unlock()
	return n == 0
}

// sweep is the reaper's pass over the cluster's on-demand hosts: idle
// connections past the idle timeout are closed; once per cleanup interval
// a host that no request picked since the last pass, and that has no busy
// connection, is removed and its idle connections closed.
func (c *Cluster) sweepOriginalDst(now int64) {
	od := c.od
	od.mu.RLock()
	hosts := od.allLocked()
	due := now-od.swept >= od.cleanup
	od.mu.RUnlock()
	for _, h := range hosts {
		h.reapIdle(now)
		h.reapMux(now)
	}
	od.mu.Lock()
	if due {
		od.swept = now
		for dst, h := range od.hosts {
			if h.used.Swap(false) || !idleHost(h) {
				continue
			}
			h.removed.Store(true)
			delete(od.hosts, dst)
			od.draining = append(od.draining, h)
		}
		n := int64(len(od.hosts))
		od.n.Store(n)
		c.Stats.MembershipTotal.Set(n) // an ORIGINAL_DST cluster lists no endpoints
		c.Stats.MembershipHealthy.Set(n)
	}
	draining := od.draining
	od.mu.Unlock()
	if len(draining) == 0 {
		return
	}
	for _, h := range draining {
		h.drainIdle(false)
		h.drainMux(true)
	}
	od.mu.Lock()
	k := 0
	for _, h := range od.draining {
		if !noConns(h) {
			od.draining[k] = h
			k++
		}
	}
	clear(od.draining[k:])
	od.draining = od.draining[:k]
	od.mu.Unlock()
}

// allLocked returns the pooled hosts and the draining ones; od.mu held.
func (od *origDst) allLocked() []*Host {
	hosts := make([]*Host, 0, len(od.hosts)+len(od.draining))
	for _, h := range od.hosts {
		hosts = append(hosts, h)
	}
	return append(hosts, od.draining...)
}

// drainOriginalDst closes the idle connections of every on-demand host
// (the cluster is retired or its idle connections are being closed).
func (c *Cluster) drainOriginalDst(idleOnlyMux bool) {
	od := c.od
	od.mu.RLock()
	hosts := od.allLocked()
	od.mu.RUnlock()
	for _, h := range hosts {
		h.drainIdle(false)
		h.drainMux(idleOnlyMux)
	}
}
