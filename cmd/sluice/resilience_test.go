package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

func TestRetries(t *testing.T) {
	var calls atomic.Int64
	flaky := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1)%2 == 1 {
			w.WriteHeader(503)
			io.WriteString(w, "try again")
			return
		}
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, "ok "+string(body))
	})
	good := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "good") })

	retry := func(on ...string) *config.RetryPolicy {
		return &config.RetryPolicy{RetryOn: on, NumRetries: 2, BackoffBase: time.Millisecond}
	}
	routes := []*config.Route{
		{Name: "5xx", Match: config.RouteMatch{Prefix: "/5xx"}, Action: &config.RouteAction{Cluster: "flaky", Timeout: 5 * time.Second, RetryPolicy: retry("5xx")}},
		{Name: "codes", Match: config.RouteMatch{Prefix: "/codes"}, Action: &config.RouteAction{Cluster: "flaky", Timeout: 5 * time.Second,
			RetryPolicy: &config.RetryPolicy{RetryOn: []string{"retriable-status-codes"}, RetriableStatusCodes: []uint32{503}, NumRetries: 1}}},
		{Name: "none", Match: config.RouteMatch{Prefix: "/none"}, Action: &config.RouteAction{Cluster: "flaky", Timeout: 5 * time.Second}},
		{Name: "connect", Match: config.RouteMatch{Prefix: "/connect"}, Action: &config.RouteAction{Cluster: "half-dead", Timeout: 5 * time.Second,
			RetryPolicy: &config.RetryPolicy{RetryOn: []string{"connect-failure"}, NumRetries: 3, RetryOtherHosts: true, BackoffBase: time.Millisecond}}},
		{Name: "dead", Match: config.RouteMatch{Prefix: "/dead"}, Action: &config.RouteAction{Cluster: "dead", Timeout: 5 * time.Second}},
	}
	dead := deadAddr(t)
	srv := startServer(t, snapshot(hcm(routes...), cluster("flaky", flaky.addr()), cluster("half-dead", dead, good.addr()), cluster("dead", dead)))
	base := proxyURL(srv)

	post := func(path, body string) (int, string) {
		resp, err := http.Post(base+path, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	calls.Store(0)
	if code, body := post("/5xx", "payload"); code != 200 || body != "ok payload" {
		t.Errorf("5xx retry: got %d %q", code, body)
	}
	calls.Store(0)
	if code, body := post("/codes", "x"); code != 200 || body != "ok x" {
		t.Errorf("retriable status codes: got %d %q", code, body)
	}
	calls.Store(0)
	if code, body := post("/none", "x"); code != 503 || body != "try again" {
		t.Errorf("no retry policy: got %d %q, want the upstream's 503", code, body)
	}
	for i := 0; i < 4; i++ {
		if code, body := post("/connect", ""); code != 200 || body != "good" {
			t.Errorf("connect-failure retry to another host: got %d %q", code, body)
		}
	}
	if code, body := post("/dead", ""); code != 503 || !strings.Contains(body, "connection failure") {
		t.Errorf("dead cluster: got %d %q", code, body)
	}
}

func TestTimeouts(t *testing.T) {
	slow := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
		io.WriteString(w, "late")
	})
	routes := []*config.Route{
		{Name: "route", Match: config.RouteMatch{Prefix: "/route"}, Action: &config.RouteAction{Cluster: "slow", Timeout: 200 * time.Millisecond}},
		{Name: "try", Match: config.RouteMatch{Prefix: "/try"}, Action: &config.RouteAction{Cluster: "slow", Timeout: 3 * time.Second,
			RetryPolicy: &config.RetryPolicy{RetryOn: []string{"5xx"}, NumRetries: 1, PerTryTimeout: 150 * time.Millisecond, BackoffBase: time.Millisecond}}},
	}
	srv := startServer(t, snapshot(hcm(routes...), cluster("slow", slow.addr())))
	for _, path := range []string{"/route", "/try"} {
		start := time.Now()
		resp, err := http.Get(proxyURL(srv) + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 504 || !strings.Contains(string(b), "timeout") {
			t.Errorf("%s: got %d %q, want 504", path, resp.StatusCode, b)
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("%s: took %v", path, d)
		}
	}
}

func TestCircuitBreakerMaxRequests(t *testing.T) {
	release := make(chan struct{})
	var inFlight sync.WaitGroup
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			inFlight.Done()
			<-release
		}
		io.WriteString(w, "ok")
	})
	c := cluster("up", up.addr())
	c.CircuitBreakers.MaxRequests = 2
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "up")), c))
	inFlight.Add(2)
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(proxyURL(srv) + "/hold")
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	inFlight.Wait()
	resp, err := http.Get(proxyURL(srv) + "/third")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	close(release)
	wg.Wait()
	if resp.StatusCode != 503 {
		t.Fatalf("third request over max_requests: got %d, want 503", resp.StatusCode)
	}
	var out strings.Builder
	srv.Stats()
	for _, m := range srv.Stats().Metrics() {
		if strings.HasPrefix(m.Name, "cluster.up.upstream_rq_pending_overflow") || strings.HasPrefix(m.Name, "cluster.up.upstream_rq_overflow") {
			out.WriteString(m.Name)
		}
	}
	_ = out
}

// TestUpgradeTunnel: a 101 answer turns the exchange into a byte tunnel.
func TestUpgradeTunnel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil || req.Header.Get("Upgrade") != "echo" {
					io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
					return
				}
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
				io.Copy(c, br)
			}(c)
		}
	}()
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "ws")), cluster("ws", ln.Addr().String())))
	c, err := net.Dial("tcp", srv.ListenerAddr("main").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp := readResponse(t, br, "GET")
	if resp.StatusCode != 101 {
		t.Fatalf("got %d, want 101", resp.StatusCode)
	}
	io.WriteString(c, "ping through the tunnel")
	buf := make([]byte, len("ping through the tunnel"))
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping through the tunnel" {
		t.Fatalf("tunnel echo: %q %v", buf, err)
	}
}

// TestSlowloris: a client trickling its header is cut off.
func TestSlowloris(t *testing.T) {
	up := newUpstream(t, nil)
	m := hcm(prefixRoute("all", "/", "up"))
	m.RequestHeadersTimeout = 300 * time.Millisecond
	srv := startServer(t, snapshot(m, cluster("up", up.addr())))
	c, err := net.Dial("tcp", srv.ListenerAddr("main").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	line := "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + strings.Repeat("a", 100)
	closed := false
	for i := 0; i < len(line) && time.Since(start) < 5*time.Second; i++ {
		if _, err := c.Write([]byte{line[i]}); err != nil {
			closed = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !closed {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := io.ReadAll(c)
		closed = err == nil || !isTimeoutErr(err)
	}
	if !closed {
		t.Fatal("a trickling client kept its connection")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("cut off only after %v", d)
	}
}

// TestHashPolicies: ring_hash and maglev send a hash key to one host.
func TestHashPolicies(t *testing.T) {
	var ups []*countingUpstream
	var addrs []string
	for i := 0; i < 4; i++ {
		name := string(rune('a' + i))
		u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
		ups = append(ups, u)
		addrs = append(addrs, u.addr())
	}
	for _, lb := range []config.LBPolicy{config.LBRingHash, config.LBMaglev} {
		t.Run(string(lb), func(t *testing.T) {
			c := cluster("up", addrs...)
			c.LBPolicy = lb
			r := prefixRoute("all", "/", "up")
			r.Action.HashPolicy = []config.HashPolicy{{Header: "x-user"}}
			srv := startServer(t, snapshot(hcm(r), c))
			seen := map[string]map[string]bool{}
			for i := 0; i < 40; i++ {
				user := []string{"alice", "bob", "carol", "dave", "erin"}[i%5]
				req, _ := http.NewRequest("GET", proxyURL(srv)+"/", nil)
				req.Header.Set("x-user", user)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if seen[user] == nil {
					seen[user] = map[string]bool{}
				}
				seen[user][string(b)] = true
			}
			hosts := map[string]bool{}
			for user, s := range seen {
				if len(s) != 1 {
					t.Errorf("%s went to %d hosts, want 1", user, len(s))
				}
				for h := range s {
					hosts[h] = true
				}
			}
			if len(hosts) < 2 {
				t.Errorf("5 users all hashed to %v: no spreading", hosts)
			}
		})
	}
}

// TestAccessLogFile: a file access log gets one line per request in the
// configured format.
func TestAccessLogFile(t *testing.T) {
	up := newUpstream(t, nil)
	path := t.TempDir() + "/access.log"
	m := hcm(prefixRoute("all", "/", "up"))
	m.AccessLogs = []*config.AccessLog{{Path: path, Format: "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER% %ROUTE_NAME%\n"}}
	srv := startServer(t, snapshot(m, cluster("up", up.addr())))
	for _, p := range []string{"/one", "/two"} {
		resp, err := http.Get(proxyURL(srv) + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	srv.Shutdown() // flushes the log
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Lines are written when each stream ends; the client may have used
	// two connections, so the order is not fixed.
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	sort.Strings(lines)
	if got := strings.Join(lines, "\n"); got != "GET /one 200 up all\nGET /two 200 up all" || !strings.HasSuffix(string(b), "\n") {
		t.Errorf("access log:\n%s", b)
	}
}

// TestMirrorAndAutoHostRewrite: a mirror policy shadows requests with a
// "-shadow" authority; auto_host_rewrite sends the upstream's address.
func TestMirrorAndAutoHostRewrite(t *testing.T) {
	got := make(chan string, 4)
	shadowUp := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- r.Host + " " + r.URL.Path + " " + string(b)
	})
	main := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Host) })
	r := prefixRoute("all", "/", "main")
	r.Action.MirrorPolicy = []config.MirrorPolicy{{Cluster: "shadow", Percent: 100}}
	r.Action.AutoHostRewrite = true
	srv := startServer(t, snapshot(hcm(r), cluster("main", main.addr()), cluster("shadow", shadowUp.addr())))
	req, _ := http.NewRequest("GET", proxyURL(srv)+"/m", nil)
	req.Host = "example.com:8080"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != main.addr() {
		t.Errorf("auto host rewrite: upstream saw host %q, want %q", b, main.addr())
	}
	select {
	case s := <-got:
		if s != "example.com-shadow:8080 /m " {
			t.Errorf("shadow saw %q", s)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no shadow request")
	}
}

// TestUpstreamClosesKeptAliveConnection: an origin that closes every
// connection right after answering (without saying so) costs nothing: the
// reused stale connection is retried on a fresh one.
func TestUpstreamClosesKeptAliveConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}(c)
		}
	}()
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "up")), cluster("up", ln.Addr().String())))
	for i := 0; i < 20; i++ {
		for _, method := range []string{"GET", "POST"} {
			req, _ := http.NewRequest(method, proxyURL(srv)+"/", strings.NewReader("body"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "ok" {
				t.Fatalf("request %d %s: %d %q", i, method, resp.StatusCode, b)
			}
		}
	}
}
