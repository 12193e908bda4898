package upstream

import (
	"sync/atomic"
	"time"
)

const (
	alpnUnknown = iota
	alpnHTTP1
	alpnHTTP2
)

// Host is one endpoint of a cluster with its connection pool.
type Host struct {
	cluster *Cluster
	addr    string
	// hostname is the name a DNS cluster's host was resolved from.
	hostname string
	// network and dialAddr are what is dialled: "tcp" and addr, or
	// "unix" and the socket path of a "unix:" address.
	network, dialAddr string
	// dialTo, when set, replaces dialAddr: a LOGICAL_DNS host's latest
	// address (addr stays the endpoint's "name:port").
	dialTo atomic.Pointer[string]
	// tls is the TLS the host's connections originate (the cluster's or a
	// transport socket match's; its fields are nil for plaintext).
	tls      *tlsSet
	weight   uint32
	priority uint32
	healthy  bool

	// Stats are the host's counters for /clusters.
	Stats *HostStats

	pool pool
	mux  muxPool
	// alpn is what an auto cluster's host negotiated: alpnUnknown until the
	// first TLS connection, then alpnHTTP1 or alpnHTTP2.
	alpn atomic.Int32
	// next is the host with the same address in the cluster that replaced
	// this one, set when this host's cluster is retired.
	next atomic.Pointer[Host]
	// used is set when an ORIGINAL_DST host is picked and cleared by the
	// cleanup pass (origdst.go).
	used atomic.Bool
	// removed is set when the cleanup pass drops an ORIGINAL_DST host or
	// a DNS answer drops a STRICT_DNS host: a request that picked it just
	// before may still dial, and its connection is closed at release
	// instead of pooled where no pass would ever look again.
	removed atomic.Bool
}

// Address is the host's "host:port": for a STRICT_DNS host the resolved
// "ip:port", for a LOGICAL_DNS host the endpoint's "name:port" (see
// DialAddress).
func (h *Host) Address() string { return h.addr }

// Hostname is the name a STRICT_DNS or LOGICAL_DNS host was resolved
// from; "" for other hosts.
func (h *Host) Hostname() string { return h.hostname }

// DialAddress is where new connections go: Address, or for a LOGICAL_DNS
// host the first address of the latest answer.
func (h *Host) DialAddress() string {
	if p := h.dialTo.Load(); p != nil {
		return *p
	}
	return h.dialAddr
}

// Weight is the load balancing weight (at least 1).
func (h *Host) Weight() uint32 { return h.weight }

// Priority is the endpoint's priority level (0 is the most preferred).
func (h *Host) Priority() uint32 { return h.priority }

// Healthy reports the endpoint's configured health.
func (h *Host) Healthy() bool { return h.healthy }

// Cluster returns the host's cluster.
func (h *Host) Cluster() *Cluster { return h.cluster }

// ActiveRequests is the number of requests in flight to this host, as
// counted by RequestStarted and RequestDone.
func (h *Host) ActiveRequests() int64 { return h.Stats.RqActive.Load() }

// RequestStarted counts a request sent to this host (rq_total, rq_active).
func (h *Host) RequestStarted() {
	h.Stats.RqTotal.Add(1)
	h.Stats.RqActive.Add(1)
}

// RequestDone ends a request counted by RequestStarted.
func (h *Host) RequestDone() { h.Stats.RqActive.Add(-1) }

// IdleConns is the number of idle pooled connections.
func (h *Host) IdleConns() int {
	h.pool.mu.Lock()
	defer h.pool.mu.Unlock()
	return len(h.pool.idle)
}

// successor follows the replacement chain to a live host, or nil.
func (h *Host) successor() *Host {
	n := h.next.Load()
	for i := 0; n != nil && i < 16; i++ {
		if !n.cluster.retired.Load() {
			return n
		}
		n = n.next.Load()
	}
	return nil
}

// HostSnapshot is a point-in-time copy of a host's counters.
type HostSnapshot struct {
	CxActive      int64
	CxTotal       uint64
	CxConnectFail uint64
	RqActive      int64
	RqTotal       uint64
	RqError       uint64
	RqSuccess     uint64
	RqTimeout     uint64
}

// Snapshot copies the host's counters (for /clusters).
func (h *Host) Snapshot() HostSnapshot {
	s := h.Stats
	return HostSnapshot{
		CxActive:      s.CxActive.Load(),
		CxTotal:       s.CxTotal.Load(),
		CxConnectFail: s.CxConnectFail.Load(),
		RqActive:      s.RqActive.Load(),
		RqTotal:       s.RqTotal.Load(),
		RqError:       s.RqError.Load(),
		RqSuccess:     s.RqSuccess.Load(),
		RqTimeout:     s.RqTimeout.Load(),
	}
}

// AcquireFor is AcquireDeadline for a request that arrived over HTTP/2
// (downstreamHTTP2) or not: it takes an HTTP/1 connection or a stream of
// an HTTP/2 connection as the cluster's protocol says ("downstream": the
// request's own; "auto": what the host negotiated with ALPN).
func (h *Host) AcquireFor(deadline time.Time, downstreamHTTP2 bool) (*Conn, error) {
	c := h.cluster
	useMux := false
	switch c.proto {
	case protoHTTP2:
		useMux = true
	case protoDownstream:
		useMux = downstreamHTTP2
	case protoAuto:
		useMux = h.alpn.Load() != alpnHTTP1
	}
	if !useMux {
		return h.acquire(nil, deadline)
	}
	conn, err := h.acquireMux(deadline)
	if err == errUseHTTP1 {
		return h.acquire(nil, deadline)
	}
	return conn, err
}
