package main

import (
	"bytes"
	"crypto/rand"
	ctls "crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
	"github.com/sluice-proxy/sluice/xds"
)

// tcpOrigin serves each connection with fn and returns its address.
func tcpOrigin(tb testing.TB, fn func(c net.Conn)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
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
				defer c.Close()
				fn(c)
			}()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echoConn echoes, prefixed by tag on the first write, and half-closes
// when the client did.
func echoConn(tag string) func(net.Conn) {
	return func(c net.Conn) {
		if tag != "" {
			io.WriteString(c, tag)
		}
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	}
}

// tcpBootstrapYAML is an Envoy bootstrap with a TCP proxy listener: a TLS
// chain for tcp.test (terminated, then proxied as bytes) and a plaintext
// default chain; cluster "echo" has a dead host first, so connections
// need their second connect attempt.
const tcpBootstrapYAML = `
static_resources:
  listeners:
  - name: tcp
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }
    filter_chains:
    - filter_chain_match: { server_names: [tcp.test] }
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: { filename: %[1]s }
              private_key: { filename: %[2]s }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: secure
          cluster: echo
          max_connect_attempts: 2
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: plain
          cluster: echo
          max_connect_attempts: 2
          idle_timeout: %[5]s
  clusters:
  - name: echo
    connect_timeout: 2s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[3]s } } }
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[4]s } } }
`

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// startTCPBootstrap runs the bootstrap above with the given idle timeout.
func startTCPBootstrap(t *testing.T, idle string) (*server.Server, *tlstest.CA) {
	t.Helper()
	ca := tlstest.NewCA(t, "ca")
	certFile, keyFile := ca.Issue(t, "tcp.test").WriteFiles(t, t.TempDir(), "tcp")
	doc := fmt.Sprintf(tcpBootstrapYAML, certFile, keyFile, port(deadAddr(t)), port(tcpOrigin(t, echoConn(""))), idle)
	snap, err := xds.LoadBootstrap([]byte(doc), "tcp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, snap), ca
}

// roundTrip writes msg, half-closes, and reads everything back.
func roundTrip(t testing.TB, c net.Conn, msg []byte) []byte {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return got
}

// A bootstrap's tcp_proxy end to end: plaintext and TLS-terminated
// connections echo through the proxy (bytes both ways, half-close), a
// dead host is skipped within max_connect_attempts, and the Envoy-named
// counters show on the admin endpoints.
func TestTCPProxyBootstrapE2E(t *testing.T) {
	srv, ca := startTCPBootstrap(t, "60s")
	addr := srv.ListenerAddr("tcp").String()
	payload := make([]byte, 1<<20)
	rand.Read(payload)

	const rounds = 4 // round robin over a dead and a live host
	for range rounds {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := roundTrip(t, c, payload); !bytes.Equal(got, payload) {
			t.Fatalf("plaintext echo: %d bytes back of %d", len(got), len(payload))
		}
		c.Close()
	}
	for range rounds {
		c, err := ctls.Dial("tcp", addr, &ctls.Config{RootCAs: ca.Pool(), ServerName: "tcp.test"})
		if err != nil {
			t.Fatal(err)
		}
		if got := roundTrip(t, c, []byte("over tls")); string(got) != "over tls" {
			t.Fatalf("TLS echo: %q", got)
		}
		c.Close()
	}

	admin := "http://" + srv.AdminAddr()
	want := []string{
		"tcp.plain.downstream_cx_total: 4",
		fmt.Sprintf("tcp.plain.downstream_cx_rx_bytes_total: %d", rounds*len(payload)),
		fmt.Sprintf("tcp.plain.downstream_cx_tx_bytes_total: %d", rounds*len(payload)),
		"tcp.secure.downstream_cx_total: 4",
		"tcp.secure.downstream_cx_rx_bytes_total: 32",
		"cluster.echo.upstream_cx_connect_attempts_exceeded: 0",
		"cluster.echo.upstream_cx_active: 0",
	}
	var text string
	eventually(t, "tcp stats", func() bool {
		_, text = get(t, admin+"/stats")
		for _, w := range want {
			if !strings.Contains(text, w+"\n") {
				return false
			}
		}
		return true
	})
	// Round robin over [dead, live], the retry's pick advancing it too:
	// connections try the dead host first (all but maybe the first), then
	// the live one.
	total, fails := statValue(text, "cluster.echo.upstream_cx_total"), statValue(text, "cluster.echo.upstream_cx_connect_fail")
	if fails < 2*rounds-1 || total != 2*rounds+fails {
		t.Errorf("upstream_cx_total %d, upstream_cx_connect_fail %d: want %d connections and a failure for all but maybe the first", total, fails, 2*rounds)
	}
	_, prom := get(t, admin+"/stats/prometheus")
	if w := `envoy_tcp_downstream_cx_total{envoy_tcp_prefix="plain"} 4`; !strings.Contains(prom, w) {
		t.Errorf("/stats/prometheus lacks %s", w)
	}
}

func TestTCPProxyIdleTimeoutE2E(t *testing.T) {
	srv, _ := startTCPBootstrap(t, "0.1s")
	c, err := net.Dial("tcp", srv.ListenerAddr("tcp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "x")
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(b); err != io.EOF {
		t.Fatalf("read after idling: %v, want EOF", err)
	}
	eventually(t, "idle_timeout", func() bool {
		_, text := get(t, "http://"+srv.AdminAddr()+"/stats")
		return strings.Contains(text, "tcp.plain.idle_timeout: 1\n")
	})
}

// tcpSnapshot is one TCP proxy listener to cluster "c" at addr.
func tcpSnapshot(listenAddr, clusterAddr string, filters ...*config.NetworkFilter) *config.Snapshot {
	return &config.Snapshot{
		Version: "tcp",
		Listeners: []*config.Listener{{Name: "tcp", Address: listenAddr, FilterChains: []*config.FilterChain{{
			NetworkFilters: filters,
			TCP:            &config.TCPProxy{StatPrefix: "tcp", Cluster: "c", IdleTimeout: time.Minute},
		}}}},
		Clusters: []*config.Cluster{cluster("c", clusterAddr)},
	}
}

// send writes msg and reads len(want) bytes back.
func send(t *testing.T, c net.Conn, msg, want string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, len(want))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != want {
		t.Fatalf("sent %q: got %q, %v; want %q", msg, b, err, want)
	}
}

// 100 connections, ten at a time, each echoing its own message.
func TestTCPProxyManyConnections(t *testing.T) {
	srv := startServer(t, tcpSnapshot("127.0.0.1:0", tcpOrigin(t, echoConn(""))))
	addr := srv.ListenerAddr("tcp").String()
	var ok atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					errs <- err
					return
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				msg := fmt.Sprintf("worker %d connection %d", w, i)
				io.WriteString(c, msg)
				c.(*net.TCPConn).CloseWrite()
				got, err := io.ReadAll(c)
				c.Close()
				if err != nil || string(got) != msg {
					errs <- fmt.Errorf("%s: got %q, %v", msg, got, err)
					return
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if ok.Load() != 100 {
		t.Fatalf("%d of 100 connections echoed", ok.Load())
	}
	eventually(t, "counters", func() bool {
		_, text := get(t, "http://"+srv.AdminAddr()+"/stats")
		return strings.Contains(text, "tcp.tcp.downstream_cx_total: 100\n") && strings.Contains(text, "cluster.c.upstream_cx_destroy: 100\n")
	})
}

// A snapshot swap while TCP connections are open: they keep flowing to
// the old cluster; new connections go to the new one. Removing the
// listener then drains it: the open connection still flows until the
// drain timeout closes it.
func TestTCPProxySwapAndDrain(t *testing.T) {
	a := tcpOrigin(t, echoConn("A:"))
	b := tcpOrigin(t, echoConn("B:"))
	srv := startServer(t, tcpSnapshot("127.0.0.1:0", a))
	addr := srv.ListenerAddr("tcp").String()

	var old []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		send(t, c, "1", "A:1")
		old = append(old, c)
	}
	if err := srv.Apply(tcpSnapshot(addr, b)); err != nil {
		t.Fatal(err)
	}
	if got := srv.ListenerAddr("tcp").String(); got != addr {
		t.Fatalf("listener moved from %s to %s", addr, got)
	}
	for _, c := range old {
		send(t, c, "2", "2") // still the old upstream, still flowing
	}
	fresh, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	send(t, fresh, "3", "B:3")

	// Remove the listener: connections drain, then are closed.
	other := snapshot(hcm(prefixRoute("all", "/", "c")), cluster("c", b))
	if err := srv.Apply(other); err != nil {
		t.Fatal(err)
	}
	send(t, old[0], "4", "4")
	old[0].SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(old[0]); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("after the drain timeout: %v", err)
	}
}

// A native network filter in a running server: it sees the TLS state and
// addresses, rewrites bytes both ways, and counts them.
func TestTCPProxyNetworkFilterE2E(t *testing.T) {
	const typeURL = "type.googleapis.com/test.Shout"
	var seen sync.Map // conn id → report
	register := func(r *stream.Registry) {
		r.RegisterNetworkFilter(stream.NetworkCompilerFunc(func(any) (stream.NetworkFactory, error) {
			return stream.NetworkFactoryFunc(func(cb stream.NetworkCallbacks) stream.NetworkFilter {
				return &shout{cb: cb, seen: &seen}
			}), nil
		}), typeURL)
	}
	ca := tlstest.NewCA(t, "ca")
	certFile, keyFile := ca.Issue(t, "shout.test").WriteFiles(t, t.TempDir(), "shout")
	snap := tcpSnapshot("127.0.0.1:0", tcpOrigin(t, echoConn("")), &config.NetworkFilter{Name: "shout", TypeURL: typeURL})
	snap.Listeners[0].FilterChains[0].TLS = &config.DownstreamTLS{Certificates: []config.Certificate{{
		Chain: config.DataSource{Filename: certFile}, Key: config.DataSource{Filename: keyFile}}}}
	srv := startServer(t, snap, register)

	c, err := ctls.Dial("tcp", srv.ListenerAddr("tcp").String(), &ctls.Config{RootCAs: ca.Pool(), ServerName: "shout.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := roundTrip(t, c, []byte("hello")); string(got) != "HELLO!" {
		t.Errorf("got %q, want HELLO! (uppercased on the way up, ! added on the way down)", got)
	}
	eventually(t, "OnClose", func() bool {
		n := 0
		seen.Range(func(_, v any) bool {
			n++
			if r := v.(string); r != "sni=shout.test src=127.0.0.1 rx=5 tx=5 upstream=yes" {
				t.Errorf("filter saw %s", r)
			}
			return true
		})
		return n == 1
	})
	// An unknown network filter type is rejected, naming it.
	bad := tcpSnapshot("127.0.0.1:0", "127.0.0.1:1", &config.NetworkFilter{Name: "x", TypeURL: "type.googleapis.com/acme.Unknown"})
	if err := srv.Apply(bad); err == nil || !strings.Contains(err.Error(), `unknown network filter type "type.googleapis.com/acme.Unknown"`) {
		t.Errorf("unknown network filter: %v", err)
	}
}

type shout struct {
	stream.NetworkPassThrough
	cb       stream.NetworkCallbacks
	seen     *sync.Map
	rx, tx   int
	upstream bool
}

func (s *shout) OnDownstreamData(b *stream.Buffer, end bool) stream.NetworkStatus {
	s.rx += b.Len()
	s.upstream = s.cb.UpstreamAddress() != "" && s.cb.ClusterName() == "c"
	b.Set(bytes.ToUpper(b.Bytes()))
	return stream.NetworkContinue
}

func (s *shout) OnUpstreamData(b *stream.Buffer, end bool) stream.NetworkStatus {
	s.tx += b.Len()
	if end {
		b.Append([]byte("!"))
	}
	return stream.NetworkContinue
}

func (s *shout) OnClose() {
	sni := ""
	if st := s.cb.TLS(); st != nil {
		sni = st.ServerName
	}
	up := map[bool]string{true: "yes", false: "no"}[s.upstream]
	s.seen.Store(s.cb.ConnectionID(), fmt.Sprintf("sni=%s src=%s rx=%d tx=%d upstream=%s",
		sni, s.cb.DownstreamRemote().Addr(), s.rx, s.tx, up))
}

// BenchmarkTCPProxyEcho is one request/response round trip over a
// kept-open proxied TCP connection against an echo origin: socket to
// socket (splice), and through one pass-through network filter (pooled
// buffers).
func BenchmarkTCPProxyEcho(b *testing.B) {
	const passType = "type.googleapis.com/test.Pass"
	pass := func(r *stream.Registry) {
		r.RegisterNetworkFilter(stream.NetworkCompilerFunc(func(any) (stream.NetworkFactory, error) {
			return stream.NetworkFactoryFunc(func(stream.NetworkCallbacks) stream.NetworkFilter { return stream.NetworkPassThrough{} }), nil
		}), passType)
	}
	for _, filtered := range []bool{false, true} {
		for _, size := range []int{64, 1 << 10, 64 << 10} {
			name := fmt.Sprintf("%dB", size)
			var filters []*config.NetworkFilter
			if filtered {
				name = "filter/" + name
				filters = []*config.NetworkFilter{{Name: "pass", TypeURL: passType}}
			}
			b.Run(name, func(b *testing.B) {
				srv := startServer(b, tcpSnapshot("127.0.0.1:0", tcpOrigin(b, echoConn("")), filters...), pass)
				c, err := net.Dial("tcp", srv.ListenerAddr("tcp").String())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				msg := make([]byte, size)
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if _, err := c.Write(msg); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkTCPProxyConnect is a new proxied connection per operation: the
// accept, upstream dial and teardown cost, with one small echo.
func BenchmarkTCPProxyConnect(b *testing.B) {
	srv := startServer(b, tcpSnapshot("127.0.0.1:0", tcpOrigin(b, echoConn(""))))
	addr := srv.ListenerAddr("tcp").String()
	buf := make([]byte, 4)
	b.ReportAllocs()
	for range b.N {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		io.WriteString(c, "ping")
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// statValue reads one counter from /stats text output (-1: absent).
func statValue(text, name string) int {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			n := 0
			fmt.Sscan(v, &n)
			return n
		}
	}
	return -1
}
