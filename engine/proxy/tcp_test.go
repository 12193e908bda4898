package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	ctls "crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
	"github.com/sluice-proxy/sluice/engine/upstream"
	"github.com/sluice-proxy/sluice/protocols/http1"
)

// tcpEnv is an Env with the HTTP/1 client codec (clusters need one) and
// the test network filters registered.
func tcpEnv(t testing.TB) *Env {
	reg := stream.NewRegistry()
	reg.RegisterCodec("http1", nil, http1.NewClientCodec())
	reg.RegisterNetworkFilter(stream.NetworkCompilerFunc(compileScripted), scriptedType)
	return &Env{Registry: reg, Stats: observe.NewStore(), Log: slog.New(slog.DiscardHandler)}
}

// tcpSet builds and commits clusters.
func tcpSet(t testing.TB, env *Env, clusters ...*config.Cluster) *upstream.Set {
	t.Helper()
	m := upstream.NewManager(env.Stats, env.Registry, nil)
	set, err := m.Build(clusters)
	if err != nil {
		t.Fatal(err)
	}
	m.Commit(set)
	t.Cleanup(m.Close)
	return set
}

func testTCPCluster(name string, addrs ...string) *config.Cluster {
	c := &config.Cluster{Name: name, Type: "STATIC", ConnectTimeout: 2 * time.Second}
	for _, a := range addrs {
		c.Endpoints = append(c.Endpoints, &config.Endpoint{Address: a, Healthy: true})
	}
	return c
}

// serveTCP runs p on a loopback listener, as the server does, and returns
// its address.
func serveTCP(t testing.TB, p *TCPProxy) string {
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
				defer c.Close()
				info := &stream.ConnInfo{Remote: c.RemoteAddr().(*net.TCPAddr).AddrPort(), Local: c.LocalAddr().(*net.TCPAddr).AddrPort()}
				p.Serve(context.Background(), c, info)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// listenFunc serves each accepted connection with fn on its own goroutine
// and returns the address.
func listenFunc(t testing.TB, ln net.Listener, fn func(c net.Conn)) string {
	t.Helper()
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
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
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echo copies the connection back to itself, then half-closes.
func echo(c net.Conn) {
	io.Copy(c, c)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func metric(env *Env, name string) float64 {
	for _, m := range env.Stats.Metrics() {
		if m.Name == name {
			return m.Value
		}
	}
	return -1
}

// waitFor polls cond (bounded), for effects that land after a connection
// closes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func compileTCP(t testing.TB, env *Env, cfg *config.TCPProxy, set *upstream.Set, filters ...*config.NetworkFilter) *TCPProxy {
	t.Helper()
	p, err := CompileTCPProxy(env, cfg, filters, set)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCompileTCPProxyErrors(t *testing.T) {
	env := tcpEnv(t)
	set := tcpSet(t, env, testTCPCluster("a", "127.0.0.1:1"), testTCPCluster("b", "127.0.0.1:2"))
	tests := []struct {
		name    string
		cfg     config.TCPProxy
		filters []*config.NetworkFilter
		want    string
	}{
		{"no stat prefix", config.TCPProxy{Cluster: "a"}, nil, "stat_prefix is required"},
		{"no cluster", config.TCPProxy{StatPrefix: "p"}, nil, "cluster or weighted_clusters is required"},
		{"unknown cluster", config.TCPProxy{StatPrefix: "p", Cluster: "zz"}, nil, `unknown cluster "zz"`},
		{"both", config.TCPProxy{StatPrefix: "p", Cluster: "a", WeightedClusters: []*config.TCPWeightedCluster{{Name: "b", Weight: 1}}}, nil, "not both"},
		{"zero weights", config.TCPProxy{StatPrefix: "p", WeightedClusters: []*config.TCPWeightedCluster{{Name: "a"}}}, nil, "no cluster with a weight"},
		{"unknown weighted", config.TCPProxy{StatPrefix: "p", WeightedClusters: []*config.TCPWeightedCluster{{Name: "a", Weight: 1}, {Name: "zz", Weight: 1}}}, nil, `unknown cluster "zz" (weighted_clusters[1])`},
		{"negative idle", config.TCPProxy{StatPrefix: "p", Cluster: "a", IdleTimeout: -1}, nil, "negative idle_timeout"},
		{"negative attempts", config.TCPProxy{StatPrefix: "p", Cluster: "a", MaxConnectAttempts: -1}, nil, "negative max_connect_attempts"},
		{"header hash", config.TCPProxy{StatPrefix: "p", Cluster: "a", HashPolicy: []config.HashPolicy{{Header: "x"}}}, nil, "only source_ip"},
		{"unknown network filter", config.TCPProxy{StatPrefix: "p", Cluster: "a"},
			[]*config.NetworkFilter{{Name: "magic", TypeURL: "type.googleapis.com/acme.Magic"}},
			`network filter 0 (magic): unknown network filter type "type.googleapis.com/acme.Magic"`},
		{"filter config error", config.TCPProxy{StatPrefix: "p", Cluster: "a"},
			[]*config.NetworkFilter{{Name: "s", TypeURL: scriptedType, Config: "not a script"}},
			`network filter 0 (s): scripted: want *scriptConfig`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := CompileTCPProxy(env, &tt.cfg, tt.filters, set)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "proxy: ") {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// Bytes go both ways, a half-close is passed on each way, and the
// counters add up, for plaintext (splice) and TLS (buffered) upstreams.
func TestTCPProxyEcho(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	leaf := ca.Issue(t, "echo.test")
	tlsLn, err := ctls.Listen("tcp", "127.0.0.1:0", &ctls.Config{Certificates: []ctls.Certificate{leaf.TLSCertificate(t)}})
	if err != nil {
		t.Fatal(err)
	}

	plain := testTCPCluster("plain", listenFunc(t, nil, echo))
	secure := testTCPCluster("secure", listenFunc(t, tlsLn, echo))
	secure.TLS = &config.UpstreamTLS{SNI: "echo.test", CA: config.DataSource{Inline: ca.CertPEM}}

	for _, c := range []*config.Cluster{plain, secure} {
		t.Run(c.Name, func(t *testing.T) {
			env := tcpEnv(t)
			set := tcpSet(t, env, c)
			p := compileTCP(t, env, &config.TCPProxy{StatPrefix: "echo", Cluster: c.Name}, set)
			conn := dial(t, serveTCP(t, p))

			payload := make([]byte, 3<<20)
			rand.Read(payload)
			go func() {
				conn.Write(payload)
				conn.CloseWrite() // the upstream sees EOF and half-closes back
			}()
			got, err := io.ReadAll(conn)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("echo: got %d bytes, want %d equal bytes", len(got), len(payload))
			}
			n := float64(len(payload))
			waitFor(t, "the connection to end", func() bool { return metric(env, "cluster."+c.Name+".upstream_cx_destroy") == 1 })
			for name, want := range map[string]float64{
				"tcp.echo.downstream_cx_total":                      1,
				"tcp.echo.downstream_cx_rx_bytes_total":             n,
				"tcp.echo.downstream_cx_tx_bytes_total":             n,
				"cluster." + c.Name + ".upstream_cx_total":          1,
				"cluster." + c.Name + ".upstream_cx_active":         0,
				"cluster." + c.Name + ".upstream_cx_tx_bytes_total": n,
				"cluster." + c.Name + ".upstream_cx_rx_bytes_total": n,
			} {
				if got := metric(env, name); got != want {
					t.Errorf("%s = %v, want %v", name, got, want)
				}
			}
		})
	}
}

// The upstream answers only after the client half-closed: the half-close
// crossed the proxy and the other direction kept flowing.
func TestTCPProxyHalfClose(t *testing.T) {
	env := tcpEnv(t)
	up := listenFunc(t, nil, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		io.WriteString(c, "got "+string(b))
	})
	p := compileTCP(t, env, &config.TCPProxy{StatPrefix: "hc", Cluster: "a"}, tcpSet(t, env, testTCPCluster("a", up)))
	conn := dial(t, serveTCP(t, p))
	io.WriteString(conn, "ping")
	conn.CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "got ping" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestTCPProxyIdleTimeout(t *testing.T) {
	for _, filtered := range []bool{false, true} {
		name := "splice"
		var filters []*config.NetworkFilter
		if filtered {
			name = "filtered"
			filters = []*config.NetworkFilter{{Name: "s", TypeURL: scriptedType, Config: &scriptConfig{}}}
		}
		t.Run(name, func(t *testing.T) {
			env := tcpEnv(t)
			set := tcpSet(t, env, testTCPCluster("a", listenFunc(t, nil, echo)))
			p := compileTCP(t, env, &config.TCPProxy{StatPrefix: "idle", Cluster: "a", IdleTimeout: 50 * time.Millisecond}, set, filters...)
			conn := dial(t, serveTCP(t, p))
			io.WriteString(conn, "x")
			buf := make([]byte, 1)
			if _, err := io.ReadFull(conn, buf); err != nil {
				t.Fatal(err)
			}
			// Now silent both ways: the proxy closes.
			if n, err := conn.Read(buf); err == nil || isTimeout(err) {
				t.Fatalf("read %d, %v: want the connection closed", n, err)
			}
			waitFor(t, "idle_timeout", func() bool { return metric(env, "tcp.idle.idle_timeout") == 1 })
		})
	}
}

// A one-way trickle keeps a connection open past the idle timeout: a
// splice in progress shows no counted bytes, so the idle timer reads the
// sockets' received bytes too. (Bytes every 50ms against a 1s timeout,
// for two seconds: only a stall of a second would fail it.)
func TestTCPProxyIdleTrickle(t *testing.T) {
	env := tcpEnv(t)
	up := listenFunc(t, nil, func(c net.Conn) {
		b := make([]byte, 1)
		for {
			if _, err := c.Read(b); err != nil {
				return
			}
			if b[0] == 'q' {
				io.WriteString(c, "alive")
				return
			}
		}
	})
	p := compileTCP(t, env, &config.TCPProxy{StatPrefix: "trickle", Cluster: "a", IdleTimeout: time.Second}, tcpSet(t, env, testTCPCluster("a", up)))
	conn := dial(t, serveTCP(t, p))
	for range 40 {
		if _, err := io.WriteString(conn, "."); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	io.WriteString(conn, "q")
	b, err := io.ReadAll(conn)
	if string(b) != "alive" {
		t.Fatalf("got %q, %v; idle_timeout = %v", b, err, metric(env, "tcp.trickle.idle_timeout"))
	}
}

// A dead host is skipped within max_connect_attempts; with one attempt
// the connections that land on it are closed.
func TestTCPProxyConnectAttempts(t *testing.T) {
	for _, attempts := range []int{1, 2} {
		t.Run(string(rune('0'+attempts)), func(t *testing.T) {
			env := tcpEnv(t)
			set := tcpSet(t, env, testTCPCluster("a", deadAddr(t), listenFunc(t, nil, echo)))
			p := compileTCP(t, env, &config.TCPProxy{StatPrefix: "retry", Cluster: "a", MaxConnectAttempts: attempts}, set)
			addr := serveTCP(t, p)
			ok := 0
			for range 6 {
				conn := dial(t, addr)
				io.WriteString(conn, "hi")
				buf := make([]byte, 2)
				if _, err := io.ReadFull(conn, buf); err == nil && string(buf) == "hi" {
					ok++
				}
				conn.Close()
			}
			fails := metric(env, "cluster.a.upstream_cx_connect_fail")
			exceeded := metric(env, "cluster.a.upstream_cx_connect_attempts_exceeded")
			switch attempts {
			case 1: // round robin: every other connection hits the dead host
				if ok != 3 || fails != 3 || exceeded != 3 {
					t.Errorf("ok %d, connect_fail %v, attempts_exceeded %v; want 3, 3, 3", ok, fails, exceeded)
				}
			case 2:
				if ok != 6 || fails < 1 || exceeded != 0 {
					t.Errorf("ok %d, connect_fail %v, attempts_exceeded %v; want 6, >0, 0", ok, fails, exceeded)
				}
			}
		})
	}
}

// At the cluster's max_connections a new connection is closed at once
// (upstream_cx_overflow, flag UO in the access log).
func TestTCPProxyCircuitBreaker(t *testing.T) {
	env := tcpEnv(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	var loggers []*observe.AccessLogger
	env.AccessLog = func(path string, f *observe.Format) (*observe.AccessLogger, error) {
		l, err := observe.OpenAccessLog(path, f)
		loggers = append(loggers, l)
		return l, err
	}
	c := testTCPCluster("a", listenFunc(t, nil, echo))
	c.CircuitBreakers.MaxConnections = 1
	p := compileTCP(t, env, &config.TCPProxy{StatPrefix: "cb", Cluster: "a",
		AccessLogs: []*config.AccessLog{{Path: logPath, Format: "%UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT%\n"}}},
		tcpSet(t, env, c))
	addr := serveTCP(t, p)

	first := dial(t, addr)
	io.WriteString(first, "one")
	buf := make([]byte, 3)
	if _, err := io.ReadFull(first, buf); err != nil {
		t.Fatal(err)
	}
	second := dial(t, addr)
	if n, err := second.Read(buf); err == nil || isTimeout(err) {
		t.Fatalf("second connection: read %d, %v; want it closed", n, err)
	}
	if got := metric(env, "cluster.a.upstream_cx_overflow"); got != 1 {
		t.Errorf("upstream_cx_overflow = %v", got)
	}
	first.Close()
	waitFor(t, "both connections to be logged", func() bool {
		loggers[0].Flush()
		b, _ := os.ReadFile(logPath)
		return strings.Count(string(b), "\n") == 2
	})
	b, _ := os.ReadFile(logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if lines[0] != "a UO 0 0" || lines[1] != "a - 3 3" {
		t.Errorf("access log:\n%s", b)
	}
	for _, l := range loggers {
		l.Close()
	}
}

// Weighted clusters: a zero weight never takes a connection; two equal
// weights both do (20 connections: all on one side has odds 2^-19).
func TestTCPProxyWeightedClusters(t *testing.T) {
	env := tcpEnv(t)
	named := func(name string) string {
		return listenFunc(t, nil, func(c net.Conn) { io.WriteString(c, name) })
	}
	set := tcpSet(t, env, testTCPCluster("a", named("a")), testTCPCluster("b", named("b")), testTCPCluster("c", named("c")))
	p := compileTCP(t, env, &config.TCPProxy{StatPrefix: "w", WeightedClusters: []*config.TCPWeightedCluster{
		{Name: "a", Weight: 1}, {Name: "b", Weight: 1}, {Name: "c", Weight: 0}}}, set)
	addr := serveTCP(t, p)
	seen := map[string]int{}
	for range 20 {
		conn := dial(t, addr)
		b, _ := io.ReadAll(conn)
		seen[string(b)]++
		conn.Close()
	}
	if seen["a"] == 0 || seen["b"] == 0 || seen["c"] != 0 || seen["a"]+seen["b"] != 20 {
		t.Errorf("connections per cluster: %v", seen)
	}
}

// hash_policy source_ip on a ring_hash cluster: every connection from one
// client address lands on the same host.
func TestTCPProxySourceIPHash(t *testing.T) {
	env := tcpEnv(t)
	named := func(name string) string {
		return listenFunc(t, nil, func(c net.Conn) { io.WriteString(c, name) })
	}
	c := testTCPCluster("ring", named("x"), named("y"), named("z"))
	c.LBPolicy = config.LBRingHash
	p := compileTCP(t, env, &config.TCPProxy{StatPrefix: "h", Cluster: "ring", HashPolicy: []config.HashPolicy{{SourceIP: true}}}, tcpSet(t, env, c))
	addr := serveTCP(t, p)
	seen := map[string]int{}
	for range 12 {
		conn := dial(t, addr)
		b, _ := io.ReadAll(conn)
		seen[string(b)]++
		conn.Close()
	}
	if len(seen) != 1 {
		t.Errorf("connections from one address spread over hosts: %v", seen)
	}
}

// scriptedType is a native network filter for the tests: it proves the
// contract from outside the engine's own code paths.
const scriptedType = "test.scripted"

// scriptConfig says what the scripted filter does.
type scriptConfig struct {
	greet   string // WriteDownstream in OnNewConnection
	prelude string // WriteUpstream in OnNewConnection (queued until connected)
	refuse  bool   // Close and stop in OnNewConnection
	upper   bool   // uppercase downstream bytes
	lines   bool   // hold downstream bytes until a newline
	tag     string // prefix upstream bytes
	closeOn string // Close when downstream bytes contain this
	events  chan<- closeEvent
}

func compileScripted(cfg any) (stream.NetworkFactory, error) {
	sc, ok := cfg.(*scriptConfig)
	if !ok {
		return nil, errors.New("scripted: want *scriptConfig")
	}
	return stream.NetworkFactoryFunc(func(cb stream.NetworkCallbacks) stream.NetworkFilter {
		return &scripted{cfg: sc, cb: cb}
	}), nil
}

type scripted struct {
	cfg      *scriptConfig
	cb       stream.NetworkCallbacks
	rx, tx   int
	sawEnd   bool
	upstream string
}

func (f *scripted) OnNewConnection() stream.NetworkStatus {
	if f.cfg.greet != "" {
		f.cb.WriteDownstream([]byte(f.cfg.greet))
	}
	if f.cfg.prelude != "" {
		f.cb.WriteUpstream([]byte(f.cfg.prelude))
	}
	if f.cfg.refuse {
		f.cb.Close()
		return stream.NetworkStopIteration
	}
	return stream.NetworkContinue
}

func (f *scripted) OnDownstreamData(b *stream.Buffer, end bool) stream.NetworkStatus {
	f.rx += b.Len()
	f.sawEnd = f.sawEnd || end
	f.upstream = f.cb.UpstreamAddress()
	if f.cfg.closeOn != "" && bytes.Contains(b.Bytes(), []byte(f.cfg.closeOn)) {
		f.cb.Close()
		return stream.NetworkStopIteration
	}
	if f.cfg.lines && !end && !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
		return stream.NetworkStopIteration
	}
	if f.cfg.upper {
		b.Set(bytes.ToUpper(b.Bytes()))
	}
	return stream.NetworkContinue
}

func (f *scripted) OnUpstreamData(b *stream.Buffer, end bool) stream.NetworkStatus {
	f.tx += b.Len()
	if f.cfg.tag != "" && b.Len() > 0 {
		b.Prepend([]byte(f.cfg.tag))
	}
	return stream.NetworkContinue
}

func (f *scripted) OnClose() {
	if f.cfg.events != nil {
		f.cfg.events <- closeEvent{rx: f.rx, tx: f.tx, end: f.sawEnd, srcOK: f.cb.DownstreamRemote().IsValid(), upstreamOK: f.upstream != ""}
	}
}

// closeEvent is what the scripted filter reports from OnClose.
type closeEvent struct {
	rx, tx                 int
	end, srcOK, upstreamOK bool
}

func scriptedFilter(sc *scriptConfig) *config.NetworkFilter {
	return &config.NetworkFilter{Name: "scripted", TypeURL: scriptedType, Config: sc}
}

// Network filters end to end: a greeting injected before the upstream is
// dialled, downstream bytes rewritten and held to whole lines, upstream
// bytes passing the filters in reverse order, OnClose with the counts.
func TestTCPProxyNetworkFilters(t *testing.T) {
	env := tcpEnv(t)
	var upstreamSaw atomic.Value
	up := listenFunc(t, nil, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		upstreamSaw.Store(string(b))
		io.WriteString(c, "ok")
	})
	set := tcpSet(t, env, testTCPCluster("a", up))
	events := make(chan closeEvent, 2)
	p := compileTCP(t, env, &config.TCPProxy{StatPrefix: "nf", Cluster: "a"}, set,
		scriptedFilter(&scriptConfig{greet: "hello\n", prelude: "P:", lines: true, tag: "[outer]", events: events}),
		scriptedFilter(&scriptConfig{upper: true, tag: "[inner]"}))
	conn := dial(t, serveTCP(t, p))
	greet := make([]byte, 6)
	if _, err := io.ReadFull(conn, greet); err != nil || string(greet) != "hello\n" {
		t.Fatalf("greeting %q, %v", greet, err)
	}
	for _, part := range []string{"ab", "c\nd", "ef\n", "tail"} {
		io.WriteString(conn, part)
	}
	conn.CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	// Upstream bytes pass the inner filter first, then the outer.
	if string(got) != "[outer][inner]ok" {
		t.Errorf("client got %q", got)
	}
	if s, _ := upstreamSaw.Load().(string); s != "P:ABC\nDEF\nTAIL" {
		t.Errorf("upstream got %q", s)
	}
	select {
	case ev := <-events:
		// The outer filter saw at least the 12 bytes (more when it held
		// some and saw them again), the end of the downstream bytes, the
		// upstream's "ok" tagged by the inner filter, and the addresses.
		if ev.rx < 12 || ev.tx < len("[inner]ok") || !ev.end || !ev.srcOK || !ev.upstreamOK {
			t.Errorf("OnClose: %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no OnClose")
	}
	waitFor(t, "counters", func() bool {
		return metric(env, "tcp.nf.downstream_cx_tx_bytes_total") == float64(len("hello\n")+len(got))
	})
	if got := metric(env, "tcp.nf.downstream_cx_rx_bytes_total"); got != 12 {
		t.Errorf("downstream_cx_rx_bytes_total = %v, want 12", got)
	}
}

// A filter that refuses in OnNewConnection closes the connection before
// any upstream connection is made; one that closes on data stops the
// bytes that triggered it.
func TestTCPProxyNetworkFilterClose(t *testing.T) {
	env := tcpEnv(t)
	var upstreamSaw atomic.Value
	up := listenFunc(t, nil, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		upstreamSaw.Store(string(b))
	})
	set := tcpSet(t, env, testTCPCluster("a", up))

	refuse := compileTCP(t, env, &config.TCPProxy{StatPrefix: "refuse", Cluster: "a"}, set,
		scriptedFilter(&scriptConfig{greet: "no\n", refuse: true}))
	conn := dial(t, serveTCP(t, refuse))
	got, _ := io.ReadAll(conn)
	if string(got) != "no\n" {
		t.Errorf("refused client got %q", got)
	}
	if n := metric(env, "cluster.a.upstream_cx_total"); n != 0 {
		t.Errorf("upstream_cx_total = %v after a refusal", n)
	}

	kill := compileTCP(t, env, &config.TCPProxy{StatPrefix: "kill", Cluster: "a"}, set,
		scriptedFilter(&scriptConfig{closeOn: "KILL"}))
	conn = dial(t, serveTCP(t, kill))
	io.WriteString(conn, "fine\n")
	io.WriteString(conn, "KILL\n")
	if _, err := io.ReadAll(conn); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatal(err)
	}
	waitFor(t, "upstream to see the close", func() bool { return upstreamSaw.Load() != nil })
	if s := upstreamSaw.Load().(string); strings.Contains(s, "KILL") {
		t.Errorf("upstream got %q, which the filter stopped", s)
	}
}

// The chain's hold semantics, direction by direction, without sockets.
func TestNetChainHold(t *testing.T) {
	type step struct {
		dir  int
		data string
		end  bool
		out  string // "" and held: nothing written
		held bool
		ok   bool
	}
	tests := []struct {
		name    string
		filters []*scriptConfig
		steps   []step
	}{
		{"pass", []*scriptConfig{{}, {upper: true}}, []step{
			{dirDownstream, "ab", false, "AB", false, true},
			{dirUpstream, "xy", false, "xy", false, true},
		}},
		{"hold then release", []*scriptConfig{{upper: true}, {lines: true}}, []step{
			{dirDownstream, "ab", false, "", true, true},
			{dirDownstream, "c", false, "", true, true},
			{dirDownstream, "d\n", false, "ABCD\n", false, true},
			{dirDownstream, "e\n", false, "E\n", false, true},
		}},
		{"upstream order", []*scriptConfig{{tag: "1"}, {tag: "2"}}, []step{
			{dirUpstream, "x", false, "12x", false, true},
		}},
		{"stop at end closes", []*scriptConfig{{lines: true}}, []step{
			{dirDownstream, "ab", false, "", true, true},
		}},
		{"end releases lines", []*scriptConfig{{lines: true}}, []step{
			{dirDownstream, "ab", false, "", true, true},
			{dirDownstream, "c", true, "abc", false, true},
		}},
		{"close", []*scriptConfig{{closeOn: "!"}, {upper: true}}, []step{
			{dirDownstream, "a", false, "A", false, true},
			{dirDownstream, "!", false, "", false, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &tcpSession{p: &TCPProxy{log: slog.New(slog.DiscardHandler)}, info: &stream.ConnInfo{}, down: nopConn{}}
			s.ctx, s.cancel = context.WithCancel(context.Background())
			var slots []netFilterSlot
			for _, sc := range tt.filters {
				f, _ := compileScripted(sc)
				slots = append(slots, netFilterSlot{name: "s", factory: f})
			}
			c := newNetChain(s, slots)
			for i, st := range tt.steps {
				b := stream.GetBuffer()
				b.SetString(st.data)
				out, ok := c.run(st.dir, b, st.end)
				got := ""
				if out != nil {
					got = string(out.Bytes())
				}
				if ok != st.ok || got != st.out || (out == nil && ok) != st.held {
					t.Errorf("step %d: out %q ok %v held %v; want %q %v %v", i, got, ok, out == nil && ok, st.out, st.ok, st.held)
				}
			}
			c.close()
		})
	}
}

// nopConn stands in for a downstream connection in chain-only tests.
type nopConn struct{ net.Conn }

func (nopConn) Close() error                { return nil }
func (nopConn) Write(p []byte) (int, error) { return len(p), nil }
