package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// testLog is quiet unless SLUICE_TEST_LOG is set.
func testLog() *slog.Logger {
	if os.Getenv("SLUICE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startServer applies snap on a new server with the built-ins (plus extra
// filter registrations) and stops it when the test ends.
func startServer(t testing.TB, snap *config.Snapshot, register ...func(*stream.Registry)) *server.Server {
	t.Helper()
	stats := observe.NewStore()
	reg := builtins(stats)
	for _, r := range register {
		r(reg)
	}
	srv := server.New(server.Options{Registry: reg, Stats: stats, Log: testLog(), AdminAddress: "127.0.0.1:0", DrainTimeout: 2 * time.Second})
	if err := srv.Apply(snap); err != nil {
		t.Fatalf("apply: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// countingUpstream is an origin that counts requests and echoes a little.
type countingUpstream struct {
	*httptest.Server
	hits atomic.Int64
}

func newUpstream(t testing.TB, h http.HandlerFunc) *countingUpstream {
	t.Helper()
	u := &countingUpstream{}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Upstream", "1")
			body, _ := io.ReadAll(r.Body)
			io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" "+string(body))
		}
	}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *countingUpstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

// cluster returns a static cluster over addrs.
func cluster(name string, addrs ...string) *config.Cluster {
	c := &config.Cluster{Name: name, Type: "STATIC", ConnectTimeout: 5 * time.Second, LBPolicy: config.LBRoundRobin,
		CircuitBreakers: config.DefaultCircuitBreakers(), IdleTimeout: time.Minute, Protocol: "http1"}
	for _, a := range addrs {
		c.Endpoints = append(c.Endpoints, &config.Endpoint{Address: a, Weight: 1, Healthy: true})
	}
	return c
}

// hcm returns a connection manager with the given routes on domain "*".
func hcm(routes ...*config.Route) *config.HTTPConnectionManager {
	return &config.HTTPConnectionManager{
		StatPrefix:             "test",
		Codec:                  config.CodecAuto,
		RouteConfig:            &config.RouteConfiguration{Name: "test", VirtualHosts: []*config.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: routes}}},
		RequestHeadersTimeout:  2 * time.Second,
		IdleTimeout:            30 * time.Second,
		GenerateRequestID:      true,
		UseRemoteAddress:       true,
		MaxRequestHeadersBytes: 60 << 10,
		MaxHeadersCount:        100,
	}
}

func prefixRoute(name, prefix, cluster string) *config.Route {
	return &config.Route{Name: name, Match: config.RouteMatch{Prefix: prefix}, Action: &config.RouteAction{Cluster: cluster, Timeout: 5 * time.Second}}
}

// snapshot is one listener on a free loopback port with the given manager.
func snapshot(m *config.HTTPConnectionManager, clusters ...*config.Cluster) *config.Snapshot {
	return &config.Snapshot{
		Version:   "test",
		Listeners: []*config.Listener{{Name: "main", Address: "127.0.0.1:0", FilterChains: []*config.FilterChain{{HTTP: m}}}},
		Clusters:  clusters,
	}
}

func proxyURL(srv *server.Server) string { return "http://" + srv.ListenerAddr("main").String() }

// rawExchange writes raw bytes to the proxy and reads until the peer closes
// or the timeout passes.
func rawExchange(t testing.TB, addr, req string, timeout time.Duration) (string, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	buf := make([]byte, 4096)
	closed := false
	for {
		n, err := c.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			closed = err == io.EOF || !isTimeoutErr(err)
			break
		}
	}
	return sb.String(), closed
}

func isTimeoutErr(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// readResponse reads one response from a raw connection.
func readResponse(t testing.TB, br *bufio.Reader, method string) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	return resp
}

// load is a bounded load loop: workers GET a URL until stopped (or each
// has sent its maximum), counting answers that pass a check.
type load struct {
	ok, bad  atomic.Int64
	firstErr atomic.Value // string
	stop     chan struct{}
	wg       sync.WaitGroup
}

// startLoad starts workers that GET url; want says whether a 200 body is
// right. Every worker stops after max requests or 20 s at the latest.
func startLoad(url string, workers, max int, want func(body string) bool) *load {
	l := &load{stop: make(chan struct{})}
	deadline := time.Now().Add(20 * time.Second)
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			client := &http.Client{Timeout: 5 * time.Second}
			for n := 0; n < max && time.Now().Before(deadline); n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				resp, err := client.Get(url)
				if err != nil {
					l.fail(err.Error())
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || !want(string(body)) {
					l.fail(fmt.Sprintf("status %d body %q", resp.StatusCode, body))
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	return l
}

func (l *load) fail(msg string) {
	l.bad.Add(1)
	l.firstErr.CompareAndSwap(nil, msg)
}

// finish stops the workers and fails the test if any request failed or
// none succeeded.
func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if l.bad.Load() > 0 || l.ok.Load() == 0 {
		t.Fatalf("%d ok, %d failed; first failure: %v", l.ok.Load(), l.bad.Load(), l.firstErr.Load())
	}
}
