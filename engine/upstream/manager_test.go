package upstream

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
)

func TestBuildErrors(t *testing.T) {
	good := func() *config.Cluster {
		return &config.Cluster{Name: "api", Endpoints: []*config.Endpoint{ep("10.0.0.1:80", 1)}}
	}
	with := func(f func(*config.Cluster)) []*config.Cluster {
		c := good()
		f(c)
		return []*config.Cluster{c}
	}
	tests := []struct {
		name     string
		clusters []*config.Cluster
		want     string
	}{
		{"nil", []*config.Cluster{nil}, `upstream: cluster 0: nil`},
		{"no name", with(func(c *config.Cluster) { c.Name = "" }), `upstream: cluster 0: empty name`},
		{"duplicate", []*config.Cluster{good(), good()}, `upstream: cluster "api": defined twice`},
		{"missing port", with(func(c *config.Cluster) {
			c.Endpoints = append(c.Endpoints, ep("10.0.0.2:80", 1), ep("x", 1))
		}), `upstream: cluster "api": endpoint 2: bad address "x": missing port in address`},
		{"bad port", with(func(c *config.Cluster) { c.Endpoints[0].Address = "10.0.0.1:http" }), `endpoint 0: bad address "10.0.0.1:http": bad port "http"`},
		{"port 0", with(func(c *config.Cluster) { c.Endpoints[0].Address = "10.0.0.1:0" }), `bad port "0"`},
		{"no host", with(func(c *config.Cluster) { c.Endpoints[0].Address = ":80" }), `missing host`},
		{"static needs ip", with(func(c *config.Cluster) { c.Type = "STATIC"; c.Endpoints[0].Address = "api.local:80" }), `STATIC cluster needs an IP`},
		{"nil endpoint", with(func(c *config.Cluster) { c.Endpoints[0] = nil }), `endpoint 0: nil`},
		{"unknown codec", with(func(c *config.Cluster) { c.Protocol = "h3" }), `upstream: cluster "api": unknown protocol "h3"`},
		{"unknown lb", with(func(c *config.Cluster) { c.LBPolicy = "fastest" }), `unknown lb_policy "fastest"`},
		{"maglev not prime", with(func(c *config.Cluster) { c.MaglevTableSize = 65536 }), `maglev table_size 65536`},
		{"ring min over max", with(func(c *config.Cluster) { c.RingHashMinSize, c.RingHashMaxSize = 100, 10 }), `minimum_ring_size 100 is over`},
		{"ring too big", with(func(c *config.Cluster) { c.RingHashMaxSize = 1 << 30 }), `maximum_ring_size`},
		{"choices", with(func(c *config.Cluster) { c.LeastRequestCount = 1 }), `choice_count 1`},
		{"negative timeout", with(func(c *config.Cluster) { c.ConnectTimeout = -time.Second }), `negative connect_timeout`},
		{"negative breaker", with(func(c *config.Cluster) { c.CircuitBreakers.MaxPendingRequests = -1 }), `negative max_pending_requests -1`},
		{"budget", with(func(c *config.Cluster) { c.CircuitBreakers.RetryBudgetPercent = 150 }), `budget_percent 150`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := newTestManager(t)
			set, err := m.Build(tt.clusters)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
			if set != nil {
				t.Fatal("a set with an error")
			}
		})
	}
}

func TestBuildDefaults(t *testing.T) {
	m, _ := newTestManager(t)
	c := commit(t, m, &config.Cluster{Name: "d", Endpoints: []*config.Endpoint{{Address: "[::1]:8080"}}}).Get("d")
	if c.Protocol() != "http1" || c.LBPolicy() != config.LBRoundRobin || c.dialer.Timeout != DefaultConnectTimeout || c.idleTimeout != int64(DefaultIdleTimeout) {
		t.Fatal("defaults")
	}
	if mc, mp, mr, mrt := c.Limits(); mc != 1024 || mp != 1024 || mr != 1024 || mrt != 3 {
		t.Fatal("breaker defaults")
	}
	if h := c.Hosts()[0]; h.Weight() != 1 || h.Healthy() || h.Address() != "[::1]:8080" || h.Cluster() != c {
		t.Fatal("host defaults")
	}
}

func TestBuildReuseAndRetire(t *testing.T) {
	srv := newTestServer(t)
	m, store := newTestManager(t)
	cfgs := func(weightB uint32, withC bool) []*config.Cluster {
		out := []*config.Cluster{
			{Name: "b", Endpoints: []*config.Endpoint{ep(srv.addr(), weightB)}},
			{Name: "a", Endpoints: []*config.Endpoint{ep(srv.addr(), 1)}},
		}
		if withC {
			out = append(out, &config.Cluster{Name: "c", Endpoints: []*config.Endpoint{ep(srv.addr(), 1)}})
		}
		return out
	}
	s1 := commit(t, m, cfgs(1, true)...)
	if m.Current() != s1 || s1.Len() != 3 || s1.Get("nope") != nil {
		t.Fatal("current set")
	}
	names := ""
	for _, c := range s1.Clusters() {
		names += c.Name()
	}
	if names != "abc" {
		t.Fatalf("Clusters() order %q", names)
	}
	a1, b1, c1 := s1.Get("a"), s1.Get("b"), s1.Get("c")

	// Pool some connections: an idle one on b and c, a busy one on c.
	bIdle := mustAcquire(t, b1.Hosts()[0])
	bIdle.Release(true)
	cIdle := mustAcquire(t, c1.Hosts()[0])
	cBusy := mustAcquire(t, c1.Hosts()[0])
	cIdle.Release(true)
	b1.Hosts()[0].RequestStarted()

	// Same config (fresh copies): everything is reused.
	s2, err := m.Build(cfgs(1, true))
	if err != nil {
		t.Fatal(err)
	}
	if s2.Get("a") != a1 || s2.Get("b") != b1 || s2.Get("c") != c1 {
		t.Fatal("unchanged clusters not reused")
	}
	if m.Current() != s1 {
		t.Fatal("Build changed the current set")
	}

	// b changes, c goes away.
	s3, err := m.Build(cfgs(5, false))
	if err != nil {
		t.Fatal(err)
	}
	b3 := s3.Get("b")
	if s3.Get("a") != a1 || b3 == b1 || s3.Get("c") != nil {
		t.Fatal("changed cluster reused")
	}
	if b1.Removed() || c1.Removed() {
		t.Fatal("Build retired clusters")
	}
	m.Commit(s3)
	if !b1.Removed() || !c1.Removed() || a1.Removed() || b3.Removed() {
		t.Fatal("Removed() after Commit")
	}
	// c: idle connection closed now, busy one when released.
	if !cIdle.cc.(*fakeConn).closed.Load() || cBusy.cc.(*fakeConn).closed.Load() {
		t.Fatal("retiring c")
	}
	cBusy.Release(true)
	if !cBusy.cc.(*fakeConn).closed.Load() || c1.cx.count.Load() != 0 {
		t.Fatal("busy connection of a removed cluster not closed on release")
	}
	// b: its idle connection moved to the new b's host, stats carried over.
	nb := b3.Hosts()[0]
	if nb.IdleConns() != 1 || b1.Hosts()[0].IdleConns() != 0 || b1.cx.count.Load() != 0 || b3.cx.count.Load() != 1 {
		t.Fatal("idle connection not handed over")
	}
	if nb.Stats != b1.Hosts()[0].Stats || nb.ActiveRequests() != 1 {
		t.Fatal("host stats not carried over")
	}
	if got := mustAcquire(t, nb); got != bIdle || got.Host() != nb || !got.Reused() {
		t.Fatal("handed-over connection not reused")
	} else {
		got.Release(true)
	}
	// Stats live in the store under Envoy names, shared by old and new b.
	if b3.Stats.CxTotal != b1.Stats.CxTotal || b3.Stats.CxActive.Value() != 1 {
		t.Fatalf("cx_active %d", b3.Stats.CxActive.Value())
	}
	found := false
	for _, mt := range store.Metrics() {
		if mt.Name == "cluster.b.upstream_cx_total" {
			found = mt.PromName == "envoy_cluster_upstream_cx_total" && len(mt.Labels) == 1 &&
				mt.Labels[0] == (observe.Label{Name: "envoy_cluster_name", Value: "b"}) && mt.Value == 1
		}
	}
	if !found {
		t.Fatal("cluster.b.upstream_cx_total not in the store")
	}
	if b3.Stats.MembershipTotal.Value() != 1 || b3.Stats.MembershipHealthy.Value() != 1 {
		t.Fatal("membership gauges")
	}

	// Committing the old set again brings its clusters back.
	m.Commit(s1)
	if c1.Removed() || b1.Removed() || !b3.Removed() {
		t.Fatal("revive")
	}
	m.Commit(nil)
	if m.Current().Len() != 0 || !a1.Removed() {
		t.Fatal("empty commit")
	}
}

func TestBuildConfigIsCopied(t *testing.T) {
	m, _ := newTestManager(t)
	cfg := &config.Cluster{Name: "a", Endpoints: []*config.Endpoint{ep("10.0.0.1:80", 1)}}
	a := commit(t, m, cfg).Get("a")
	cfg.Endpoints[0].Weight = 9 // caller reuses its struct for the next snapshot
	s, err := m.Build([]*config.Cluster{cfg})
	if err != nil {
		t.Fatal(err)
	}
	if s.Get("a") == a || a.Config().Endpoints[0].Weight != 1 {
		t.Fatal("config aliasing")
	}
}

func TestRecordResponse(t *testing.T) {
	m, store := newTestManager(t)
	c := commit(t, m, &config.Cluster{Name: "api"}).Get("api")
	c.RecordResponse(200, 3*time.Millisecond)
	c.RecordResponse(204, time.Millisecond)
	c.RecordResponse(503, 10*time.Millisecond)
	c.RecordResponse(999, -1)
	if c.Stats.Rq2xx.Value() != 2 || c.Stats.Rq5xx.Value() != 1 || c.Stats.RqTime.Count() != 3 {
		t.Fatal("class counters")
	}
	vals := map[string]float64{}
	for _, mt := range store.Metrics() {
		vals[mt.Name] = mt.Value
	}
	if vals["cluster.api.upstream_rq_200"] != 1 || vals["cluster.api.upstream_rq_503"] != 1 {
		t.Fatalf("per-code counters: %v", vals)
	}
	for _, name := range []string{"upstream_cx_connect_timeout", "upstream_rq_pending_active", "upstream_rq_per_try_timeout", "circuit_breakers.default.rq_retry_open"} {
		if _, ok := vals["cluster.api."+name]; !ok {
			t.Errorf("missing %s", name)
		}
	}
}

func TestConnectErrorMatching(t *testing.T) {
	e := &ConnectError{Addr: "1.2.3.4:80", Timeout: true, Err: errors.New("i/o timeout")}
	if !errors.Is(e, ErrConnectFailure) || !errors.Is(e, ErrConnectTimeout) || e.Error() != "upstream: connect timeout to 1.2.3.4:80: i/o timeout" {
		t.Fatal(e)
	}
}
