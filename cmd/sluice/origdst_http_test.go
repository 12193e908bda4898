package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/xds"
)

// Istio's ALLOW_ANY outbound: a listener with the original_dst filter whose
// HTTP route goes to PassthroughCluster, an ORIGINAL_DST cluster.
const origDstHTTPBootstrapYAML = `
static_resources:
  listeners:
  - name: outbound
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - name: allow_any
              domains: ["*"]
              routes:
              - match: { prefix: "/mirrored/" }
                route:
                  cluster: PassthroughCluster
                  request_mirror_policies: [{ cluster: PassthroughCluster }]
              - match: { prefix: "/" }
                route: { cluster: PassthroughCluster }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
`

func TestOriginalDstHTTPE2E(t *testing.T) {
	var conns, shadows atomic.Int64
	origin := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host == "external.example-shadow" {
			shadows.Add(1)
		}
		io.WriteString(w, "origin "+r.Host+r.URL.Path)
	}))
	origin.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	origin.Start()
	t.Cleanup(origin.Close)
	originAddr := netip.MustParseAddrPort(origin.Listener.Addr().String())

	// The redirect iptables would do: connections from 127.0.0.1 were for
	// the origin; those from 127.0.0.4 were not redirected (a client
	// connecting to the proxy's port itself), so their destination is the
	// proxy's own address.
	restore := server.SetOriginalDstLookup(func(c net.Conn) (netip.AddrPort, error) {
		if c.RemoteAddr().(*net.TCPAddr).IP.Equal(net.IPv4(127, 0, 0, 4)) {
			return c.LocalAddr().(*net.TCPAddr).AddrPort(), nil
		}
		return originAddr, nil
	})
	t.Cleanup(restore)

	snap, err := xds.LoadBootstrap([]byte(origDstHTTPBootstrapYAML), "origdst.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, snap)
	proxy := srv.ListenerAddr("outbound").String()

	client := func(src string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp", proxy) },
		}}
	}
	get := func(c *http.Client, url string) (int, string) {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// Several keep-alive requests, and requests on new downstream
	// connections: one upstream connection, reused.
	mesh := client("127.0.0.1")
	for i := range 5 {
		code, body := get(mesh, fmt.Sprintf("http://external.example/r%d", i))
		if want := fmt.Sprintf("origin external.example/r%d", i); code != 200 || body != want {
			t.Fatalf("request %d: %d %q, want 200 %q", i, code, body, want)
		}
		if i == 2 {
			mesh.CloseIdleConnections()
		}
		// The proxy gives the upstream connection back to its pool just
		// after the response is written: wait for that before the next
		// request, or it may (rightly) open a second connection.
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, st := get(http.DefaultClient, "http://"+srv.AdminAddr()+"/stats?filter=PassthroughCluster.upstream_rq_active")
			if statValue(st, "cluster.PassthroughCluster.upstream_rq_active") == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("origin saw %d connections for 5 requests, want 1 (pooled)", n)
	}

	// Not redirected: the destination is the proxy itself.
	code, body := get(client("127.0.0.4"), "http://loop.example/")
	if code != 503 {
		t.Errorf("request to the proxy's own address: %d %q, want 503", code, body)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("origin saw %d connections, want 1", n)
	}

	_, stats := get(http.DefaultClient, "http://"+srv.AdminAddr()+"/stats")
	for name, want := range map[string]int{
		"cluster.PassthroughCluster.upstream_cx_total": 1,
		"cluster.PassthroughCluster.upstream_rq_total": 5,
		"cluster.PassthroughCluster.membership_total":  1,
	} {
		if got := statValue(stats, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	if t.Failed() {
		t.Logf("stats:\n%s", grepLines(stats, "PassthroughCluster"))
	}

	// A mirror to the ORIGINAL_DST cluster goes to the same original
	// destination, with Envoy's "-shadow" authority.
	if code, body := get(mesh, "http://external.example/mirrored/x"); code != 200 || body != "origin external.example/mirrored/x" {
		t.Fatalf("mirrored request: %d %q", code, body)
	}
	for deadline := time.Now().Add(5 * time.Second); shadows.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := shadows.Load(); n != 1 {
		t.Errorf("the origin saw %d shadow requests, want 1", n)
	}
}
