package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// fakeResolver answers from a table the test changes. Once gated, each
// lookup announces itself and waits for the test's step before it reads
// the table, so the test knows which answer a lookup returns and when it
// was applied.
type fakeResolver struct {
	mu       sync.Mutex
	answers  map[string][]netip.Addr
	errs     map[string]error
	networks []string
	gate     chan string   // announcements
	proceed  chan struct{} // the test's go-ahead
	parked   bool          // test side: a lookup announced itself and waits
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{answers: map[string][]netip.Addr{}, errs: map[string]error{}}
}

func (r *fakeResolver) set(name string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.errs, name)
	r.answers[name] = nil
	for _, a := range addrs {
		r.answers[name] = append(r.answers[name], netip.MustParseAddr(a))
	}
}

func (r *fakeResolver) fail(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs[name] = &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
}

// gated makes lookups wait for next.
func (r *fakeResolver) gated() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gate, r.proceed = make(chan string), make(chan struct{})
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	r.networks = append(r.networks, network)
	gate, proceed := r.gate, r.proceed
	r.mu.Unlock()
	if gate != nil {
		select {
		case gate <- host:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		select {
		case <-proceed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.errs[host]; err != nil {
		return nil, err
	}
	ips, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []netip.Addr
	for _, ip := range ips {
		if network == "ip" || (network == "ip4") == ip.Unmap().Is4() {
			out = append(out, ip)
		}
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no suitable address", Name: host}
	}
	return out, nil
}

// step lets the waiting lookup of name read the table, and returns once
// the lookup after it has announced itself: the first one's answer is
// applied by then. Waits are bounded so that a broken resolver loop fails
// the test instead of hanging it.
func (r *fakeResolver) step(t *testing.T, name string) {
	t.Helper()
	announced := func() {
		t.Helper()
		select {
		case got := <-r.gate:
			if got != name {
				t.Fatalf("lookup of %q, want %q", got, name)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no lookup of %q", name)
		}
	}
	if !r.parked {
		announced()
	}
	r.proceed <- struct{}{}
	announced()
	r.parked = true
}

func (r *fakeResolver) lookups() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.networks)
}

func dnsTestManager(t *testing.T, r *fakeResolver) *Manager {
	t.Helper()
	m, _ := newTestManager(t)
	m.SetResolver(r)
	return m
}

// dnsCluster is a DNS cluster refreshing every millisecond.
func dnsTestCluster(typ string, eps ...*config.Endpoint) *config.Cluster {
	return &config.Cluster{Name: "svc", Type: typ, Endpoints: eps,
		DNS: config.DNSOptions{RefreshRate: time.Millisecond, FailureRefreshBase: time.Millisecond, FailureRefreshMax: 2 * time.Millisecond}}
}

func hostAddrs(c *Cluster) []string {
	var out []string
	for _, h := range c.Hosts() {
		out = append(out, h.Address())
	}
	return out
}

func TestDNSLookupFamily(t *testing.T) {
	dual := []string{"10.0.0.1", "2001:db8::1", "::ffff:10.0.0.2", "10.0.0.1"}
	tests := []struct {
		family  string
		answer  []string
		network string
		want    []string
	}{
		{config.DNSV4Only, dual, "ip4", []string{"10.0.0.1:80", "10.0.0.2:80"}},
		{config.DNSV6Only, dual, "ip6", []string{"[2001:db8::1]:80"}},
		{config.DNSAuto, dual, "ip", []string{"[2001:db8::1]:80"}},
		{config.DNSAuto, []string{"10.0.0.1"}, "ip", []string{"10.0.0.1:80"}},
		{config.DNSV4Preferred, dual, "ip", []string{"10.0.0.1:80", "10.0.0.2:80"}},
		{config.DNSV4Preferred, []string{"2001:db8::1"}, "ip", []string{"[2001:db8::1]:80"}},
		{"", dual, "ip", []string{"10.0.0.1:80", "10.0.0.2:80"}},
		{config.DNSAll, dual, "ip", []string{"10.0.0.1:80", "[2001:db8::1]:80", "10.0.0.2:80"}},
		{config.DNSV6Only, []string{"10.0.0.1"}, "ip6", nil}, // no address of the family: no host
	}
	for _, tt := range tests {
		t.Run(tt.family+"/"+strings.Join(tt.answer, ","), func(t *testing.T) {
			r := newFakeResolver()
			r.set("svc.example", tt.answer...)
			m := dnsTestManager(t, r)
			cfg := dnsTestCluster(config.ClusterStrictDNS, ep("svc.example:80", 1))
			cfg.DNS.LookupFamily = tt.family
			c := commit(t, m, cfg).Get("svc")
			if got := hostAddrs(c); !slices.Equal(got, tt.want) {
				t.Fatalf("hosts %v, want %v", got, tt.want)
			}
			if got := r.lookups(); len(got) == 0 || got[0] != tt.network {
				t.Fatalf("looked up %v, want %q", got, tt.network)
			}
		})
	}
}

func TestStrictDNSRefresh(t *testing.T) {
	type step struct {
		answer []string // nil: the lookup fails
		want   []string
		fails  uint64 // update_failure after the step
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"address added and removed", []step{
			{[]string{"10.0.0.1", "10.0.0.2"}, []string{"10.0.0.1:80", "10.0.0.2:80"}, 0},
			{[]string{"10.0.0.2", "10.0.0.3"}, []string{"10.0.0.2:80", "10.0.0.3:80"}, 0},
			{[]string{"10.0.0.3"}, []string{"10.0.0.3:80"}, 0},
		}},
		{"failure keeps the last answer", []step{
			{[]string{"10.0.0.1", "10.0.0.2"}, []string{"10.0.0.1:80", "10.0.0.2:80"}, 0},
			{nil, []string{"10.0.0.1:80", "10.0.0.2:80"}, 1},
			{[]string{"10.0.0.2"}, []string{"10.0.0.2:80"}, 1},
		}},
		{"reordered answer changes nothing", []step{
			{[]string{"10.0.0.1", "10.0.0.2"}, []string{"10.0.0.1:80", "10.0.0.2:80"}, 0},
			{[]string{"10.0.0.2", "10.0.0.1"}, []string{"10.0.0.1:80", "10.0.0.2:80"}, 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newFakeResolver()
			r.set("svc.example", tt.steps[0].answer...)
			m := dnsTestManager(t, r)
			cfg := dnsTestCluster(config.ClusterStrictDNS, &config.Endpoint{Address: "svc.example:80", Weight: 3, Priority: 1, Healthy: true})
			set, err := m.Build([]*config.Cluster{cfg})
			if err != nil {
				t.Fatal(err)
			}
			c := set.Get("svc")
			r.gated()
			m.Commit(set)
			byAddr := map[string]*Host{}
			for i, s := range tt.steps {
				if i > 0 {
					if s.answer == nil {
						r.fail("svc.example")
					} else {
						r.set("svc.example", s.answer...)
					}
					before := c.hs.Load()
					r.step(t, "svc.example")
					if slices.Equal(hostAddrs(c), tt.steps[i-1].want) && c.hs.Load() != before {
						t.Errorf("step %d: unchanged hosts, yet a new host set", i)
					}
				}
				if got := hostAddrs(c); !slices.Equal(got, s.want) {
					t.Fatalf("step %d: hosts %v, want %v", i, got, s.want)
				}
				if n := c.Stats.UpdateFailure.Value(); n != s.fails {
					t.Fatalf("step %d: update_failure %d, want %d", i, n, s.fails)
				}
				if v := c.Stats.MembershipTotal.Value(); v != int64(len(s.want)) {
					t.Fatalf("step %d: membership_total %d, want %d", i, v, len(s.want))
				}
				if v := c.Stats.MembershipHealthy.Value(); v != int64(len(s.want)) {
					t.Fatalf("step %d: membership_healthy %d, want %d", i, v, len(s.want))
				}
				now := map[string]*Host{}
				for _, h := range c.Hosts() {
					if h.Weight() != 3 || h.Priority() != 1 || !h.Healthy() {
						t.Fatalf("step %d: host %s lost its endpoint's weight, priority or health", i, h.Address())
					}
					if prev := byAddr[h.Address()]; prev != nil && prev != h {
						t.Fatalf("step %d: host %s that stayed was replaced", i, h.Address())
					}
					if h.removed.Load() {
						t.Fatalf("step %d: current host %s marked removed", i, h.Address())
					}
					now[h.Address()] = h
				}
				for a, h := range byAddr {
					if now[a] == nil && !h.removed.Load() {
						t.Fatalf("step %d: dropped host %s not marked removed", i, a)
					}
				}
				byAddr = now
				if p := c.Pick(nil); p == nil || now[p.Address()] == nil {
					t.Fatalf("step %d: picked %v, not a current host", i, p)
				}
			}
			if n := c.Stats.UpdateSuccess.Value() + c.Stats.UpdateFailure.Value(); n > c.Stats.UpdateAttempt.Value() {
				t.Fatalf("%d results for %d attempts", n, c.Stats.UpdateAttempt.Value())
			}
		})
	}
}

func TestStrictDNSEndpoints(t *testing.T) {
	r := newFakeResolver()
	r.set("a.example", "10.0.0.1", "10.0.0.2")
	r.set("b.example", "10.0.1.1")
	m := dnsTestManager(t, r)
	cfg := dnsTestCluster(config.ClusterStrictDNS, ep("a.example:80", 1), ep("10.9.9.9:81", 1), ep("b.example:82", 5),
		ep("missing.example:83", 1))
	c := commit(t, m, cfg).Get("svc")
	want := []string{"10.0.0.1:80", "10.0.0.2:80", "10.9.9.9:81", "10.0.1.1:82"}
	if got := hostAddrs(c); !slices.Equal(got, want) {
		t.Fatalf("hosts %v, want %v", got, want)
	}
	if w := c.Hosts()[3].Weight(); w != 5 {
		t.Fatalf("weight %d, want the endpoint's 5", w)
	}
	// The literal address was not looked up: three names.
	if n := len(r.lookups()); n < 3 || c.Stats.UpdateFailure.Value() < 1 {
		t.Fatalf("%d lookups, %d failures", n, c.Stats.UpdateFailure.Value())
	}
}

func TestDNSNoHostBeforeFirstAnswer(t *testing.T) {
	r := newFakeResolver()
	m := dnsTestManager(t, r)
	set, err := m.Build([]*config.Cluster{dnsTestCluster(config.ClusterStrictDNS, ep("svc.example:80", 1))})
	if err != nil {
		t.Fatal(err)
	}
	c := set.Get("svc")
	if c.Pick(nil) != nil || len(c.Hosts()) != 0 {
		t.Fatal("a host before any answer")
	}
	r.gated()
	m.Commit(set)
	r.set("svc.example", "10.0.0.1")
	r.step(t, "svc.example")
	if h := c.Pick(nil); h == nil || h.Address() != "10.0.0.1:80" {
		t.Fatalf("picked %v after the first answer", h)
	}
}

func TestDNSWarmupDisabled(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.example", "10.0.0.1")
	m := dnsTestManager(t, r)
	m.SetDNSWarmup(0)
	if _, err := m.Build([]*config.Cluster{dnsTestCluster(config.ClusterStrictDNS, ep("svc.example:80", 1))}); err != nil {
		t.Fatal(err)
	}
	if n := len(r.lookups()); n != 0 {
		t.Fatalf("%d lookups by a Build without warm-up", n)
	}
}

func TestLogicalDNS(t *testing.T) {
	a, b := newTestServerPair(t)
	_, port, _ := net.SplitHostPort(a.addr())
	r := newFakeResolver()
	r.set("svc.example", "127.0.0.1", "127.0.0.2")
	m := dnsTestManager(t, r)
	set, err := m.Build([]*config.Cluster{dnsTestCluster(config.ClusterLogicalDNS, ep("svc.example:"+port, 1))})
	if err != nil {
		t.Fatal(err)
	}
	c := set.Get("svc")
	r.gated()
	m.Commit(set)
	if got := hostAddrs(c); len(got) != 1 || got[0] != "svc.example:"+port {
		t.Fatalf("hosts %v, want the one logical host", got)
	}
	h := c.Hosts()[0]
	if h.DialAddress() != a.addr() {
		t.Fatalf("dials %s, want the first address %s", h.DialAddress(), a.addr())
	}
	kept := mustAcquire(t, h)
	kept.Release(true)

	r.set("svc.example", "127.0.0.2", "127.0.0.1")
	r.step(t, "svc.example")
	if len(c.Hosts()) != 1 || c.Hosts()[0] != h || h.DialAddress() != b.addr() {
		t.Fatalf("after the change: hosts %v dialling %s, want the same host dialling %s", hostAddrs(c), h.DialAddress(), b.addr())
	}
	// The pooled connection to the old address is still used; a new one
	// goes to the new address.
	c1 := mustAcquire(t, h)
	if c1 != kept || !c1.Reused() {
		t.Fatal("the existing connection was not kept")
	}
	c2 := mustAcquire(t, h)
	if got := c2.NetConn().RemoteAddr().String(); got != b.addr() {
		t.Fatalf("new connection to %s, want %s", got, b.addr())
	}
	c1.Release(true)
	c2.Release(true)
	if a.accepted.Load() != 1 {
		t.Fatalf("old address accepted %d connections, want 1", a.accepted.Load())
	}
}

func TestStrictDNSRemovedHostDrains(t *testing.T) {
	a, b := newTestServerPair(t)
	_, port, _ := net.SplitHostPort(a.addr())
	r := newFakeResolver()
	r.set("svc.example", "127.0.0.1", "127.0.0.2")
	m := dnsTestManager(t, r)
	set, err := m.Build([]*config.Cluster{dnsTestCluster(config.ClusterStrictDNS, ep("svc.example:"+port, 1))})
	if err != nil {
		t.Fatal(err)
	}
	c := set.Get("svc")
	r.gated()
	m.Commit(set)
	var ha, hb *Host
	for _, h := range c.Hosts() {
		switch h.Address() {
		case a.addr():
			ha = h
		case b.addr():
			hb = h
		}
	}
	if ha == nil || hb == nil {
		t.Fatalf("hosts %v", hostAddrs(c))
	}
	idle := mustAcquire(t, ha)
	busy := mustAcquire(t, ha)
	idle.Release(true)
	kept := mustAcquire(t, hb)
	kept.Release(true)

	r.set("svc.example", "127.0.0.2")
	r.step(t, "svc.example")
	if got := hostAddrs(c); !slices.Equal(got, []string{b.addr()}) {
		t.Fatalf("hosts %v, want only %s", got, b.addr())
	}
	if ha.IdleConns() != 0 {
		t.Fatal("the removed host kept its idle connection")
	}
	busy.Release(true)
	if ha.IdleConns() != 0 || ha.Stats.CxActive.Load() != 0 {
		t.Fatalf("the removed host pooled a released connection (%d idle, %d active)", ha.IdleConns(), ha.Stats.CxActive.Load())
	}
	if hb.IdleConns() != 1 {
		t.Fatal("the host that stayed lost its idle connection")
	}
}

func TestDNSRetireStopsResolver(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.example", "10.0.0.1")
	m := dnsTestManager(t, r)
	cfg := dnsTestCluster(config.ClusterStrictDNS, ep("svc.example:80", 1))
	set, err := m.Build([]*config.Cluster{cfg})
	if err != nil {
		t.Fatal(err)
	}
	c := set.Get("svc")
	r.gated()
	m.Commit(set)
	r.set("svc.example", "10.0.0.2")
	r.step(t, "svc.example")

	// An unchanged config keeps the cluster, its answers and its resolver.
	set2, err := m.Build([]*config.Cluster{dnsTestCluster(config.ClusterStrictDNS, ep("svc.example:80", 1))})
	if err != nil {
		t.Fatal(err)
	}
	if set2.Get("svc") != c {
		t.Fatal("an unchanged DNS cluster was rebuilt")
	}
	m.Commit(set2)
	r.step(t, "svc.example") // still resolving
	if got := hostAddrs(c); !slices.Equal(got, []string{"10.0.0.2:80"}) {
		t.Fatalf("kept cluster's hosts %v", got)
	}

	// A changed config replaces it: the new cluster starts from the old
	// one's answer when its own lookup fails, with the hosts' stats.
	c.Hosts()[0].RequestStarted()
	c.Hosts()[0].RequestDone()
	r.fail("svc.example")
	changed := dnsTestCluster(config.ClusterStrictDNS, ep("svc.example:80", 2))
	m.SetDNSWarmup(time.Nanosecond)
	set3, err := m.Build([]*config.Cluster{changed})
	if err != nil {
		t.Fatal(err)
	}
	c3 := set3.Get("svc")
	if got := hostAddrs(c3); !slices.Equal(got, []string{"10.0.0.2:80"}) {
		t.Fatalf("replacing cluster's hosts %v, want the last answer", got)
	}
	if c3.Hosts()[0].Stats != c.Hosts()[0].Stats {
		t.Fatal("host stats not carried over")
	}
	m.Commit(set3)
	waitDNSStopped(t, c)
	m.Commit(nil)
	waitDNSStopped(t, c3)
	// wg.Done runs in the goroutine's last deferred call: it may still be
	// on its way out when Wait returns, so look again for a while.
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		n := runtime.Stack(buf, true)
		if !strings.Contains(string(buf[:n]), "resolveLoop") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a resolver goroutine is left:\n%s", buf[:n])
		}
	}
}

// A cluster retired by one Commit and brought back by the next resolves
// again.
func TestDNSRevivedClusterResolves(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.example", "10.0.0.1")
	m := dnsTestManager(t, r)
	set, err := m.Build([]*config.Cluster{dnsTestCluster(config.ClusterStrictDNS, ep("svc.example:80", 1))})
	if err != nil {
		t.Fatal(err)
	}
	c := set.Get("svc")
	r.gated()
	m.Commit(set)
	r.step(t, "svc.example")
	m.Commit(nil)
	waitDNSStopped(t, c)
	r.parked = false // the parked lookup was cancelled
	m.Commit(set)
	r.set("svc.example", "10.0.0.3")
	r.step(t, "svc.example")
	if got := hostAddrs(c); !slices.Equal(got, []string{"10.0.0.3:80"}) {
		t.Fatalf("revived cluster's hosts %v", got)
	}
}

// waitDNSStopped waits for a retired cluster's resolver goroutines to end;
// the bound only turns a leak into a failure instead of a hang.
func waitDNSStopped(t *testing.T, c *Cluster) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		c.dns.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the resolver goroutines did not stop")
	}
}

func TestDNSPickDoesNotAllocate(t *testing.T) {
	r := newFakeResolver()
	r.set("svc.example", "10.0.0.1", "10.0.0.2")
	m := dnsTestManager(t, r)
	c := commit(t, m, dnsTestCluster(config.ClusterStrictDNS, ep("svc.example:80", 1))).Get("svc")
	var lb LBContext
	if n := testing.AllocsPerRun(100, func() { c.Pick(&lb) }); n != 0 {
		t.Fatalf("%v allocations per pick", n)
	}
}

func TestDNSConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*config.Cluster)
		want string
	}{
		{"negative refresh", func(c *config.Cluster) { c.DNS.RefreshRate = -1 }, "negative dns_refresh_rate"},
		{"max below base", func(c *config.Cluster) { c.DNS.FailureRefreshMax = time.Microsecond }, "below base_interval"},
		{"family", func(c *config.Cluster) { c.DNS.LookupFamily = "V5" }, "unknown dns_lookup_family"},
		{"logical endpoints", func(c *config.Cluster) {
			c.Type = config.ClusterLogicalDNS
			c.Endpoints = append(c.Endpoints, ep("b.example:80", 1))
		}, "exactly one endpoint"},
		{"unix", func(c *config.Cluster) { c.Endpoints = []*config.Endpoint{ep("unix:/tmp/x.sock", 1)} }, "unix socket endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := dnsTestManager(t, newFakeResolver())
			cfg := dnsTestCluster(config.ClusterStrictDNS, ep("a.example:80", 1))
			tt.mod(cfg)
			_, err := m.Build([]*config.Cluster{cfg})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestDNSFailureBackoff(t *testing.T) {
	d := &dnsCluster{failBase: 100 * time.Millisecond, failMax: time.Second}
	for n, hi := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		hi *= time.Millisecond
		if w := d.failureDelay(n); w < hi/2 || w > hi {
			t.Fatalf("failure %d: wait %v, want within [%v, %v]", n+1, w, hi/2, hi)
		}
	}
}

func TestDNSRealResolverLocalhost(t *testing.T) {
	m, _ := newTestManager(t)
	cfg := &config.Cluster{Name: "local", Type: config.ClusterStrictDNS, Endpoints: []*config.Endpoint{ep("localhost:8080", 1)}}
	c := commit(t, m, cfg).Get("local")
	if len(c.Hosts()) == 0 {
		t.Skip("localhost does not resolve here")
	}
	for _, h := range c.Hosts() {
		ap, err := netip.ParseAddrPort(h.Address())
		if err != nil || !ap.Addr().IsLoopback() || ap.Port() != 8080 {
			t.Fatalf("host %s is not a loopback address with the endpoint's port", h.Address())
		}
	}
}

// newTestServerPair listens on 127.0.0.1 and 127.0.0.2 with the same
// port (a DNS answer has no port), or skips the test.
func newTestServerPair(t *testing.T) (*testServer, *testServer) {
	t.Helper()
	for range 20 {
		a := newTestServerAt(t, "127.0.0.1:0")
		_, port, _ := net.SplitHostPort(a.addr())
		ln, err := net.Listen("tcp", "127.0.0.2:"+port)
		if err == nil {
			return a, serveTest(t, ln)
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Skipf("cannot listen on 127.0.0.2: %v", err)
		}
	}
	t.Skip("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil
}
