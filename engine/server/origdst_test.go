package server

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// taggedOrigin writes tag, then closes.
func taggedOrigin(t *testing.T, tag string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.WriteString(c, tag)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// Istio's virtualOutbound: a listener restores each connection's original
// destination and hands it to the listener of that address (bind_to_port
// false, exact or wildcard address), or serves it itself, here with an
// ORIGINAL_DST cluster that dials the original destination. The
// redirect is simulated: the original destination lookup is replaced.
func TestOriginalDstHandOff(t *testing.T) {
	var target atomic.Pointer[netip.AddrPort]
	orig := originalDst
	t.Cleanup(func() { originalDst = orig })
	originalDst = func(net.Conn) (netip.AddrPort, error) {
		if p := target.Load(); p != nil {
			return *p, nil
		}
		return netip.AddrPort{}, errors.New("no conntrack entry")
	}

	a := taggedOrigin(t, "A")          // reached through the passthrough cluster
	b := taggedOrigin(t, "B")          // what the wildcard listener proxies to
	c := taggedOrigin(t, "C")          // what the exact listener proxies to
	exact := taggedOrigin(t, "unused") // the address the exact listener claims
	wildPort := netip.MustParseAddrPort(taggedOrigin(t, "unused")).Port()

	tcp := func(prefix, cluster string) []*config.FilterChain {
		return []*config.FilterChain{{TCP: &config.TCPProxy{StatPrefix: prefix, Cluster: cluster}}}
	}
	static := func(name, addr string) *config.Cluster {
		return &config.Cluster{Name: name, Type: "STATIC", Endpoints: []*config.Endpoint{{Address: addr, Healthy: true}}}
	}
	snap := &config.Snapshot{
		Clusters: []*config.Cluster{{Name: "passthrough", Type: config.ClusterOriginalDst}, static("to_b", b), static("to_c", c)},
		Listeners: []*config.Listener{
			{Name: "virtual", Address: "127.0.0.1:0", OriginalDst: true, UseOriginalDst: true, FilterChains: tcp("passthrough", "passthrough")},
			{Name: "exact", Address: exact, NoBind: true, FilterChains: tcp("exact", "to_c")},
			{Name: "wild", Address: netip.AddrPortFrom(netip.IPv4Unspecified(), wildPort).String(), NoBind: true, FilterChains: tcp("wild", "to_b")},
		},
	}
	srv := New(Options{Registry: testRegistry(), Log: slog.New(slog.DiscardHandler), AdminAddress: "off", DrainTimeout: time.Second})
	if err := srv.Apply(snap); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if srv.ListenerAddr("exact") != nil || srv.ListenerAddr("wild") != nil {
		t.Fatal("a bind_to_port false listener was bound")
	}
	virtual := srv.ListenerAddr("virtual").String()

	tests := []struct {
		name string
		dst  string // "" : not redirected
		want string
	}{
		{"no listener: passthrough", a, "A"},
		{"exact listener", exact, "C"},
		{"wildcard listener", "127.0.0.1:" + strconv.Itoa(int(wildPort)), "B"},
		{"not redirected: refused, no loop", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.dst == "" {
				target.Store(nil)
			} else {
				ap := netip.MustParseAddrPort(tt.dst)
				target.Store(&ap)
			}
			conn, err := net.Dial("tcp", virtual)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(conn)
			if err != nil || string(got) != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if n := srv.Stats().Scope("cluster.passthrough.", "").Counter("upstream_cx_total").Value(); n != 1 {
		t.Errorf("passthrough upstream_cx_total = %d, want 1 (the unredirected connection must not dial)", n)
	}
}
