package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
)

// h2cClient speaks HTTP/2 with prior knowledge over plain TCP.
func h2cClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// h2cUpstream is an HTTP/2 origin without TLS (like a gRPC server).
func h2cUpstream(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	return h2cUpstreamLimited(t, 0, h)
}

// h2cUpstreamLimited is h2cUpstream allowing maxStreams concurrent
// streams per connection (0: x/net's default).
func h2cUpstreamLimited(t *testing.T, maxStreams uint32, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http2.Server{MaxConcurrentStreams: maxStreams}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(c, &http2.ServeConnOpts{Handler: h})
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// echoHandler answers with the protocol it saw, the request body, and
// trailers (declared and set after the body).
func echoHandler(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Trailer", "X-Trailer")
	w.Header().Set("X-Proto", r.Proto)
	w.Header().Set("X-Te", r.Header.Get("Te"))
	w.Header().Set("X-Req-Trailer", r.Trailer.Get("X-Req-Trailer"))
	w.Header().Set("X-Host", r.Host)
	fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, body)
	w.Header().Set("X-Trailer", "done")
}

func TestHTTP2Translation(t *testing.T) {
	h1 := newUpstream(t, echoHandler)
	h2 := h2cUpstream(t, echoHandler)
	m := hcm(prefixRoute("h1", "/h1/", "h1"), prefixRoute("h2", "/h2/", "h2"))
	up2 := cluster("h2", h2)
	up2.Protocol = config.ProtocolHTTP2
	srv := startServer(t, snapshot(m, cluster("h1", h1.addr()), up2))
	base := proxyURL(srv)

	clients := map[string]*http.Client{
		"h1": {Timeout: 10 * time.Second},
		"h2": h2cClient(),
	}
	for _, down := range []string{"h1", "h2"} {
		for _, up := range []string{"h1", "h2"} {
			t.Run(down+"->"+up, func(t *testing.T) {
				body := strings.Repeat("x", 100<<10)
				req, _ := http.NewRequest("POST", base+"/"+up+"/echo", strings.NewReader(body))
				req.Header.Set("Te", "trailers")
				req.Header.Set("X-Keep", "1")
				req.Trailer = http.Header{"X-Req-Trailer": {"sent"}}
				req.ContentLength = -1 // chunked on HTTP/1.1, so trailers can go
				resp, err := clients[down].Do(req)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				wantProto := map[string]string{"h1": "HTTP/1.1", "h2": "HTTP/2.0"}
				if resp.Proto != wantProto[down] {
					t.Errorf("client saw %s", resp.Proto)
				}
				if p := resp.Header.Get("X-Proto"); p != wantProto[up] {
					t.Errorf("upstream saw %s", p)
				}
				if string(got) != "POST /"+up+"/echo "+body {
					t.Errorf("body: %d bytes %q...", len(got), got[:min(len(got), 40)])
				}
				if te := resp.Header.Get("X-Te"); te != "trailers" {
					t.Errorf("upstream te = %q, want trailers kept", te)
				}
				if tr := resp.Header.Get("X-Req-Trailer"); tr != "sent" {
					t.Errorf("request trailer at upstream = %q", tr)
				}
				if tr := resp.Trailer.Get("X-Trailer"); tr != "done" {
					t.Errorf("response trailer = %q (trailers %v)", tr, resp.Trailer)
				}
				if h := resp.Header.Get("X-Host"); !strings.HasPrefix(h, "127.0.0.1:") {
					t.Errorf("upstream host = %q", h)
				}
			})
		}
	}
}

func TestHTTP2Resets(t *testing.T) {
	released := make(chan struct{})
	var upstreamCancelled atomic.Int64
	h2 := h2cUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			select {
			case <-r.Context().Done():
				upstreamCancelled.Add(1)
			case <-released:
			}
		case "/break":
			w.Write(bytes.Repeat([]byte("y"), 1000))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // RST_STREAM mid-body
		}
	})
	defer close(released)
	up := cluster("h2", h2)
	up.Protocol = config.ProtocolHTTP2
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "h2")), up))
	base := proxyURL(srv)
	client := h2cClient()

	t.Run("client cancel resets the upstream stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/slow", nil)
		errc := make(chan error, 1)
		go func() {
			_, err := client.Do(req)
			errc <- err
		}()
		time.Sleep(100 * time.Millisecond)
		cancel()
		if err := <-errc; err == nil {
			t.Fatal("request succeeded after cancel")
		}
		eventually(t, "the upstream to see the cancel", func() bool { return upstreamCancelled.Load() == 1 })
	})

	t.Run("upstream reset mid-body resets the client stream", func(t *testing.T) {
		resp, err := client.Get(base + "/break")
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		var se http2.StreamError
		if !errors.As(err, &se) {
			t.Fatalf("body read error = %v, want a stream reset", err)
		}
	})

	t.Run("the connection survives both", func(t *testing.T) {
		req, _ := http.NewRequest("GET", base+"/fine", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

// eventually polls cond every 10ms for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestTLSListenerAndUpstream(t *testing.T) {
	ca := tlstest.NewCA(t, "test ca")
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, "proxy.test").WriteFiles(t, dir, "proxy")

	// An HTTPS upstream speaking HTTP/2 and HTTP/1.1, chosen by ALPN.
	upSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s tls=%v", r.Proto, r.TLS != nil)
	}))
	upSrv.EnableHTTP2 = true
	upLeaf := ca.Issue(t, "origin.test")
	upSrv.TLS = &tls.Config{Certificates: []tls.Certificate{upLeaf.TLSCertificate(t)}}
	upSrv.StartTLS()
	t.Cleanup(upSrv.Close)
	caFile := dir + "/ca.pem"
	tlstest.WriteFile(t, caFile, ca.CertPEM)

	var clusters []*config.Cluster
	for _, proto := range []string{config.ProtocolAuto, config.ProtocolHTTP1, config.ProtocolHTTP2} {
		c := cluster("origin-"+proto, strings.TrimPrefix(upSrv.URL, "https://"))
		c.Protocol = proto
		c.TLS = &config.UpstreamTLS{SNI: "origin.test", CA: config.DataSource{Filename: caFile}, SubjectAltNames: []string{"origin.test"}}
		clusters = append(clusters, c)
	}
	bad := cluster("origin-wrong-name", strings.TrimPrefix(upSrv.URL, "https://"))
	bad.TLS = &config.UpstreamTLS{SNI: "other.test", CA: config.DataSource{Filename: caFile}, SubjectAltNames: []string{"other.test"}}
	clusters = append(clusters, bad)

	m := hcm(prefixRoute("auto", "/auto", "origin-auto"), prefixRoute("h1", "/h1", "origin-http1"),
		prefixRoute("h2", "/h2", "origin-http2"), prefixRoute("bad", "/bad", "origin-wrong-name"))
	snap := snapshot(m, clusters...)
	snap.Listeners[0].FilterChains[0].TLS = &config.DownstreamTLS{
		Certificates: []config.Certificate{{Chain: config.DataSource{Filename: certFile}, Key: config.DataSource{Filename: keyFile}}},
	}
	srv := startServer(t, snap)
	addr := srv.ListenerAddr("main").String()

	for _, alpn := range []string{"h2", "http/1.1"} {
		t.Run("client "+alpn, func(t *testing.T) {
			tr := &http.Transport{
				TLSClientConfig:   &tls.Config{RootCAs: ca.Pool(), ServerName: "proxy.test", NextProtos: []string{alpn}},
				ForceAttemptHTTP2: alpn == "h2",
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for path, want := range map[string]string{
				"/auto": "HTTP/2.0 tls=true",
				"/h1":   "HTTP/1.1 tls=true",
				"/h2":   "HTTP/2.0 tls=true",
			} {
				resp, err := client.Get("https://" + addr + path)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				wantDown := map[string]int{"h2": 2, "http/1.1": 1}[alpn]
				if resp.ProtoMajor != wantDown {
					t.Errorf("%s: client spoke %s", path, resp.Proto)
				}
				if string(b) != want {
					t.Errorf("%s: upstream saw %q, want %q", path, b, want)
				}
			}
			// A certificate that does not match the configured name is
			// refused: a connect failure, 503.
			resp, err := client.Get("https://" + addr + "/bad")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 503 {
				t.Errorf("/bad: status %d, want 503", resp.StatusCode)
			}
		})
	}
}

// TestHTTP2Backpressure: a client that stops reading stalls the upstream
// (flow-control windows end to end), instead of the proxy buffering the
// whole response.
func TestHTTP2Backpressure(t *testing.T) {
	const total = 64 << 20
	var written atomic.Int64
	up := h2cUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("z"), 64<<10)
		for written.Load() < total {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	cl := cluster("h2", up)
	cl.Protocol = config.ProtocolHTTP2
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "h2")), cl))
	client := h2cClient()
	client.Timeout = 60 * time.Second
	resp, err := client.Get(proxyURL(srv) + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The client reads nothing: the upstream must stall after the windows
	// and socket buffers on the way are full.
	var last int64 = -1
	for range 100 {
		time.Sleep(20 * time.Millisecond)
		n := written.Load()
		if n == last {
			break
		}
		last = n
	}
	if stalled := written.Load(); stalled > 32<<20 {
		t.Fatalf("upstream wrote %d MiB to a client that reads nothing", stalled>>20)
	} else {
		t.Logf("upstream stalled after %.1f MiB", float64(stalled)/(1<<20))
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != total {
		t.Fatalf("read %d bytes, err %v; want %d", n, err, total)
	}
}
