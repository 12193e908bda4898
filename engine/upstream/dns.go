package upstream

// Hosts of STRICT_DNS and LOGICAL_DNS clusters, as Envoy makes them.
//
// Each endpoint whose address is a host name is a target, resolved when
// the cluster is built (Build waits for the answers, at most the DNS
// warm-up time, as Envoy warms a cluster before using it) and then by one
// goroutine per target every refresh rate while the cluster is current,
// with exponential backoff after failures. A STRICT_DNS target makes one
// host per address of its latest good answer: the cluster's host set (and
// its load balancer) is rebuilt and swapped in atomically when an answer
// adds or removes an address, so a pick never waits for the resolver.
// Hosts that stay keep their pools and stats; removed ones are marked so
// that their busy connections close when released, and their idle ones
// are closed at once. A LOGICAL_DNS cluster has one endpoint and one host,
// whose new connections go to the first address of the latest answer;
// existing connections are kept. A failed lookup keeps the last good
// answer. Retiring the cluster stops its goroutines.

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// Resolver looks up the IP addresses of a host name; network is "ip",
// "ip4" or "ip6". *net.Resolver is one (the default: net.DefaultResolver).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

const (
	// DefaultDNSRefreshRate is the time between resolutions of a name
	// (Envoy's dns_refresh_rate default).
	DefaultDNSRefreshRate = 5 * time.Second
	// DefaultDNSWarmup bounds how long Build waits for the first answers
	// of a new DNS cluster.
	DefaultDNSWarmup = 5 * time.Second
	// dnsLookupTimeout bounds one lookup, so a resolver that hangs delays
	// a refresh instead of stopping it for good.
	dnsLookupTimeout = 10 * time.Second
)

// dnsCluster is the resolution state of a DNS cluster.
type dnsCluster struct {
	logical  bool
	family   string // config.DNS* family
	network  string // what is looked up: "ip", "ip4" or "ip6"
	refresh  time.Duration
	jitter   time.Duration
	failBase time.Duration
	failMax  time.Duration
	// failFixed: no backoff configured, a failure is retried after the
	// refresh rate (Envoy's fixed strategy then).
	failFixed bool
	resolver  Resolver
	log       *slog.Logger

	mu      sync.Mutex // guards the targets' answers and hosts, cancel, prevStats and fallback
	targets []*dnsTarget
	cancel  context.CancelFunc // stops the goroutines; nil when not running
	wg      sync.WaitGroup     // the running goroutines
	// prevStats and fallback come from the cluster this one replaces, for
	// the first answers: host stats by address, and the last good answer
	// by endpoint address, used when a name does not resolve at Build.
	prevStats map[string]*HostStats
	fallback  map[string][]netip.AddrPort
}

// dnsTarget is one endpoint of a DNS cluster.
type dnsTarget struct {
	ep   *config.Endpoint
	name string // the host name to resolve; "" for an IP address
	port uint16
	tls  *tlsSet

	resolved bool             // addrs holds a good answer
	lastOK   bool             // the latest lookup succeeded
	addrs    []netip.AddrPort // the latest good answer, deduplicated
	// hosts are the target's hosts: STRICT_DNS, one per address of addrs
	// (same index); LOGICAL_DNS, host once resolved.
	hosts []*Host
	host  *Host // LOGICAL_DNS: the one host
}

// newDNS sets up the resolution of a DNS cluster's endpoints (validated
// by the caller) and publishes the hosts of endpoints that are IP
// addresses. prevStats are the previous cluster's host stats by address.
func (c *Cluster) newDNS(m *Manager, prev *Cluster, prevStats map[string]*HostStats) error {
	cfg := c.cfg
	o := cfg.DNS
	switch {
	case o.RefreshRate < 0:
		return fmt.Errorf("negative dns_refresh_rate %v", o.RefreshRate)
	case o.FailureRefreshBase < 0 || o.FailureRefreshMax < 0:
		return fmt.Errorf("negative dns_failure_refresh_rate %v/%v", o.FailureRefreshBase, o.FailureRefreshMax)
	case o.Jitter < 0:
		return fmt.Errorf("negative dns_jitter %v", o.Jitter)
	}
	d := &dnsCluster{
		logical:  strings.EqualFold(cfg.Type, config.ClusterLogicalDNS),
		family:   o.LookupFamily,
		refresh:  o.RefreshRate,
		jitter:   o.Jitter,
		failBase: o.FailureRefreshBase,
		failMax:  o.FailureRefreshMax,
		resolver: m.resolver,
		log:      m.log,
	}
	if d.resolver == nil {
		d.resolver = net.DefaultResolver
	}
	if d.refresh == 0 {
		d.refresh = DefaultDNSRefreshRate
	}
	if d.failBase == 0 {
		d.failBase, d.failMax, d.failFixed = d.refresh, d.refresh, true
	}
	if d.failMax == 0 {
		d.failMax = max(10*d.failBase, d.failBase)
	}
	if d.failMax < d.failBase {
		return fmt.Errorf("dns_failure_refresh_rate: max_interval %v is below base_interval %v", d.failMax, d.failBase)
	}
	switch d.family {
	case "":
		d.family = config.DNSV4Preferred
	case config.DNSAuto, config.DNSV4Only, config.DNSV6Only, config.DNSV4Preferred, config.DNSAll:
	default:
		return fmt.Errorf("unknown dns_lookup_family %q (want AUTO, V4_ONLY, V6_ONLY, V4_PREFERRED or ALL)", o.LookupFamily)
	}
	d.network = "ip"
	switch d.family {
	case config.DNSV4Only:
		d.network = "ip4"
	case config.DNSV6Only:
		d.network = "ip6"
	}
	if d.logical && len(cfg.Endpoints) != 1 {
		return fmt.Errorf("a LOGICAL_DNS cluster needs exactly one endpoint, not %d", len(cfg.Endpoints))
	}
	sc := c.Stats.scope
	c.Stats.UpdateAttempt = sc.Counter("update_attempt")
	c.Stats.UpdateSuccess = sc.Counter("update_success")
	c.Stats.UpdateFailure = sc.Counter("update_failure")
	d.prevStats = prevStats
	if prev != nil && prev.dns != nil {
		pd := prev.dns
		pd.mu.Lock()
		for _, t := range pd.targets {
			if t.resolved {
				if d.fallback == nil {
					d.fallback = map[string][]netip.AddrPort{}
				}
				d.fallback[t.ep.Address] = t.addrs
			}
		}
		pd.mu.Unlock()
	}
	c.dns = d
	for _, ep := range cfg.Endpoints {
		host, portStr, _ := net.SplitHostPort(ep.Address) // checked by checkAddress
		port, _ := strconv.ParseUint(portStr, 10, 16)
		t := &dnsTarget{ep: ep, name: host, port: uint16(port), tls: &c.tls}
		if ep.TransportSocket != "" {
			t.tls = c.matchTLS[ep.TransportSocket]
		}
		if d.logical {
			t.host = c.newHost(ep, ep.Address, t.tls, prevStats)
			t.host.hostname = host
		}
		d.targets = append(d.targets, t)
		if ip, err := netip.ParseAddr(host); err == nil {
			// Nothing to look up; the family does not filter a literal
			// address, as in Envoy.
			t.name = ""
			c.applyLocked(t, []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), t.port)}, prevStats)
		}
	}
	c.publishLocked()
	return nil
}

// warmDNS resolves the names of new DNS clusters in parallel, waiting at
// most the warm-up time; a name that did not resolve takes the last good
// answer of the cluster replaced, if any, and is retried once the cluster
// is current.
func (m *Manager) warmDNS(clusters []*Cluster) {
	if m.dnsWarmup > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), m.dnsWarmup)
		var wg sync.WaitGroup
		for _, c := range clusters {
			for _, t := range c.dns.targets {
				if t.name != "" {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c.resolve(ctx, t, true)
					}()
				}
			}
		}
		wg.Wait()
		cancel()
	}
	for _, c := range clusters {
		d := c.dns
		d.mu.Lock()
		changed := false
		for _, t := range d.targets {
			if addrs := d.fallback[t.ep.Address]; !t.resolved && len(addrs) > 0 {
				c.applyLocked(t, addrs, d.prevStats)
				changed = true
			}
		}
		if changed {
			c.publishLocked()
		}
		d.mu.Unlock()
	}
}

// startDNS publishes the membership gauges and, with run, starts the
// resolution goroutines unless they run already (a cluster carried over).
func (c *Cluster) startDNS(run bool) {
	d := c.dns
	d.mu.Lock()
	defer d.mu.Unlock()
	d.prevStats, d.fallback = nil, nil
	hs := c.hs.Load()
	c.Stats.MembershipTotal.Set(int64(len(hs.hosts)))
	c.Stats.MembershipHealthy.Set(int64(hs.healthy))
	if !run || d.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	for _, t := range d.targets {
		if t.name != "" {
			d.wg.Add(1)
			go c.resolveLoop(ctx, t)
		}
	}
}

// stopDNS stops the resolution goroutines; no answer changes the hosts
// once it returns. A lookup in flight is cancelled.
func (c *Cluster) stopDNS() {
	d := c.dns
	d.mu.Lock()
	if d.cancel != nil {
		d.cancel()
		d.cancel = nil
	}
	d.mu.Unlock()
}

// resolveLoop refreshes one target until ctx ends: every refresh rate
// (plus jitter) after a good answer, with exponential backoff after
// failures, at once when the latest lookup failed.
func (c *Cluster) resolveLoop(ctx context.Context, t *dnsTarget) {
	d := c.dns
	defer d.wg.Done()
	d.mu.Lock()
	ok := t.lastOK
	d.mu.Unlock()
	var wait time.Duration
	if ok {
		wait = d.refreshDelay()
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if c.resolve(ctx, t, false) {
			failures = 0
			wait = d.refreshDelay()
		} else {
			if ctx.Err() != nil {
				return
			}
			wait = d.failureDelay(failures)
			failures++
		}
		timer.Reset(wait)
	}
}

func (d *dnsCluster) refreshDelay() time.Duration {
	if d.jitter > 0 {
		return d.refresh + rand.N(d.jitter)
	}
	return d.refresh
}

// failureDelay is the wait after the n+1-th failure in a row: the base
// doubled n times, at most the max, jittered down by up to a half so
// proxies that failed together do not retry together.
func (d *dnsCluster) failureDelay(n int) time.Duration {
	if d.failFixed {
		return d.refresh
	}
	iv := d.failBase
	for i := 0; i < n && iv < d.failMax; i++ {
		iv *= 2
	}
	iv = min(iv, d.failMax)
	return iv - rand.N(iv/2+1)
}

// resolve looks t's name up and installs a good answer, counting
// update_attempt, update_success and update_failure. warm says the
// cluster is being built: new hosts take the previous cluster's stats.
// It reports whether the lookup succeeded; an answer that arrives after
// ctx ended is dropped.
func (c *Cluster) resolve(ctx context.Context, t *dnsTarget, warm bool) bool {
	d := c.dns
	c.Stats.UpdateAttempt.Inc()
	lctx, cancel := context.WithTimeout(ctx, dnsLookupTimeout)
	ips, err := d.resolver.LookupNetIP(lctx, d.network, t.name)
	cancel()
	var addrs []netip.AddrPort
	if err == nil {
		if addrs = familyAddrs(d.family, ips, t.port); len(addrs) == 0 {
			err = fmt.Errorf("no %s address among %v", d.family, ips)
		}
	}
	d.mu.Lock()
	if ctx.Err() != nil {
		d.mu.Unlock()
		return false
	}
	if err != nil {
		t.lastOK = false
		d.mu.Unlock()
		c.Stats.UpdateFailure.Inc()
		d.log.Debug("upstream: dns resolution failed; keeping the last answer", "cluster", c.name, "name", t.name, "err", err)
		return false
	}
	t.lastOK = true
	var stats map[string]*HostStats
	if warm {
		stats = d.prevStats
	}
	removed, changed := c.applyLocked(t, addrs, stats)
	if changed {
		c.publishLocked()
	}
	d.mu.Unlock()
	c.Stats.UpdateSuccess.Inc()
	if changed {
		d.log.Debug("upstream: dns answer changed the hosts", "cluster", c.name, "name", t.name, "addresses", addrs)
	}
	// The new host set is published: the removed hosts get no new
	// requests, and a request that picked one just before closes its
	// connection at release.
	for _, h := range removed {
		h.removed.Store(true)
		h.drainIdle(false)
		h.drainMux(false)
	}
	return true
}

// applyLocked installs a good answer (non-empty) for t and reports the
// hosts it removed and whether the cluster's host set changed. A
// STRICT_DNS answer with the same addresses in another order changes
// nothing (many servers rotate their answers). d.mu is held.
func (c *Cluster) applyLocked(t *dnsTarget, addrs []netip.AddrPort, stats map[string]*HostStats) (removed []*Host, changed bool) {
	if c.dns.logical {
		a := addrs[0].String()
		if cur := t.host.dialTo.Load(); cur == nil || *cur != a {
			t.host.dialTo.Store(&a)
		}
		t.addrs = addrs
		if !t.resolved {
			t.resolved = true
			t.hosts = []*Host{t.host}
			return nil, true
		}
		return nil, false
	}
	if t.resolved && sameAddrs(t.addrs, addrs) {
		return nil, false
	}
	old := make(map[netip.AddrPort]*Host, len(t.hosts))
	for i, h := range t.hosts {
		old[t.addrs[i]] = h
	}
	hosts := make([]*Host, 0, len(addrs))
	for _, a := range addrs {
		if h := old[a]; h != nil {
			hosts = append(hosts, h)
			delete(old, a)
			continue
		}
		h := c.newHost(t.ep, a.String(), t.tls, stats)
		h.hostname = t.name
		hosts = append(hosts, h)
	}
	for _, a := range t.addrs {
		if h := old[a]; h != nil {
			removed = append(removed, h)
		}
	}
	t.resolved, t.addrs, t.hosts = true, addrs, hosts
	return removed, true
}

// publishLocked swaps in the host set of the targets' current hosts, in
// endpoint order, and updates the membership gauges of a running
// cluster. d.mu is held.
func (c *Cluster) publishLocked() {
	d := c.dns
	n := 0
	for _, t := range d.targets {
		n += len(t.hosts)
	}
	hosts := make([]*Host, 0, n)
	for _, t := range d.targets {
		hosts = append(hosts, t.hosts...)
	}
	hs := c.newHostSet(hosts)
	c.hs.Store(hs)
	if d.cancel != nil {
		c.Stats.MembershipTotal.Set(int64(len(hs.hosts)))
		c.Stats.MembershipHealthy.Set(int64(hs.healthy))
	}
}

// familyAddrs keeps the addresses of the lookup family, deduplicated, in
// answer order, with port.
func familyAddrs(family string, ips []netip.Addr, port uint16) []netip.AddrPort {
	var all, v4, v6 []netip.AddrPort
	for _, ip := range ips {
		ip = ip.Unmap()
		if !ip.IsValid() {
			continue
		}
		ap := netip.AddrPortFrom(ip, port)
		if slices.Contains(all, ap) {
			continue
		}
		all = append(all, ap)
		if ip.Is4() {
			v4 = append(v4, ap)
		} else {
			v6 = append(v6, ap)
		}
	}
	switch family {
	case config.DNSV4Only:
		return v4
	case config.DNSV6Only:
		return v6
	case config.DNSAuto:
		if len(v6) > 0 {
			return v6
		}
		return v4
	case config.DNSAll:
		return all
	default: // V4_PREFERRED
		if len(v4) > 0 {
			return v4
		}
		return v6
	}
}

// sameAddrs reports whether a and b hold the same addresses (both are
// deduplicated).
func sameAddrs(a, b []netip.AddrPort) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			return false
		}
	}
	return true
}

// SetResolver sets the resolver of the DNS clusters built from now on
// (nil: net.DefaultResolver). Clusters carried over keep theirs.
func (m *Manager) SetResolver(r Resolver) {
	m.mu.Lock()
	m.resolver = r
	m.mu.Unlock()
}

// SetDNSWarmup sets how long Build waits for the first answers of a new
// DNS cluster (DefaultDNSWarmup at first). With 0 Build does not resolve:
// the cluster's names are resolved once it is committed, and requests get
// no host until then (validation uses it, so it needs no DNS).
func (m *Manager) SetDNSWarmup(d time.Duration) {
	m.mu.Lock()
	m.dnsWarmup = d
	m.mu.Unlock()
}
