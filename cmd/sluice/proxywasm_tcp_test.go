package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/xds"
)

// wasmTCPListener is a listener whose filters are [envoy.filters.network.wasm
// (the Go test guest in a mode), envoy.filters.network.tcp_proxy].
const wasmTCPListener = `
  - name: %[1]s
    address: { socket_address: { address: 127.0.0.1, port_value: %[6]d } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: %[1]s
            root_id: goguest
            fail_open: %[4]t
            vm_config:
              vm_id: tcp-%[1]s
              runtime: envoy.wasm.runtime.v8
              code: { local: { filename: %[2]q } }
            configuration:
              "@type": type.googleapis.com/google.protobuf.StringValue
              value: %[3]q
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: %[1]s
          cluster: %[5]s
`

const wasmTCPClusters = `
  clusters:
  - name: echo
    connect_timeout: 2s
    load_assignment:
      cluster_name: echo
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[1]s } } } }] }]
  - name: echo_hold
    connect_timeout: 2s
    load_assignment:
      cluster_name: echo_hold
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[1]s } } } }] }]
  - name: auth_cluster
    connect_timeout: 2s
    load_assignment:
      cluster_name: auth_cluster
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[2]s } } } }] }]
`

// startWasmTCP runs an Envoy bootstrap with one listener per guest mode in
// front of a TCP echo server, and an auth cluster for tcp-call.
func startWasmTCP(t *testing.T, auth string) *server.Server {
	t.Helper()
	module, err := filepath.Abs("../../wasm/testdata/goguest.wasm")
	if err != nil {
		t.Fatal(err)
	}
	doc := "static_resources:\n  listeners:"
	for i, l := range []struct {
		name, config string
		failOpen     bool
		cluster      string
	}{
		{"upper", "mode=tcp-upper", false, "echo"},
		{"hold", "mode=tcp-hold", false, "echo_hold"},
		{"deny", "mode=tcp-deny prefix=HELLO", false, "echo"},
		{"trap", "mode=tcp-trap", false, "echo"},
		{"trapopen", "mode=tcp-trap", true, "echo"},
		{"call", "mode=tcp-call", false, "echo"},
	} {
		// Placeholder ports: the loader refuses two listeners on one
		// address; each gets an OS-chosen port below.
		doc += fmt.Sprintf(wasmTCPListener, l.name, module, l.config, l.failOpen, l.cluster, i+1)
	}
	doc += fmt.Sprintf(wasmTCPClusters, port(tcpOrigin(t, echoConn(""))), port(auth))
	snap, err := xds.LoadBootstrap([]byte(doc), "wasm-tcp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range snap.Listeners {
		l.Address = "127.0.0.1:0"
	}
	return startServer(t, snap)
}

// lineTrip writes a line and reads the same number of bytes back.
func lineTrip(c net.Conn, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	b := make([]byte, len(msg))
	_, err := io.ReadFull(c, b)
	return string(b), err
}

// refused sends msg and expects the connection to end with nothing back.
func refused(t *testing.T, addr, msg string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, msg)
	got, err := io.ReadAll(c)
	var ne net.Error
	if len(got) != 0 || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("sent %q: got %q back (%v), want the connection closed", msg, got, err)
	}
}

// statsText is /stats.
func statsText(t *testing.T, srv *server.Server) string {
	_, text := get(t, "http://"+srv.AdminAddr()+"/stats")
	return text
}

// promValue reads an unlabelled metric from /stats/prometheus; -1 when it
// is missing.
func promValue(t *testing.T, srv *server.Server, name string) int {
	_, text := get(t, "http://"+srv.AdminAddr()+"/stats/prometheus")
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var n int
			fmt.Sscan(v, &n)
			return n
		}
	}
	return -1
}

// TestProxyWasmTCP runs proxy-wasm network filters (the Go test guest)
// before tcp_proxy from an Envoy bootstrap: bytes rewritten, held until a
// newline, refused by prefix, a connection paused on an http_call, and a
// trap that closes only its connection while the plugin goes on serving
// others; the guest's byte counter shows in /stats/prometheus.
func TestProxyWasmTCP(t *testing.T) {
	auth := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/tcp-check" {
			w.WriteHeader(http.StatusForbidden)
		}
	})
	srv := startWasmTCP(t, auth.addr())
	addr := func(name string) string { return srv.ListenerAddr(name).String() }

	t.Run("upper", func(t *testing.T) {
		c, err := net.Dial("tcp", addr("upper"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := string(roundTrip(t, c, []byte("hello, sluice\n"))); got != "HELLO, SLUICE\n" {
			t.Fatalf("echo %q", got)
		}
		// Only this listener moved bytes so far.
		eventually(t, "goguest_tcp_bytes_total in /stats/prometheus", func() bool {
			return promValue(t, srv, "goguest_tcp_bytes_total") == 14
		})
	})

	t.Run("hold", func(t *testing.T) {
		c, err := net.Dial("tcp", addr("hold"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "no newline yet, ")
		eventually(t, "the proxy read the first bytes", func() bool {
			return strings.Contains(statsText(t, srv), "tcp.hold.downstream_cx_rx_bytes_total: 16\n")
		})
		if text := statsText(t, srv); !strings.Contains(text, "cluster.echo_hold.upstream_cx_tx_bytes_total: 0\n") {
			t.Fatalf("bytes without a newline reached the upstream: %s", grepLines(text, "echo_hold.upstream_cx_tx"))
		}
		io.WriteString(c, "then one\n")
		b := make([]byte, len("no newline yet, then one\n"))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "no newline yet, then one\n" {
			t.Fatalf("echo %q, %v", b, err)
		}
		// After the newline each line passes as it comes.
		if got, err := lineTrip(c, "next\n"); err != nil || got != "next\n" {
			t.Fatalf("echo %q, %v", got, err)
		}
	})

	t.Run("deny", func(t *testing.T) {
		c, err := net.Dial("tcp", addr("deny"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := string(roundTrip(t, c, []byte("HELLO there\n"))); got != "HELLO there\n" {
			t.Fatalf("echo %q", got)
		}
		refused(t, addr("deny"), "GET / HTTP/1.1\r\n\r\n")
	})

	t.Run("call", func(t *testing.T) {
		c, err := net.Dial("tcp", addr("call"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := lineTrip(c, "after the check\n"); err != nil || got != "after the check\n" {
			t.Fatalf("echo %q, %v", got, err)
		}
		if n := auth.hits.Load(); n != 1 {
			t.Errorf("auth calls %d", n)
		}
	})

	t.Run("trap", func(t *testing.T) {
		// A connection of another plugin, open across the trap.
		other, err := net.Dial("tcp", addr("upper"))
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if got, err := lineTrip(other, "before\n"); err != nil || got != "BEFORE\n" {
			t.Fatalf("echo %q, %v", got, err)
		}
		refused(t, addr("trap"), "this will trap\n")
		eventually(t, "the trap counted and the vm replaced", func() bool {
			text := statsText(t, srv)
			return strings.Contains(text, "wasm.trap.traps: 1\n") && statValue(text, "wasm.trap.created") > statValue(text, "wasm.upper.created")
		})
		// The plugin goes on serving: 20 connections at once, each a few
		// lines.
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", addr("trap"))
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				for j := range 3 {
					msg := fmt.Sprintf("connection %d line %d\n", i, j)
					if got, err := lineTrip(c, msg); err != nil || got != msg {
						errs <- fmt.Errorf("%q: got %q, %v", msg, got, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if text := statsText(t, srv); !strings.Contains(text, "wasm.trap.traps: 1\n") {
			t.Errorf("traps: %s", grepLines(text, "wasm.trap."))
		}
		if got, err := lineTrip(other, "after\n"); err != nil || got != "AFTER\n" {
			t.Fatalf("echo %q, %v", got, err)
		}
	})

	t.Run("trap fail_open", func(t *testing.T) {
		c, err := net.Dial("tcp", addr("trapopen"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, msg := range []string{"trap, passed through\n", "and the rest too\n"} {
			if got, err := lineTrip(c, msg); err != nil || got != msg {
				t.Fatalf("echo %q, %v", got, err)
			}
		}
		if text := statsText(t, srv); !strings.Contains(text, "wasm.trapopen.traps: 1\n") {
			t.Errorf("traps: %s", grepLines(text, "wasm.trapopen."))
		}
	})

	eventually(t, "every connection context deleted", func() bool {
		text := statsText(t, srv)
		for _, p := range []string{"upper", "hold", "deny", "trap", "trapopen", "call"} {
			if !strings.Contains(text, "wasm."+p+".active: 0\n") {
				return false
			}
		}
		return true
	})
}
