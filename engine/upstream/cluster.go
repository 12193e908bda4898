package upstream

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
	etls "github.com/sluice-proxy/sluice/engine/tls"
)

// Defaults applied to zero config fields (Envoy's, where Envoy has one).
const (
	DefaultProtocol            = "http1"
	DefaultConnectTimeout      = 5 * time.Second
	DefaultIdleTimeout         = time.Hour // Envoy's upstream idle_timeout
	DefaultRingHashMinSize     = 1024
	DefaultRingHashMaxSize     = 8 << 20
	DefaultMaglevTableSize     = 65537
	DefaultLeastRequestChoices = 2
	DefaultMinRetryConcurrency = 3

	maxMaglevTableSize = 5000011 // Envoy's limit
	maxIdlePerHost     = 1024
)

// Cluster is a running upstream cluster: hosts, load balancer, pools,
// circuit breakers and stats. It is immutable apart from its counters and
// pools, and shared by every Set that carries it.
type Cluster struct {
	name     string
	cfg      *config.Cluster // private copy
	protocol string
	proto    protocol
	policy   config.LBPolicy
	codec    stream.ClientCodec    // HTTP/1 pool; nil for an http2-only cluster
	mux      stream.MuxClientCodec // multiplexed pool; nil for an http1-only cluster
	dialer   net.Dialer

	// unixDialer dials unix socket endpoints (dialer may bind a local IP
	// address, which a unix socket cannot take).
	unixDialer net.Dialer

	// tls originates the cluster's TLS (its fields are nil for
	// plaintext); matchTLS are the TLS of its transport socket matches,
	// by name. A host uses one of them.
	tls        tlsSet
	matchTLS   map[string]*tlsSet
	clientOpts stream.ClientOptions

	idleTimeout        int64 // ns; 0: none
	maxRequestsPerConn int
	maxIdle            int

	// hs is the hosts and their load balancer: fixed at Build, replaced
	// whole when a DNS cluster's answers change. A pick loads it once.
	hs     atomic.Pointer[hostSet]
	lbOpts clusterOptions

	// Stats are the cluster's statistics; see ClusterStats.
	Stats ClusterStats

	cx, pending, rq, retries resource
	budgetPercent            float64
	minRetryConcurrency      int64
	requestDone, retryDone   func() // bound once, so TryStart* don't allocate

	retired atomic.Bool

	// od are the pooled hosts of an ORIGINAL_DST cluster; nil otherwise.
	od *origDst
	// outlier is the cluster's outlier detection; nil: none.
	outlier *outlierDetector
	// dns resolves the names of a STRICT_DNS or LOGICAL_DNS cluster; nil
	// otherwise.
	dns *dnsCluster
}

// hostSet is an immutable list of a cluster's hosts with the load
// balancer over them.
type hostSet struct {
	hosts     []*Host
	eligible  []*Host // the hosts the load balancer picks from
	panicMode bool    // no healthy host: eligible is every host of the first level
	healthy   int
	lb        balancer // nil when eligible is empty
}

// newHostSet builds the eligible hosts and the load balancer over hosts.
func (c *Cluster) newHostSet(hosts []*Host) *hostSet {
	hs := &hostSet{hosts: hosts}
	for _, h := range hosts {
		if h.healthy {
			hs.healthy++
		}
	}
	hs.eligible, hs.panicMode = eligibleHosts(hosts)
	if len(hs.eligible) > 0 {
		hs.lb = newBalancer(c.policy, hs.eligible, &c.lbOpts)
	}
	return hs
}

type clusterOptions struct {
	choiceCount      int
	ringMin, ringMax uint64
	maglevSize       uint64
}

// Name is the cluster's name.
func (c *Cluster) Name() string { return c.name }

// Config is the cluster's config (a private copy; do not modify it).
func (c *Cluster) Config() *config.Cluster { return c.cfg }

// Protocol is the upstream codec name ("http1" by default).
func (c *Cluster) Protocol() string { return c.protocol }

// LBPolicy is the effective load balancing policy.
func (c *Cluster) LBPolicy() config.LBPolicy { return c.policy }

// Hosts returns every host in config order (shared; do not modify). A DNS
// cluster's hosts are those of its latest answers: a STRICT_DNS endpoint
// contributes one host per address, in answer order.
func (c *Cluster) Hosts() []*Host { return c.hs.Load().hosts }

// PanicMode reports whether no host is healthy, so every host of the first
// priority level takes traffic.
func (c *Cluster) PanicMode() bool { return c.hs.Load().panicMode }

// Removed reports whether the cluster was retired by a Commit.
func (c *Cluster) Removed() bool { return c.retired.Load() }

// CloseIdle closes every idle pooled connection of the cluster.
func (c *Cluster) CloseIdle() {
	for _, h := range c.hs.Load().hosts {
		h.drainIdle(false)
		h.drainMux(true)
	}
	if c.od != nil {
		c.drainOriginalDst(true)
	}
}

// newCluster validates one cluster config and builds it. prev, if not nil,
// is the current cluster of the same name: hosts keeping their address keep
// their HostStats.
func (m *Manager) newCluster(in *config.Cluster, prev *Cluster) (*Cluster, error) {
	cfg := cloneCluster(in)
	fail := func(format string, args ...any) error {
		return fmt.Errorf("upstream: cluster %q: "+format, append([]any{cfg.Name}, args...)...)
	}

	c := &Cluster{name: cfg.Name, cfg: cfg}

	c.protocol = cfg.Protocol
	if c.protocol == "" {
		c.protocol = DefaultProtocol
	}
	if m.codecs == nil {
		return nil, fail("protocol %q: no codec registry", c.protocol)
	}
	err := c.setProtocol(m.codecs)
	if err != nil {
		return nil, fail("%w", err)
	}

	o := &c.lbOpts
	c.policy = cfg.LBPolicy
	switch c.policy {
	case "":
		c.policy = config.LBRoundRobin
	case config.LBRoundRobin, config.LBLeastRequest, config.LBRandom, config.LBRingHash, config.LBMaglev:
	default:
		return nil, fail("unknown lb_policy %q", cfg.LBPolicy)
	}
	switch n := cfg.LeastRequestCount; {
	case n == 0:
		o.choiceCount = DefaultLeastRequestChoices
	case n < 2:
		return nil, fail("least_request choice_count %d: must be at least 2", n)
	default:
		o.choiceCount = n
	}
	o.ringMin, o.ringMax = cfg.RingHashMinSize, cfg.RingHashMaxSize
	if o.ringMin == 0 {
		o.ringMin = DefaultRingHashMinSize
	}
	if o.ringMax == 0 {
		o.ringMax = DefaultRingHashMaxSize
	}
	if o.ringMax > DefaultRingHashMaxSize {
		return nil, fail("ring_hash maximum_ring_size %d: over %d", o.ringMax, DefaultRingHashMaxSize)
	}
	if o.ringMin > o.ringMax {
		return nil, fail("ring_hash minimum_ring_size %d is over maximum_ring_size %d", o.ringMin, o.ringMax)
	}
	o.maglevSize = cfg.MaglevTableSize
	if o.maglevSize == 0 {
		o.maglevSize = DefaultMaglevTableSize
	}
	if o.maglevSize > maxMaglevTableSize || !isPrime(o.maglevSize) {
		return nil, fail("maglev table_size %d: must be a prime up to %d", o.maglevSize, maxMaglevTableSize)
	}

	connectTimeout := cfg.ConnectTimeout
	switch {
	case connectTimeout < 0:
		return nil, fail("negative connect_timeout %v", cfg.ConnectTimeout)
	case connectTimeout == 0:
		connectTimeout = DefaultConnectTimeout
	}
	c.dialer = net.Dialer{Timeout: connectTimeout} // KeepAlive 0: TCP keep-alive with Go's defaults
	c.unixDialer = net.Dialer{Timeout: connectTimeout}
	if cfg.SourceAddress != "" {
		ip, err := netip.ParseAddr(cfg.SourceAddress)
		if err != nil || ip.Zone() != "" {
			return nil, fail("source address %q is not an IP address", cfg.SourceAddress)
		}
		c.dialer.LocalAddr = &net.TCPAddr{IP: ip.AsSlice()}
	}
	switch {
	case cfg.IdleTimeout < 0:
		return nil, fail("negative idle_timeout %v", cfg.IdleTimeout)
	case cfg.IdleTimeout == 0:
		c.idleTimeout = int64(DefaultIdleTimeout)
	default:
		c.idleTimeout = int64(cfg.IdleTimeout)
	}
	if cfg.MaxRequestsPerConnection < 0 {
		return nil, fail("negative max_requests_per_connection %d", cfg.MaxRequestsPerConnection)
	}
	c.maxRequestsPerConn = cfg.MaxRequestsPerConnection

	// Circuit breakers: a zero field takes Envoy's default.
	cb, def := cfg.CircuitBreakers, config.DefaultCircuitBreakers()
	limit := func(what string, v, d int) (int64, error) {
		switch {
		case v < 0:
			return 0, fail("circuit_breakers: negative %s %d", what, v)
		case v == 0:
			return int64(d), nil
		}
		return int64(v), nil
	}
	if c.cx.max, err = limit("max_connections", cb.MaxConnections, def.MaxConnections); err != nil {
		return nil, err
	}
	if c.pending.max, err = limit("max_pending_requests", cb.MaxPendingRequests, def.MaxPendingRequests); err != nil {
		return nil, err
	}
	if c.rq.max, err = limit("max_requests", cb.MaxRequests, def.MaxRequests); err != nil {
		return nil, err
	}
	if c.retries.max, err = limit("max_retries", cb.MaxRetries, def.MaxRetries); err != nil {
		return nil, err
	}
	if p := cb.RetryBudgetPercent; p < 0 || p > 100 || math.IsNaN(p) {
		return nil, fail("circuit_breakers: retry budget_percent %v: must be within 0..100", p)
	}
	c.budgetPercent = cb.RetryBudgetPercent
	if c.minRetryConcurrency, err = limit("min_retry_concurrency", cb.MinRetryConcurrency, DefaultMinRetryConcurrency); err != nil {
		return nil, err
	}
	c.maxIdle = int(min(c.cx.max, maxIdlePerHost))
	if c.maxIdle < 1 {
		c.maxIdle = 1
	}

	// Hosts.
	if strings.EqualFold(cfg.Type, config.ClusterOriginalDst) && len(cfg.Endpoints) > 0 {
		return nil, fail("an ORIGINAL_DST cluster lists no endpoints")
	}
	if strings.EqualFold(cfg.Type, config.ClusterOriginalDst) {
		c.od = newOrigDst(cfg.CleanupInterval)
	}
	static := strings.EqualFold(cfg.Type, "STATIC")
	dnsType := strings.EqualFold(cfg.Type, config.ClusterStrictDNS) || strings.EqualFold(cfg.Type, config.ClusterLogicalDNS)
	// Hosts keeping their address keep their stats.
	var prevStats map[string]*HostStats
	if prev != nil {
		prevHosts := prev.hs.Load().hosts
		prevStats = make(map[string]*HostStats, len(prevHosts))
		for _, h := range prevHosts {
			if _, dup := prevStats[h.addr]; !dup {
				prevStats[h.addr] = h.Stats
			}
		}
	}
	hosts := make([]*Host, 0, len(cfg.Endpoints))
	for i, ep := range cfg.Endpoints {
		if ep == nil {
			return nil, fail("endpoint %d: nil", i)
		}
		if err := checkAddress(ep.Address, static); err != nil {
			return nil, fail("endpoint %d: bad address %q: %v", i, ep.Address, err)
		}
		if dnsType && strings.HasPrefix(ep.Address, config.UnixAddressPrefix) {
			return nil, fail("endpoint %d: a %s cluster resolves host names; a unix socket endpoint needs a STATIC or EDS cluster", i, cfg.Type)
		}
		tls := &c.tls
		if ep.TransportSocket != "" {
			if tls = c.matchTLS[ep.TransportSocket]; tls == nil {
				return nil, fail("endpoint %d: unknown transport socket match %q", i, ep.TransportSocket)
			}
		}
		if !dnsType {
			hosts = append(hosts, c.newHost(ep, ep.Address, tls, prevStats))
		}
	}
	c.Stats = newClusterStats(m.stats, c.name)
	if dnsType {
		// The hosts come from the answers: none before the first.
		if err := c.newDNS(m, prev, prevStats); err != nil {
			return nil, fail("%w", err)
		}
	} else {
		c.hs.Store(c.newHostSet(hosts))
	}

	if od := cfg.Outlier; od != nil {
		if od.Interval <= 0 || od.BaseEjectionTime <= 0 {
			return nil, fail("outlier_detection: interval and base_ejection_time must be positive")
		}
		if prev != nil && sameOutlier(prev.outlier, od, cfg.HealthyPanicThreshold) {
			c.outlier = prev.outlier
		} else {
			c.outlier = newOutlierDetector(*od, cfg.HealthyPanicThreshold, c.Stats.scope)
		}
	}
	c.cx.open = c.Stats.CxOpen
	c.pending.open = c.Stats.RqPendingOpen
	c.rq.open = c.Stats.RqOpen
	c.retries.open = c.Stats.RqRetryOpen
	c.requestDone = c.endRequest
	c.retryDone = c.endRetry
	return c, nil
}

// newHost makes a host of endpoint ep at addr. stats, if not nil, are
// the previous cluster's host stats by address: a host taking them over
// is deleted from it, so a duplicate address starts afresh.
func (c *Cluster) newHost(ep *config.Endpoint, addr string, tls *tlsSet, stats map[string]*HostStats) *Host {
	h := &Host{cluster: c, addr: addr, weight: max(ep.Weight, 1), priority: ep.Priority, healthy: ep.Healthy, tls: tls}
	h.network, h.dialAddr = "tcp", addr
	if p, ok := strings.CutPrefix(addr, config.UnixAddressPrefix); ok {
		h.network, h.dialAddr = "unix", p
	}
	if c.proto == protoAuto && h.tls.h2 == nil {
		// No TLS, no ALPN to ask: HTTP/1.1, as Envoy's auto_config.
		h.alpn.Store(alpnHTTP1)
	}
	if st := stats[addr]; st != nil {
		h.Stats = st
		delete(stats, addr)
	} else {
		h.Stats = new(HostStats)
	}
	return h
}

// eligibleHosts returns the healthy hosts of the most preferred priority
// level that has one, or, when no host is healthy, every host of the most
// preferred level (panic).
func eligibleHosts(hosts []*Host) (eligible []*Host, inPanic bool) {
	if len(hosts) == 0 {
		return nil, false
	}
	best, found := uint32(math.MaxUint32), false
	for _, h := range hosts {
		if h.healthy && h.priority <= best {
			best, found = h.priority, true
		}
	}
	if !found {
		inPanic = true
		for _, h := range hosts {
			best = min(best, h.priority)
		}
	}
	for _, h := range hosts {
		if h.priority == best && (h.healthy || inPanic) {
			eligible = append(eligible, h)
		}
	}
	return eligible, inPanic
}

// checkAddress validates "host:port" or "unix:PATH"; a STATIC cluster
// needs an IP.
func checkAddress(addr string, needIP bool) error {
	if p, ok := strings.CutPrefix(addr, config.UnixAddressPrefix); ok {
		if p == "" || p == "@" {
			return errors.New("empty unix socket path")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if host == "" {
		return errors.New("missing host")
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("bad port %q", port)
	}
	if needIP {
		if _, err := netip.ParseAddr(host); err != nil {
			return errors.New("a STATIC cluster needs an IP address")
		}
	}
	return nil
}

func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

func cloneCluster(in *config.Cluster) *config.Cluster {
	c := *in
	if in.Endpoints != nil {
		c.Endpoints = make([]*config.Endpoint, len(in.Endpoints))
		for i, ep := range in.Endpoints {
			if ep != nil {
				e := *ep
				c.Endpoints[i] = &e
			}
		}
	}
	return &c
}

// protocol is how a cluster picks the pool for a request.
type protocol uint8

const (
	protoHTTP1      protocol = iota
	protoHTTP2               // every request on the multiplexed pool
	protoDownstream          // the request's own protocol
	protoAuto                // ALPN: h2 when the TLS upstream agrees
)

// setProtocol resolves the cluster's protocol to codecs, TLS configs and
// HTTP/2 client options.
func (c *Cluster) setProtocol(reg *stream.Registry) error {
	cfg := c.cfg
	switch c.protocol {
	case config.ProtocolHTTP1:
		c.proto = protoHTTP1
	case config.ProtocolHTTP2:
		c.proto = protoHTTP2
	case config.ProtocolDownstream:
		c.proto = protoDownstream
	case config.ProtocolAuto:
		c.proto = protoAuto
		if cfg.TLS == nil {
			// Without TLS there is no ALPN to ask: Envoy's auto_config
			// uses HTTP/1.1 then too.
			c.proto = protoHTTP1
		}
	default:
		return fmt.Errorf("unknown protocol %q (want http1, http2, downstream or auto)", c.protocol)
	}
	var err error
	if c.proto != protoHTTP2 {
		if c.codec, err = reg.ClientCodec(config.ProtocolHTTP1); err != nil {
			return err
		}
	}
	if c.proto != protoHTTP1 {
		if c.mux, err = reg.MuxClientCodec(config.ProtocolHTTP2); err != nil {
			return err
		}
	}
	h2 := cfg.HTTP2
	if h2.ConnectionKeepaliveInterval < 0 || h2.ConnectionKeepaliveTimeout < 0 {
		return errors.New("http2 connection_keepalive: negative duration")
	}
	c.clientOpts = stream.ClientOptions{
		MaxConcurrentStreams: h2.MaxConcurrentStreams,
		InitialStreamWindow:  h2.InitialStreamWindowSize,
		InitialConnWindow:    h2.InitialConnectionWindowSize,
		KeepaliveInterval:    h2.ConnectionKeepaliveInterval,
		KeepaliveTimeout:     h2.ConnectionKeepaliveTimeout,
	}
	if c.tls, err = c.newTLSSet(cfg.TLS); err != nil {
		return err
	}
	for i, m := range cfg.TransportSocketMatches {
		if m == nil || m.Name == "" {
			return fmt.Errorf("transport socket match %d: a name is required", i)
		}
		if c.matchTLS[m.Name] != nil {
			return fmt.Errorf("transport socket match %q: duplicate name", m.Name)
		}
		set, err := c.newTLSSet(m.TLS)
		if err != nil {
			return fmt.Errorf("transport socket match %q: %w", m.Name, err)
		}
		if c.matchTLS == nil {
			c.matchTLS = map[string]*tlsSet{}
		}
		c.matchTLS[m.Name] = &set
	}
	return nil
}

// tlsSet is the TLS a host originates: for the HTTP/1 and the multiplexed
// pool (ALPN differs) and for raw (TCP proxy) connections, which offer
// only the ALPN protocols configured. All nil: plaintext.
type tlsSet struct {
	h1, h2, raw *tls.Config
}

// newTLSSet compiles one upstream TLS context (nil: plaintext).
func (c *Cluster) newTLSSet(u *config.UpstreamTLS) (tlsSet, error) {
	var set tlsSet
	if u == nil {
		return set, nil
	}
	h1ALPN, h2ALPN := []string{"http/1.1"}, []string{"h2"}
	if c.proto == protoAuto {
		h2ALPN = []string{"h2", "http/1.1"}
	}
	// HTTP1ALPN and HTTP2ALPN replace what the pools offer, configured or
	// not (Istio's ALPN override).
	h1, h2 := u, u
	if len(u.HTTP1ALPN) > 0 {
		o := *u
		o.ALPN = u.HTTP1ALPN
		h1 = &o
	}
	if len(u.HTTP2ALPN) > 0 {
		o := *u
		o.ALPN = u.HTTP2ALPN
		h2 = &o
	}
	var err error
	if set.h1, err = etls.ClientConfig(h1, h1ALPN); err != nil {
		return set, err
	}
	if set.h2, err = etls.ClientConfig(h2, h2ALPN); err != nil {
		return set, err
	}
	if set.raw, err = etls.ClientConfig(u, nil); err != nil {
		return set, err
	}
	return set, nil
}

// activate publishes config-derived gauges when the cluster becomes
// current, and starts a DNS cluster's resolution unless the manager is
// closed.
func (c *Cluster) activate(closed bool) {
	if c.dns != nil {
		c.startDNS(!closed)
		return
	}
	hs := c.hs.Load()
	n := int64(c.OriginalDstHosts())
	c.Stats.MembershipTotal.Set(int64(len(hs.hosts)) + n)
	c.Stats.MembershipHealthy.Set(int64(hs.healthy) + n)
}

// retire stops pooling: idle connections are closed, or handed to the host
// with the same address in succ (the cluster replacing this one, if it
// speaks the same protocol); busy ones follow on Release.
func (c *Cluster) retire(succ *Cluster) {
	if c.dns != nil {
		c.stopDNS() // no answer changes the hosts from here on
	}
	hosts := c.hs.Load().hosts
	if succ != nil && succ != c && succ.protocol == c.protocol {
		next := succ.hs.Load().hosts
		by := make(map[string]*Host, len(next))
		for _, h := range next {
			if _, dup := by[h.addr]; !dup {
				by[h.addr] = h
			}
		}
		for _, h := range hosts {
			if nh := by[h.addr]; nh != nil {
				h.next.Store(nh)
			}
		}
	}
	c.retired.Store(true)
	for _, h := range hosts {
		h.drainIdle(true)
		h.drainMux(false)
	}
	if c.od != nil {
		c.drainOriginalDst(false)
	}
}

// revive undoes retire, for a Set committed after a newer one retired some
// of its clusters.
func (c *Cluster) revive() {
	for _, h := range c.hs.Load().hosts {
		h.next.Store(nil)
	}
	c.retired.Store(false)
}
