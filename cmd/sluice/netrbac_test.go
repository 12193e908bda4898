package main

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/xds"
)

// netRBACBootstrap is a TCP listener with the network RBAC filter before
// tcp_proxy: connections from 127.0.0.2 are denied; shadow rules deny
// every connection, counting only.
const netRBACBootstrap = `
static_resources:
  listeners:
  - name: tcp
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp.
          shadow_rules_stat_prefix: dry_
          rules:
            action: DENY
            policies:
              "ns[default]-policy[block]-rule[0]":
                permissions: [{ any: true }]
                principals: [{ source_ip: { address_prefix: 127.0.0.2, prefix_len: 32 } }]
          shadow_rules:
            action: DENY
            policies:
              all: { permissions: [{ any: true }], principals: [{ any: true }] }
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: plain
          cluster: echo
  clusters:
  - name: echo
    connect_timeout: 2s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %s } } }
`

// The network RBAC filter end to end: an allowed connection echoes; a
// denied one is closed before the echo server sees a connection; the
// filter's Envoy-named counters show on /stats and /stats/prometheus.
func TestNetworkRBACBootstrapE2E(t *testing.T) {
	var accepted atomic.Int64
	echo := echoConn("")
	origin := tcpOrigin(t, func(c net.Conn) {
		accepted.Add(1)
		echo(c)
	})
	snap, err := xds.LoadBootstrap([]byte(fmt.Sprintf(netRBACBootstrap, port(origin))), "netrbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, snap)
	addr := srv.ListenerAddr("tcp").String()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("hello")); string(got) != "hello" {
		t.Fatalf("allowed connection echoed %q", got)
	}
	c.Close()

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err = d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot dial from 127.0.0.2: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "denied?") // may fail: the proxy may have closed already
	if b, err := io.ReadAll(c); len(b) != 0 {
		t.Fatalf("denied connection read %q (%v)", b, err)
	}

	admin := "http://" + srv.AdminAddr()
	want := []string{
		"tcp.rbac.allowed: 1",
		"tcp.rbac.denied: 1",
		"tcp.rbac.dry_shadow_denied: 2",
		"tcp.rbac.dry_shadow_allowed: 0",
		"cluster.echo.upstream_cx_total: 1",
	}
	var text string
	eventually(t, "rbac stats", func() bool {
		_, text = get(t, admin+"/stats")
		for _, w := range want {
			if !strings.Contains(text, w+"\n") {
				return false
			}
		}
		return true
	})
	if n := accepted.Load(); n != 1 {
		t.Errorf("echo server accepted %d connections, want 1 (the denied one must not reach it)", n)
	}
	_, prom := get(t, admin+"/stats/prometheus")
	for _, w := range []string{"envoy_tcp_rbac_allowed 1", "envoy_tcp_rbac_denied 1", "envoy_tcp_rbac_dry_shadow_denied 2"} {
		if !strings.Contains(prom, w) {
			t.Errorf("/stats/prometheus lacks %s", w)
		}
	}
}
