package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

func TestProxyBasics(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Got-XFF", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Got-Proto", r.Header.Get("X-Forwarded-Proto"))
		w.Header().Set("X-Got-Request-Id", r.Header.Get("X-Request-Id"))
		w.Header().Set("X-Got-Connection", r.Header.Get("Connection")+"|"+r.Header.Get("X-Hop"))
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d %s", r.Method, r.URL.RequestURI(), len(body), r.TransferEncoding)
	})
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "up")), cluster("up", up.addr())))
	base := proxyURL(srv)

	tests := []struct {
		name, method, path, body string
		chunked                  bool
		want                     string
	}{
		{"get", "GET", "/a/b?x=1", "", false, "GET /a/b?x=1 0 []"},
		{"post content-length", "POST", "/p", "hello", false, "POST /p 5 []"},
		{"post chunked", "POST", "/c", strings.Repeat("z", 100000), true, "POST /c 100000 [chunked]"},
		{"head", "HEAD", "/h", "", false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
				if tc.chunked {
					body = io.MultiReader(body) // hides the length: net/http sends chunked
				}
			}
			req, _ := http.NewRequest(tc.method, base+tc.path, body)
			req.Header.Set("Connection", "keep-alive, X-Hop")
			req.Header.Set("X-Hop", "secret")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(got) != tc.want {
				t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, got, tc.want)
			}
			if xff := resp.Header.Get("X-Got-XFF"); xff != "127.0.0.1" {
				t.Errorf("x-forwarded-for = %q", xff)
			}
			if p := resp.Header.Get("X-Got-Proto"); p != "http" {
				t.Errorf("x-forwarded-proto = %q", p)
			}
			if id := resp.Header.Get("X-Got-Request-Id"); len(id) != 36 {
				t.Errorf("x-request-id = %q", id)
			}
			if c := resp.Header.Get("X-Got-Connection"); c != "|" {
				t.Errorf("hop-by-hop headers reached the upstream: %q", c)
			}
		})
	}
}

func TestDirectResponseRedirectAndNoRoute(t *testing.T) {
	m := hcm(
		&config.Route{Name: "health", Match: config.RouteMatch{Path: "/healthz"}, DirectResponse: &config.DirectResponse{Status: 200, Body: "ok\n"}},
		&config.Route{Name: "old", Match: config.RouteMatch{Prefix: "/old/"}, Redirect: &config.Redirect{PrefixRewrite: "/new/", ResponseCode: 308}},
	)
	srv := startServer(t, snapshot(m))
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		path     string
		code     int
		body     string
		location string
	}{
		{"/healthz", 200, "ok\n", ""},
		{"/old/x?y=1", 308, "", "http://" + srv.ListenerAddr("main").String() + "/new/x?y=1"},
		{"/nowhere", 404, "", ""},
	} {
		resp, err := client.Get(proxyURL(srv) + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || string(b) != tc.body || resp.Header.Get("Location") != tc.location {
			t.Errorf("%s: got %d %q loc %q, want %d %q loc %q", tc.path, resp.StatusCode, b, resp.Header.Get("Location"), tc.code, tc.body, tc.location)
		}
	}
}

// TestSmuggling sends every request-smuggling shape over a raw socket: each
// gets 400 and a closed connection, and the upstream sees nothing.
func TestSmuggling(t *testing.T) {
	up := newUpstream(t, nil)
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "up")), cluster("up", up.addr())))
	addr := srv.ListenerAddr("main").String()
	cases := map[string]string{
		"cl and te":           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"te and cl":           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
		"duplicate cl":        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"cl list":             "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
		"negative cl":         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\nhello",
		"non-digit cl":        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\nhello",
		"obs-fold":            "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
		"bare lf":             "GET / HTTP/1.1\nHost: a\n\n",
		"bare lf in headers":  "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
		"nul in header":       "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
		"space before colon":  "GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
		"te gzip chunked":     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		"te chunked identity": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
		"te identity":         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nhello",
		"duplicate te":        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"bad chunk size":      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
		"chunk size overflow": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
		"missing host":        "GET / HTTP/1.1\r\n\r\n",
		"bad version":         "GET / HTTP/1.7\r\nHost: a\r\n\r\n",
	}
	for name, req := range cases {
		t.Run(name, func(t *testing.T) {
			before := up.hits.Load()
			out, closed := rawExchange(t, addr, req, 3*time.Second)
			if !strings.HasPrefix(out, "HTTP/1.1 400 ") {
				t.Errorf("want 400, got %q", firstLine(out))
			}
			if !closed {
				t.Errorf("connection left open")
			}
			if up.hits.Load() != before {
				t.Errorf("the upstream saw the request")
			}
		})
	}
}

func firstLine(s string) string {
	if i := strings.Index(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// TestPipelining sends three requests in one write: answers come in order.
func TestPipelining(t *testing.T) {
	up := newUpstream(t, nil)
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "up")), cluster("up", up.addr())))
	c, err := net.Dial("tcp", srv.ListenerAddr("main").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []string{"GET /1 ", "POST /2 abc", "GET /3 "} {
		resp := readResponse(t, br, "GET")
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Fatalf("got %q, want %q", b, want)
		}
	}
}

// TestConcurrentKeepAlive: 1,000 keep-alive connections each complete
// requests with no error.
func TestConcurrentKeepAlive(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "up")), cluster("up", up.addr())))
	addr := srv.ListenerAddr("main").String()
	const conns, perConn = 1000, 3
	var wg sync.WaitGroup
	var failures atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, 1000)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(c)
			for j := 0; j < perConn; j++ {
				if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || string(b) != "ok" {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d body %q", resp.StatusCode, b))
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d connections failed; first: %v", n, conns, firstErr.Load())
	}
}

// TestReloadLosesNothing swaps snapshots 100 times while a bounded load
// loop runs; every request must succeed.
func TestReloadLosesNothing(t *testing.T) {
	a := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "a") })
	b := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "b") })
	mk := func(i int) *config.Snapshot {
		target := "a"
		if i%2 == 1 {
			target = "b"
		}
		s := snapshot(hcm(prefixRoute("all", "/", target)), cluster("a", a.addr()), cluster("b", b.addr()))
		s.Version = fmt.Sprint(i)
		return s
	}
	srv := startServer(t, mk(0))
	// Keep the port across swaps: listeners are matched by name and address.
	addr := srv.ListenerAddr("main").String()
	fixed := func(i int) *config.Snapshot {
		s := mk(i)
		s.Listeners[0].Address = addr
		return s
	}
	if err := srv.Apply(fixed(0)); err != nil {
		t.Fatal(err)
	}
	addr = srv.ListenerAddr("main").String()

	ld := startLoad("http://"+addr+"/", 8, 5000, func(body string) bool { return body == "a" || body == "b" })
	for i := 1; i <= 100; i++ {
		if err := srv.Apply(fixed(i)); err != nil {
			t.Fatalf("swap %d: %v", i, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	ld.finish(t)
	t.Logf("%d requests across 100 swaps, none lost", ld.ok.Load())
}

// TestBadSnapshotKeepsServing: a rejected snapshot leaves the old one on.
func TestBadSnapshotKeepsServing(t *testing.T) {
	up := newUpstream(t, nil)
	good := snapshot(hcm(prefixRoute("all", "/", "up")), cluster("up", up.addr()))
	srv := startServer(t, good)
	addr := srv.ListenerAddr("main").String()
	bad := snapshot(hcm(prefixRoute("all", "/", "missing")), cluster("up", up.addr()))
	bad.Listeners[0].Address = addr
	err := srv.Apply(bad)
	if err == nil || !strings.Contains(err.Error(), `unknown cluster "missing"`) {
		t.Fatalf("want unknown cluster error, got %v", err)
	}
	resp, err := http.Get("http://" + addr + "/still")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("old config stopped serving: %d", resp.StatusCode)
	}
	if srv.LastError() == "" {
		t.Fatal("last error not recorded")
	}
}

// TestAbsoluteFormTarget: a request line with an absolute URI (as sent to
// a forward proxy) is routed on its path and authority.
func TestAbsoluteFormTarget(t *testing.T) {
	up := newUpstream(t, nil)
	srv := startServer(t, snapshot(hcm(prefixRoute("api", "/api/", "up")), cluster("up", up.addr())))
	out, _ := rawExchange(t, srv.ListenerAddr("main").String(), "GET http://example.com/api/x?y=1 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", 3*time.Second)
	if !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.HasSuffix(out, "GET /api/x?y=1 ") {
		t.Fatalf("got %q", out)
	}
}

// TestTrailersAndContinue: trailers pass both ways over chunked encoding,
// and an Expect: 100-continue client gets its interim response.
func TestTrailersAndContinue(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Resp-Trailer")
		w.Header().Set("X-Got-Trailer", r.Trailer.Get("X-Req-Trailer"))
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		io.WriteString(w, "body:"+string(b))
		w.Header().Set("X-Resp-Trailer", "bye")
	})
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "up")), cluster("up", up.addr())))
	c, err := net.Dial("tcp", srv.ListenerAddr("main").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nTrailer: X-Req-Trailer\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("want 100 Continue first, got %q %v", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("100 response not terminated: %q", blank)
	}
	io.WriteString(c, "5\r\nhello\r\n0\r\nX-Req-Trailer: hi\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "body:hello" || resp.Header.Get("X-Got-Trailer") != "hi" || resp.Trailer.Get("X-Resp-Trailer") != "bye" {
		t.Fatalf("got %q, request trailer seen %q, response trailer %q", b, resp.Header.Get("X-Got-Trailer"), resp.Trailer.Get("X-Resp-Trailer"))
	}
}
