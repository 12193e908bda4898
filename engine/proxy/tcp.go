package proxy

// The TCP proxy (Envoy's tcp_proxy network filter). Each downstream
// connection gets its own upstream connection, picked by the cluster's load
// balancer and retried on connect failure up to max_connect_attempts; then
// one goroutine per direction copies bytes. Without network filters the
// copy is socket to socket (splice(2) on Linux when both ends are plain
// TCP, a pooled buffer otherwise); with them, bytes go through pooled
// stream.Buffers and the filters (netfilter.go). A half-close is passed on
// (CloseWrite) and the connection ends when both directions have ended, or
// at once on an error, the idle timeout, the connection duration limit or
// a filter's Close.
//
// The idle timeout is one timer per connection, not read deadlines: a
// splice hides its progress until a chunk ends, so a slow trickle one way
// would look idle to the other direction. Every idle period the timer
// compares the bytes the kernel received on both sockets (TCP_INFO on
// Linux) and the bytes the copies counted with the last look: no change
// closes the connection, between one and two periods after its last byte.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/upstream"
)

// spliceChunk bounds one socket-to-socket copy: after each chunk the byte
// counters are updated.
const spliceChunk = 512 << 10

// copyBufSize is the buffer of a copy that cannot splice (TLS on a side).
const copyBufSize = 32 << 10

// ErrTCPRefused is Serve's error when the connection was closed before an
// upstream was connected: no cluster host, connect failures, overflow, or a
// network filter refused it. It wraps the cause.
var ErrTCPRefused = errors.New("proxy: tcp connection refused")

// TCPProxy is a compiled tcp_proxy filter with the network filters before
// it. It is immutable and shared by every connection of its chain.
type TCPProxy struct {
	cfg         *config.TCPProxy
	clusters    []tcpCluster
	totalWeight uint64 // 0: a single cluster
	attempts    int
	idle        time.Duration
	maxDuration time.Duration
	hashSource  bool
	filters     []netFilterSlot
	stats       *tcpStats
	accessLogs  []*observe.AccessLogger
	log         *slog.Logger
}

type tcpCluster struct {
	c      *upstream.Cluster
	weight uint64 // cumulative, for weighted splits
	bytes  upstream.TCPStats
	// attemptsExceeded and noneHealthy are cluster stats the TCP proxy
	// keeps (Envoy's upstream_cx_connect_attempts_exceeded and
	// upstream_cx_none_healthy).
	attemptsExceeded, noneHealthy *observe.Counter
}

// tcpStats are Envoy's tcp_proxy statistics, under "tcp.<stat_prefix>.".
type tcpStats struct {
	cxTotal, rxBytes, txBytes, idleTimeout, maxDuration *observe.Counter
}

func newTCPStats(s *observe.Store, prefix string) *tcpStats {
	sc := s.Scope("tcp."+prefix+".", "tcp_", observe.Label{Name: "envoy_tcp_prefix", Value: prefix})
	return &tcpStats{
		cxTotal:     sc.Counter("downstream_cx_total"),
		rxBytes:     sc.Counter("downstream_cx_rx_bytes_total"),
		txBytes:     sc.Counter("downstream_cx_tx_bytes_total"),
		idleTimeout: sc.Counter("idle_timeout"),
		maxDuration: sc.Counter("max_downstream_connection_duration"),
	}
}

// CompileTCPProxy compiles a TCP proxy against a snapshot's clusters, with
// the network filters that run before it.
func CompileTCPProxy(env *Env, cfg *config.TCPProxy, filters []*config.NetworkFilter, clusters *upstream.Set) (*TCPProxy, error) {
	p := &TCPProxy{cfg: cfg, idle: cfg.IdleTimeout, maxDuration: cfg.MaxConnectionDuration, log: env.Log}
	if cfg.StatPrefix == "" {
		return nil, errors.New("proxy: tcp_proxy: stat_prefix is required")
	}
	switch {
	case cfg.IdleTimeout < 0:
		return nil, fmt.Errorf("proxy: tcp_proxy %q: negative idle_timeout %v", cfg.StatPrefix, cfg.IdleTimeout)
	case cfg.MaxConnectionDuration < 0:
		return nil, fmt.Errorf("proxy: tcp_proxy %q: negative max_downstream_connection_duration %v", cfg.StatPrefix, cfg.MaxConnectionDuration)
	case cfg.MaxConnectAttempts < 0:
		return nil, fmt.Errorf("proxy: tcp_proxy %q: negative max_connect_attempts %d", cfg.StatPrefix, cfg.MaxConnectAttempts)
	}
	p.attempts = max(cfg.MaxConnectAttempts, 1)
	add := func(name string, weight uint64) error {
		c := clusters.Get(name)
		if c == nil {
			return fmt.Errorf("proxy: tcp_proxy %q: unknown cluster %q", cfg.StatPrefix, name)
		}
		sc := env.Stats.Scope("cluster."+name+".", "cluster_", observe.Label{Name: "envoy_cluster_name", Value: name})
		p.clusters = append(p.clusters, tcpCluster{c: c, weight: weight, bytes: c.TCPStats(),
			attemptsExceeded: sc.Counter("upstream_cx_connect_attempts_exceeded"),
			noneHealthy:      sc.Counter("upstream_cx_none_healthy")})
		return nil
	}
	switch {
	case cfg.Cluster != "" && len(cfg.WeightedClusters) > 0:
		return nil, fmt.Errorf("proxy: tcp_proxy %q: set cluster or weighted_clusters, not both", cfg.StatPrefix)
	case cfg.Cluster != "":
		if err := add(cfg.Cluster, 0); err != nil {
			return nil, err
		}
	case len(cfg.WeightedClusters) > 0:
		for i, wc := range cfg.WeightedClusters {
			if wc == nil || wc.Weight == 0 {
				continue // Envoy skips zero-weight clusters
			}
			p.totalWeight += uint64(wc.Weight)
			if err := add(wc.Name, p.totalWeight); err != nil {
				return nil, fmt.Errorf("%w (weighted_clusters[%d])", err, i)
			}
		}
		if p.totalWeight == 0 {
			return nil, fmt.Errorf("proxy: tcp_proxy %q: weighted_clusters: no cluster with a weight", cfg.StatPrefix)
		}
	default:
		return nil, fmt.Errorf("proxy: tcp_proxy %q: cluster or weighted_clusters is required", cfg.StatPrefix)
	}
	for _, hp := range cfg.HashPolicy {
		if hp.Header != "" || hp.Cookie != "" || hp.QueryParameter != "" {
			return nil, fmt.Errorf("proxy: tcp_proxy %q: hash_policy: only source_ip applies to TCP connections", cfg.StatPrefix)
		}
		p.hashSource = p.hashSource || hp.SourceIP
	}
	var err error
	if p.filters, err = compileNetworkFilters(env, filters); err != nil {
		return nil, err
	}
	p.stats = newTCPStats(env.Stats, cfg.StatPrefix)
	for _, al := range cfg.AccessLogs {
		f, err := observe.CompileFormat(al.Format)
		if err != nil {
			return nil, fmt.Errorf("proxy: tcp_proxy %q: access log %q: %w", cfg.StatPrefix, al.Path, err)
		}
		if env.AccessLog == nil {
			continue
		}
		l, err := env.AccessLog(al.Path, f)
		if err != nil {
			return nil, fmt.Errorf("proxy: tcp_proxy %q: access log: %w", cfg.StatPrefix, err)
		}
		p.accessLogs = append(p.accessLogs, l)
	}
	return p, nil
}

// Config is the proxy's config (do not modify it).
func (p *TCPProxy) Config() *config.TCPProxy { return p.cfg }

// pickCluster picks the connection's cluster (by weight for a split).
func (p *TCPProxy) pickCluster() *tcpCluster {
	if p.totalWeight == 0 {
		return &p.clusters[0]
	}
	r := rand.Uint64N(p.totalWeight)
	for i := range p.clusters {
		if r < p.clusters[i].weight {
			return &p.clusters[i]
		}
	}
	return &p.clusters[len(p.clusters)-1]
}

// Serve proxies one downstream connection (plaintext, or TLS already
// terminated) until it ends. It does not close down; the caller does.
// Cancelling ctx (a drain) does not cut a proxied connection short: bytes
// keep flowing until either side closes or the listener's drain timeout
// closes down.
func (p *TCPProxy) Serve(ctx context.Context, down net.Conn, info *stream.ConnInfo) error {
	s := &tcpSession{p: p, down: down, info: info, start: time.Now()}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	p.stats.cxTotal.Inc()
	defer s.finish()
	if len(p.filters) > 0 {
		s.chain = newNetChain(s, p.filters)
		if !s.chain.newConnection() {
			return fmt.Errorf("%w: by a network filter", ErrTCPRefused)
		}
	}
	up, err := s.connect()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrTCPRefused, err)
	}
	s.pipe(up)
	return nil
}

// tcpSession is one proxied connection: its state, the attribute source
// and access log entry of the connection, and its network filters'
// callbacks.
type tcpSession struct {
	p       *TCPProxy
	down    net.Conn
	info    *stream.ConnInfo
	start   time.Time
	ctx     context.Context
	cancel  context.CancelFunc
	cluster *tcpCluster
	up      *upstream.TCPConn
	chain   *netChain // nil without network filters

	mu      sync.Mutex // guards queued and up while connecting
	queued  []byte     // WriteUpstream before the upstream was connected
	aborted atomic.Bool

	activity atomic.Uint64 // bytes the copies moved either way (idle timeout)
	lastSeen uint64        // activity at the idle timer's last look
	rx, tx   atomic.Int64  // downstream bytes received and sent
	upAddr   string
	attempts int
	flags    string
	failure  string
	duration time.Duration
	meta     stream.Metadata
}

// connect picks a host and dials it, trying other hosts on connect
// failure up to max_connect_attempts.
func (s *tcpSession) connect() (*upstream.TCPConn, error) {
	p := s.p
	tc := p.pickCluster()
	s.cluster = tc
	var lb upstream.LBContext
	if p.hashSource && s.info.Remote.IsValid() {
		lb.Hash, lb.HasHash = xxhash.Sum64String(s.info.Remote.Addr().Unmap().String()), true
	}
	var triedStore [4]*upstream.Host
	tried := triedStore[:0]
	var lastErr error
	for attempt := 0; attempt < p.attempts; attempt++ {
		lb.Attempt = attempt
		if attempt == 1 {
			lb.Exclude = func(h *upstream.Host) bool {
				for _, t := range tried {
					if t == h {
						return true
					}
				}
				return false
			}
		}
		var h *upstream.Host
		if tc.c.OriginalDst() {
			if h, lastErr = s.originalDstHost(tc.c); lastErr != nil {
				s.flags = "UH"
				return nil, lastErr
			}
		} else {
			h = tc.c.Pick(&lb)
		}
		if h == nil {
			tc.noneHealthy.Inc()
			s.flags = "UH"
			return nil, fmt.Errorf("proxy: cluster %q has no host", tc.c.Name())
		}
		s.attempts++
		up, err := h.DialTCP(s.ctx)
		if err == nil {
			if err := s.attach(up); err != nil {
				return nil, err
			}
			return up, nil
		}
		lastErr = err
		s.failure = err.Error()
		if errors.Is(err, upstream.ErrTCPOverflow) {
			s.flags = "UO"
			return nil, err
		}
		s.flags = "UF"
		if s.aborted.Load() {
			return nil, err
		}
		tried = append(tried, h)
		p.log.Debug("tcp proxy: connect failed", "cluster", tc.c.Name(), "host", h.Address(), "attempt", attempt+1, "err", err)
	}
	tc.attemptsExceeded.Inc()
	return nil, lastErr
}

// originalDstHost is an ORIGINAL_DST cluster's host for this connection:
// its destination before a redirect, as the listener restored it. A
// destination that is the very address the connection arrived on (it was
// not redirected) would make the proxy connect to itself, again and again:
// it is refused.
func (s *tcpSession) originalDstHost(c *upstream.Cluster) (*upstream.Host, error) {
	dst := s.info.Local
	if !dst.IsValid() {
		return nil, fmt.Errorf("proxy: cluster %q: no original destination", c.Name())
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if la, ok := s.down.LocalAddr().(*net.TCPAddr); ok && netip.AddrPortFrom(la.AddrPort().Addr().Unmap(), la.AddrPort().Port()) == dst {
		return nil, fmt.Errorf("proxy: cluster %q: the original destination %s is this listener (not redirected)", c.Name(), dst)
	}
	return c.OriginalDstHost(dst.String()), nil
}

// attach makes up the session's upstream and sends what filters queued
// for it.
func (s *tcpSession) attach(up *upstream.TCPConn) error {
	s.mu.Lock()
	s.up, s.upAddr = up, up.Host().Address()
	q := s.queued
	s.queued = nil
	s.mu.Unlock()
	if s.aborted.Load() {
		up.Close()
		return errors.New("proxy: closed by a network filter")
	}
	if len(q) > 0 {
		if _, err := up.Conn.Write(q); err != nil {
			up.Close()
			return fmt.Errorf("proxy: writing to upstream: %w", err)
		}
		s.cluster.bytes.TxBytes.Add(uint64(len(q)))
	}
	return nil
}

// pipe copies both ways until the connection ends.
func (s *tcpSession) pipe(up *upstream.TCPConn) {
	if d := s.p.maxDuration; d > 0 {
		t := time.AfterFunc(d, func() {
			s.p.stats.maxDuration.Inc()
			s.abort()
		})
		defer t.Stop()
	}
	if d := s.p.idle; d > 0 {
		var t *time.Timer
		t = time.AfterFunc(d, func() {
			if now := s.activityNow(); now != s.lastSeen {
				s.lastSeen = now
				t.Reset(d)
				return
			}
			s.p.stats.idleTimeout.Inc()
			s.p.log.Debug("tcp proxy: idle timeout", "conn", s.info.ID)
			s.abort()
		})
		defer t.Stop()
	}
	toUp := &tcpDir{s: s, src: s.down, dst: up.Conn, upstreamBound: true}
	toDown := &tcpDir{s: s, src: up.Conn, dst: s.down}
	done := make(chan struct{})
	go func() {
		defer close(done)
		toUp.run()
	}()
	toDown.run()
	<-done
}

// activityNow sums what the copies counted and what the kernel received on
// both sockets (where it tells): any change is traffic.
func (s *tcpSession) activityNow() uint64 {
	n := s.activity.Load()
	if r, ok := socketReceived(s.down); ok {
		n += r
	}
	if r, ok := socketReceived(s.up.Conn); ok {
		n += r
	}
	return n
}

// abort ends the connection now: both sockets are closed, which unblocks
// both directions. The raw socket under a TLS connection is closed rather
// than the TLS connection, whose Close could wait behind a blocked Write.
func (s *tcpSession) abort() {
	if !s.aborted.CompareAndSwap(false, true) {
		return
	}
	s.cancel()
	closeRaw(s.down)
	s.mu.Lock()
	up := s.up
	s.mu.Unlock()
	if up != nil {
		closeRaw(up.Conn)
	}
}

func closeRaw(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		tc.NetConn().Close()
		return
	}
	c.Close()
}

// finish releases the upstream, runs the filters' OnClose, counts and logs
// the connection.
func (s *tcpSession) finish() {
	s.cancel()
	s.duration = time.Since(s.start)
	if s.up != nil {
		s.up.Close()
	}
	if s.chain != nil {
		s.chain.close()
	}
	for _, l := range s.p.accessLogs {
		l.Log(s)
	}
}

// tcpDir is one direction of a proxied connection.
type tcpDir struct {
	s             *tcpSession
	src, dst      net.Conn
	upstreamBound bool // downstream → upstream
}

// run copies until src ends (half-closing dst) or an error ends the
// connection.
func (d *tcpDir) run() {
	var err error
	switch {
	case d.s.chain != nil:
		err = d.filtered()
	default:
		st, sok := d.src.(*net.TCPConn)
		dt, dok := d.dst.(*net.TCPConn)
		if sok && dok && canSplice {
			err = d.splice(dt, st)
		} else {
			err = d.buffered()
		}
	}
	if err != nil {
		d.s.abort()
		return
	}
	// src ended cleanly: pass the half-close on.
	if cw, ok := d.dst.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
		d.s.abort()
	}
}

// counted records n bytes moved in this direction.
func (d *tcpDir) counted(n int64) {
	if n <= 0 {
		return
	}
	s := d.s
	s.activity.Add(uint64(n))
	if d.upstreamBound {
		s.rx.Add(n)
		s.p.stats.rxBytes.Add(uint64(n))
		s.cluster.bytes.TxBytes.Add(uint64(n))
	} else {
		s.tx.Add(n)
		s.p.stats.txBytes.Add(uint64(n))
		s.cluster.bytes.RxBytes.Add(uint64(n))
	}
}

// splice copies between two TCP sockets with TCPConn.ReadFrom, which the
// kernel does with splice(2) on Linux, a chunk at a time. It returns nil
// when src reached EOF.
func (d *tcpDir) splice(dst, src *net.TCPConn) error {
	lr := io.LimitedReader{R: src}
	for {
		lr.N = spliceChunk
		n, err := dst.ReadFrom(&lr)
		d.counted(n)
		switch {
		case err != nil:
			return err
		case lr.N > 0:
			return nil // EOF before the chunk's end
		}
	}
}

var copyBufs = sync.Pool{New: func() any {
	b := make([]byte, copyBufSize)
	return &b
}}

// buffered copies through a pooled buffer, for connections that cannot
// splice (TLS on a side). It returns nil when src reached EOF.
func (d *tcpDir) buffered() error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := d.src.Read(buf)
		if n > 0 {
			w, werr := d.dst.Write(buf[:n])
			d.counted(int64(w))
			if werr != nil {
				return werr
			}
		}
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
	}
}

// The connection as an attribute source and access log entry. HTTP
// attributes read empty.

var noHeaders header.Map

func (s *tcpSession) RequestHeaders() *header.Map      { return &noHeaders }
func (s *tcpSession) ResponseHeaders() *header.Map     { return &noHeaders }
func (s *tcpSession) ResponseTrailers() *header.Map    { return &noHeaders }
func (s *tcpSession) ResponseCode() int                { return 0 }
func (s *tcpSession) RequestID() string                { return "" }
func (s *tcpSession) StartTime() time.Time             { return s.start }
func (s *tcpSession) Protocol() string                 { return "" }
func (s *tcpSession) DownstreamRemote() netip.AddrPort { return s.info.Remote }
func (s *tcpSession) DownstreamLocal() netip.AddrPort  { return s.info.Local }
func (s *tcpSession) TLS() *tls.ConnectionState        { return s.info.TLS }
func (s *tcpSession) RouteName() string                { return "" }
func (s *tcpSession) RequestBodySize() int64           { return 0 }
func (s *tcpSession) ResponseBodySize() int64          { return 0 }

func (s *tcpSession) UpstreamAddress() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upAddr
}

func (s *tcpSession) ClusterName() string {
	if s.cluster == nil {
		return ""
	}
	return s.cluster.c.Name()
}

func (s *tcpSession) Duration() time.Duration                { return s.duration }
func (s *tcpSession) RequestDuration() time.Duration         { return -1 }
func (s *tcpSession) ResponseDuration() time.Duration        { return -1 }
func (s *tcpSession) ResponseFlags() string                  { return s.flags }
func (s *tcpSession) ResponseCodeDetails() string            { return "" }
func (s *tcpSession) BytesReceived() int64                   { return s.rx.Load() }
func (s *tcpSession) BytesSent() int64                       { return s.tx.Load() }
func (s *tcpSession) UpstreamTransportFailureReason() string { return s.failure }
func (s *tcpSession) ConnectionID() uint64                   { return s.info.ID }
func (s *tcpSession) AttemptCount() int                      { return s.attempts }
