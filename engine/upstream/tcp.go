package upstream

// Raw upstream connections for the TCP proxy. They are not pooled: each
// belongs to one downstream connection for its whole life, as in Envoy's
// tcp_proxy. They count against the cluster's max_connections breaker like
// pooled connections but never wait for a slot: at the limit the caller is
// refused at once (upstream_cx_overflow) and closes its downstream
// connection, which is what Envoy does. Plaintext connections are the
// dialer's *net.TCPConn, so the proxy's io.Copy can splice.

import (
	"context"
	"net"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/observe"
)

// ErrTCPOverflow is DialTCP's error when the cluster is at
// max_connections; it also matches ErrConnectionOverflow.
var ErrTCPOverflow error = tcpOverflow{}

type tcpOverflow struct{}

func (tcpOverflow) Error() string {
	return "upstream: connection overflow: max_connections reached"
}

func (tcpOverflow) Is(target error) bool { return target == ErrConnectionOverflow }

// TCPConn is an upstream connection owned by one proxied downstream
// connection. Close it exactly once when done (further calls are no-ops).
type TCPConn struct {
	// Conn is the connection: a *net.TCPConn, or a *tls.Conn when the
	// cluster originates TLS.
	net.Conn
	host   *Host
	closed atomic.Bool
}

// Host is the host the connection goes to.
func (t *TCPConn) Host() *Host { return t.host }

// Close closes the connection and gives its max_connections slot back.
func (t *TCPConn) Close() error {
	if !t.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := t.Conn.Close()
	c := t.host.cluster
	c.Stats.CxDestroy.Inc()
	c.Stats.CxActive.Dec()
	t.host.Stats.CxActive.Add(-1)
	c.cx.dec(c.cx.max)
	return err
}

// DialTCP opens a raw connection to the host within the cluster's connect
// timeout (ctx may cut it shorter), over TLS when the cluster originates
// it, with only the ALPN protocols its TLS context names. Errors: a
// *ConnectError (ErrConnectFailure, ErrConnectTimeout), ErrTCPOverflow at
// max_connections, or one matching ErrPoolTimeout when ctx ended first.
func (h *Host) DialTCP(ctx context.Context) (*TCPConn, error) {
	c := h.cluster
	if !c.cx.tryInc(c.cx.max) {
		c.Stats.CxOverflow.Inc()
		return nil, ErrTCPOverflow
	}
	nc, err := h.dialNet(ctx, time.Time{}, h.tls.raw)
	if err != nil {
		c.cx.dec(c.cx.max)
		return nil, err
	}
	return &TCPConn{Conn: nc, host: h}, nil
}

// TCPStats are the cluster's byte counters of raw connections (Envoy's
// upstream_cx_rx_bytes_total and upstream_cx_tx_bytes_total). Look them up
// once, at config time.
type TCPStats struct {
	RxBytes *observe.Counter // bytes received from upstream
	TxBytes *observe.Counter // bytes sent to upstream
}

// TCPStats returns the cluster's raw-connection byte counters.
func (c *Cluster) TCPStats() TCPStats {
	return TCPStats{
		RxBytes: c.Stats.scope.Counter("upstream_cx_rx_bytes_total"),
		TxBytes: c.Stats.scope.Counter("upstream_cx_tx_bytes_total"),
	}
}

// OriginalDst reports whether the cluster is of type ORIGINAL_DST: its
// host is each connection's original destination (OriginalDstHost).
func (c *Cluster) OriginalDst() bool { return c.od != nil }

// OriginalDstHost returns a host of the cluster for addr ("ip:port"),
// made for one connection: it has its own counters and no pool, so it is
// for DialTCP only, and it is not listed among the cluster's hosts.
func (c *Cluster) OriginalDstHost(addr string) *Host {
	return &Host{cluster: c, addr: addr, network: "tcp", dialAddr: addr, tls: &c.tls, weight: 1, healthy: true, Stats: new(HostStats)}
}
