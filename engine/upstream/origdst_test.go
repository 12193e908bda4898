package upstream

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

func origDstCluster(t *testing.T, mod ...func(*config.Cluster)) *Cluster {
	t.Helper()
	m, _ := newTestManager(t)
	cfg := &config.Cluster{Name: "passthrough", Type: config.ClusterOriginalDst}
	for _, f := range mod {
		f(cfg)
	}
	c := commit(t, m, cfg).Get("passthrough")
	if !c.OriginalDst() {
		t.Fatal("not an ORIGINAL_DST cluster")
	}
	return c
}

func TestOriginalDstPooledMadeOnDemandAndReused(t *testing.T) {
	srv := newTestServer(t)
	c := origDstCluster(t)
	if c.Pick(&LBContext{}) != nil {
		t.Fatal("Pick found a host in an ORIGINAL_DST cluster")
	}
	dst := netip.MustParseAddrPort(srv.addr())
	h, err := c.OriginalDstPooled(netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())) // v4-mapped
	if err != nil {
		t.Fatal(err)
	}
	if h.Address() != srv.addr() {
		t.Fatalf("host address %q, want %q", h.Address(), srv.addr())
	}
	if h2, _ := c.OriginalDstPooled(dst); h2 != h {
		t.Fatal("a second request to the same destination got another host")
	}
	if n := c.OriginalDstHosts(); n != 1 {
		t.Fatalf("%d hosts, want 1", n)
	}
	if v := c.Stats.MembershipTotal.Value(); v != 1 {
		t.Fatalf("membership_total %d, want 1", v)
	}
	for range 3 {
		conn, err := h.AcquireDeadline(time.Now().Add(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		conn.Release(true)
	}
	eventually(t, "the connection accepted", func() bool { return srv.accepted.Load() >= 1 })
	if n := srv.accepted.Load(); n != 1 {
		t.Fatalf("server accepted %d connections, want 1 (pooled)", n)
	}
	if v := c.Stats.CxTotal.Value(); v != 1 {
		t.Fatalf("upstream_cx_total %d, want 1", v)
	}
	other, err := c.OriginalDstPooled(netip.MustParseAddrPort("127.0.0.1:1"))
	if err != nil || other == h {
		t.Fatalf("another destination: %v, same host %v", err, other == h)
	}
	if list := c.OriginalDstHostList(); len(list) != 2 || list[0] != other || list[1] != h {
		t.Fatalf("host list %v, want 127.0.0.1:1 then %s (for /clusters)", list, h.Address())
	}
}

func TestOriginalDstPooledRefusals(t *testing.T) {
	c := origDstCluster(t)
	for _, dst := range []netip.AddrPort{{}, netip.MustParseAddrPort("0.0.0.0:80"), netip.MustParseAddrPort("10.0.0.1:0")} {
		if _, err := c.OriginalDstPooled(dst); err == nil {
			t.Errorf("%v: no error", dst)
		}
	}
	m, _ := newTestManager(t)
	plain := commit(t, m, &config.Cluster{Name: "a", Endpoints: []*config.Endpoint{ep("127.0.0.1:1", 1)}}).Get("a")
	if _, err := plain.OriginalDstPooled(netip.MustParseAddrPort("127.0.0.1:1")); !errors.Is(err, ErrNotOriginalDst) {
		t.Fatalf("ordinary cluster: %v", err)
	}
}

func TestOriginalDstCleanup(t *testing.T) {
	srv := newTestServer(t)
	c := origDstCluster(t)
	dst := netip.MustParseAddrPort(srv.addr())
	h, _ := c.OriginalDstPooled(dst)
	conn, err := h.AcquireDeadline(time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	now := monoNow() + int64(DefaultCleanupInterval)
	// Busy and used: kept.
	c.sweepOriginalDst(now)
	c.sweepOriginalDst(now + int64(DefaultCleanupInterval))
	if c.OriginalDstHosts() != 1 {
		t.Fatal("a host with a request in flight was removed")
	}
	conn.Release(true)
	if h.IdleConns() != 1 {
		t.Fatal("the connection was not kept idle")
	}
	// Picked since the last pass: kept; then unused for a whole interval:
	// removed, its idle connection closed.
	c.OriginalDstPooled(dst)
	now += 2 * int64(DefaultCleanupInterval)
	c.sweepOriginalDst(now)
	if c.OriginalDstHosts() != 1 {
		t.Fatal("a host used in the last interval was removed")
	}
	c.sweepOriginalDst(now + 1) // not due yet
	if c.OriginalDstHosts() != 1 {
		t.Fatal("cleanup ran before the interval ended")
	}
	c.sweepOriginalDst(now + int64(DefaultCleanupInterval))
	if c.OriginalDstHosts() != 0 || c.Stats.MembershipTotal.Value() != 0 {
		t.Fatalf("unused host kept: %d hosts", c.OriginalDstHosts())
	}
	eventually(t, "idle connection closed", func() bool { return c.Stats.CxActive.Value() == 0 && h.IdleConns() == 0 })
	if h2, _ := c.OriginalDstPooled(dst); h2 == h {
		t.Fatal("a removed host came back")
	}
}

func TestOriginalDstIdleTimeout(t *testing.T) {
	srv := newTestServer(t)
	c := origDstCluster(t, func(cfg *config.Cluster) { cfg.IdleTimeout = 20 * time.Millisecond })
	h, _ := c.OriginalDstPooled(netip.MustParseAddrPort(srv.addr()))
	conn, err := h.AcquireDeadline(time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	conn.Release(true)
	// The manager's reaper closes it; the host stays (used this interval).
	eventually(t, "idle timeout", func() bool { return c.Stats.CxIdleTimeout.Value() == 1 && h.IdleConns() == 0 })
	if c.OriginalDstHosts() != 1 {
		t.Fatal("host removed before its cleanup interval")
	}
}

func TestOriginalDstMaxConnections(t *testing.T) {
	srv := newTestServer(t)
	c := origDstCluster(t, limits(config.CircuitBreakers{MaxConnections: 1, MaxPendingRequests: 1}))
	a, _ := c.OriginalDstPooled(netip.MustParseAddrPort(srv.addr()))
	conn, err := a.AcquireDeadline(time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release(false)
	// Another destination shares the cluster's max_connections.
	b, _ := c.OriginalDstPooled(netip.MustParseAddrPort("127.0.0.2:" + srv.addr()[len("127.0.0.1:"):]))
	if _, err := b.AcquireDeadline(time.Now().Add(50 * time.Millisecond)); err == nil {
		t.Fatal("a second connection past max_connections")
	}
}

func TestOriginalDstConcurrent(t *testing.T) {
	srv := newTestServer(t)
	c := origDstCluster(t)
	dst := netip.MustParseAddrPort(srv.addr())
	var wg sync.WaitGroup
	hosts := make([]*Host, 16)
	stop, last := make(chan struct{}), make(chan int64)
	go func() {
		now := monoNow()
		for {
			select {
			case <-stop:
				last <- now
				return
			default:
			}
			now += int64(DefaultCleanupInterval)
			c.sweepOriginalDst(now)
		}
	}()
	for i := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				h, err := c.OriginalDstPooled(dst)
				if err != nil {
					t.Error(err)
					return
				}
				conn, err := h.AcquireDeadline(time.Now().Add(5 * time.Second))
				if err != nil {
					t.Error(err)
					return
				}
				conn.Release(true)
				hosts[i] = h
			}
		}()
	}
	wg.Wait()
	close(stop)
	now := <-last
	for k := 1; k <= 3; k++ {
		c.sweepOriginalDst(now + int64(k)*int64(DefaultCleanupInterval))
	}
	if c.OriginalDstHosts() != 0 {
		t.Fatalf("%d hosts left after cleanup", c.OriginalDstHosts())
	}
	eventually(t, "every connection closed", func() bool { return c.Stats.CxActive.Value() == 0 })
}
