package http2

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	xhttp2 "golang.org/x/net/http2"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

func TestClientGet(t *testing.T) {
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-Te", r.Header.Get("Te"))
		w.Header().Set("X-Custom", r.Header.Get("X-Custom"))
		w.Header().Set("X-Connection", r.Header.Get("Connection")+r.Header.Get("Keep-Alive"))
		io.WriteString(w, "hello "+r.URL.Path)
	}), nil)
	mc := ts.dial(t, nil)

	tests := []struct {
		name     string
		req      func() *header.Map
		wantHost string
	}{
		{"pseudo-headers", func() *header.Map { return clRequest("GET", "/a") }, "sluice.test"},
		{"host fallback", func() *header.Map {
			h := &header.Map{}
			h.Add(":method", "GET")
			h.Add(":scheme", "http")
			h.Add(":path", "/a")
			h.Add("Host", "from-host.test")
			return h
		}, "from-host.test"},
		{"hop-by-hop dropped", func() *header.Map {
			h := clRequest("GET", "/a")
			h.Add("Connection", "close")
			h.Add("Keep-Alive", "timeout=5")
			h.Add("TE", "gzip, trailers")
			h.Add("X-CUSTOM", "v")
			return h
		}, "sluice.test"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := clExchange(t, mc, tc.req(), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			h := resp.final()
			if got := h.At(0); got.Name != ":status" || got.Value != "200" {
				t.Fatalf("first field %v", got)
			}
			if h.Value("x-method") != "GET" || h.Value("x-host") != tc.wantHost || h.Value("x-connection") != "" {
				t.Errorf("server saw %v", h.Fields())
			}
			if string(resp.body) != "hello /a" || !resp.reusable {
				t.Errorf("body %q reusable %v", resp.body, resp.reusable)
			}
		})
	}
	resp, err := clExchange(t, mc, tests[2].req(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h := resp.final(); h.Value("x-te") != "trailers" || h.Value("x-custom") != "v" {
		t.Errorf("te %q custom %q", h.Value("x-te"), h.Value("x-custom"))
	}
	if mc.Active() != 0 || !mc.Usable() {
		t.Errorf("active %d usable %v", mc.Active(), mc.Usable())
	}
}

func TestClientLargeBodiesBothWays(t *testing.T) {
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body) // echo, full duplex
	}), nil)
	// Windows well below the body size: both directions hit flow control.
	mc := ts.dial(t, &stream.ClientOptions{InitialStreamWindow: 64 << 10, InitialConnWindow: 256 << 10})
	body := make([]byte, 6<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range body {
		body[i] = byte(rng.Uint32())
	}
	resp, err := clExchange(t, mc, clRequest("POST", "/echo"), body, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(resp.body) != sha256.Sum256(body) {
		t.Fatalf("echoed %d bytes, sent %d: contents differ", len(resp.body), len(body))
	}
}

func TestClientTrailersBothWays(t *testing.T) {
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Echo-Trailer")
		w.WriteHeader(200)
		w.Write(b)
		w.Header().Set("X-Echo-Trailer", r.Trailer.Get("X-Req-Trailer"))
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	}), nil)
	mc := ts.dial(t, nil)
	tr := &header.Map{}
	tr.Add("X-Req-Trailer", "t1")
	req := clRequest("POST", "/")
	req.Add("trailer", "X-Req-Trailer")
	resp, err := clExchange(t, mc, req, []byte("body"), tr)
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.body) != "body" || resp.trailers.Value("x-echo-trailer") != "t1" || resp.trailers.Value("x-late") != "late" {
		t.Fatalf("body %q trailers %v", resp.body, resp.trailers.Fields())
	}
	if !resp.reusable {
		t.Error("not reusable")
	}
}

func TestClientEarlyHints(t *testing.T) {
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.WriteHeader(200)
		io.WriteString(w, "done")
	}), nil)
	mc := ts.dial(t, nil)
	resp, err := clExchange(t, mc, clRequest("GET", "/"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.heads) != 2 || resp.heads[0].Value(":status") != "103" || resp.heads[0].Value("link") == "" ||
		resp.heads[1].Value(":status") != "200" || string(resp.body) != "done" {
		t.Fatalf("heads %v body %q", resp.heads, resp.body)
	}
}

func TestClientConcurrentStreams(t *testing.T) {
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Write(bytes.Repeat([]byte{'x'}, n))
	}), nil)
	mc := ts.dial(t, nil)
	const goroutines, each = 32, 16
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				n := (g*each + i) * 997 % 70000
				resp, err := clExchange(t, mc, clRequest("GET", fmt.Sprintf("/?n=%d", n)), nil, nil)
				if err != nil {
					errs <- err
					return
				}
				if len(resp.body) != n {
					errs <- fmt.Errorf("got %d bytes, want %d", len(resp.body), n)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if mc.Active() != 0 {
		t.Errorf("active %d", mc.Active())
	}
}

func TestClientMaxConcurrentStreams(t *testing.T) {
	release := make(chan struct{})
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), func(s *xhttp2.Server) { s.MaxConcurrentStreams = 2 })
	defer close(release)
	mc := ts.dial(t, nil)
	clWaitFor(t, "the server's SETTINGS", func() bool { return mc.Capacity() == 2 })
	var streams []stream.ClientConn
	for i := 0; i < 2; i++ {
		cs, err := mc.NewStream()
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.WriteRequestHeaders(clRequest("GET", "/"), true); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, cs)
	}
	if _, err := mc.NewStream(); !errors.Is(err, stream.ErrStreamLimit) {
		t.Fatalf("third stream: %v", err)
	}
	if mc.Capacity() != 0 || mc.Active() != 2 {
		t.Fatalf("capacity %d active %d", mc.Capacity(), mc.Active())
	}
	streams[0].Close()
	cs, err := mc.NewStream()
	if err != nil {
		t.Fatalf("after a close: %v", err)
	}
	cs.Close()
	streams[1].Close()
}

func TestClientServerReset(t *testing.T) {
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/mid-body" {
			w.Write(make([]byte, 1000))
			w.(http.Flusher).Flush()
		}
		panic(http.ErrAbortHandler)
	}), nil)
	mc := ts.dial(t, nil)
	for _, path := range []string{"/", "/mid-body"} {
		_, err := clExchange(t, mc, clRequest("GET", path), nil, nil)
		var rs *stream.ErrStreamReset
		if !errors.As(err, &rs) || !rs.Remote {
			t.Errorf("%s: %v, want a remote reset", path, err)
		}
	}
	if !mc.Usable() {
		t.Error("a stream reset broke the connection")
	}
}

func TestClientDeadline(t *testing.T) {
	cancelled := make(chan struct{}, 1)
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			cancelled <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	}), nil)
	mc := ts.dial(t, nil)
	cs, err := mc.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if err := cs.WriteRequestHeaders(clRequest("POST", "/"), false); err != nil {
		t.Fatal(err)
	}
	cs.SetDeadline(time.Now().Add(50 * time.Millisecond))
	err = cs.ReadResponseHeaders(&header.Map{})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v", err)
	}
	if err := cs.WriteRequestBody([]byte("x"), true); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write after the deadline: %v", err)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the server never saw the reset")
	}
	if cs.Reusable() || !mc.Usable() {
		t.Errorf("reusable %v usable %v", cs.Reusable(), mc.Usable())
	}
}

func TestClientCloseUnblocks(t *testing.T) {
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/body" {
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	}), nil)
	mc := ts.dial(t, nil)
	tests := []struct {
		name  string
		block func(cs stream.ClientConn) error
	}{
		{"ReadResponseHeaders", func(cs stream.ClientConn) error {
			cs.WriteRequestHeaders(clRequest("GET", "/"), true)
			return cs.ReadResponseHeaders(&header.Map{})
		}},
		{"ResponseBody", func(cs stream.ClientConn) error {
			cs.WriteRequestHeaders(clRequest("GET", "/body"), true)
			if err := cs.ReadResponseHeaders(&header.Map{}); err != nil {
				return fmt.Errorf("head: %w", err)
			}
			_, err := cs.ResponseBody().Read(make([]byte, 10))
			return err
		}},
		{"WriteRequestBody on a full window", func(cs stream.ClientConn) error {
			cs.WriteRequestHeaders(clRequest("POST", "/"), false)
			// The handler reads nothing: the server's window fills.
			return cs.WriteRequestBody(make([]byte, 8<<20), true)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs, err := mc.NewStream()
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- tc.block(cs) }()
			time.Sleep(50 * time.Millisecond)
			cs.Close()
			select {
			case err := <-done:
				if !errors.Is(err, clErrStreamClosed) {
					t.Errorf("unblocked with %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not unblock")
			}
		})
	}
	if mc.Active() != 0 || !mc.Usable() {
		t.Errorf("active %d usable %v", mc.Active(), mc.Usable())
	}
}

func TestClientConnCloseFailsStreams(t *testing.T) {
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}), nil)
	mc := ts.dial(t, nil)
	cs, err := mc.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	cs.WriteRequestHeaders(clRequest("GET", "/"), true)
	done := make(chan error, 1)
	go func() { done <- cs.ReadResponseHeaders(&header.Map{}) }()
	time.Sleep(20 * time.Millisecond)
	mc.Close()
	err = <-done
	var rs *stream.ErrStreamReset
	if !errors.Is(err, stream.ErrConnClosed) || !errors.As(err, &rs) {
		t.Fatalf("stream failed with %v", err)
	}
	select {
	case <-mc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if _, err := mc.NewStream(); !errors.Is(err, stream.ErrConnClosed) {
		t.Fatalf("NewStream after Close: %v", err)
	}
}

func TestClientServerGoAway(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "finished")
	}), nil)
	mc := ts.dial(t, nil)
	cs, err := mc.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if err := cs.WriteRequestHeaders(clRequest("GET", "/"), true); err != nil {
		t.Fatal(err)
	}
	<-started // else the GOAWAY may rightly refuse it
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- ts.hs.Shutdown(ctx)
	}()
	clWaitFor(t, "GOAWAY", func() bool { return !mc.Usable() })
	if _, err := mc.NewStream(); !errors.Is(err, stream.ErrConnClosed) {
		t.Errorf("NewStream after GOAWAY: %v", err)
	}
	close(release)
	h := &header.Map{}
	if err := cs.ReadResponseHeaders(h); err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(cs.ResponseBody())
	if err != nil || string(body) != "finished" {
		t.Fatalf("in-flight stream: %q, %v", body, err)
	}
	cs.Close()
	select {
	case <-mc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed after its last stream")
	}
	<-shut
}

func TestClientBackpressure(t *testing.T) {
	const total = 10 << 20
	var written atomic.Int64
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 16<<10)
		for written.Load() < total {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			written.Add(int64(len(chunk)))
			w.(http.Flusher).Flush()
		}
	}), nil)
	const window = 64 << 10
	mc := ts.dial(t, &stream.ClientOptions{InitialStreamWindow: window})
	cs, err := mc.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	cs.SetDeadline(time.Now().Add(20 * time.Second))
	cs.WriteRequestHeaders(clRequest("GET", "/"), true)
	if err := cs.ReadResponseHeaders(&header.Map{}); err != nil {
		t.Fatal(err)
	}
	// Read nothing until the server stops making progress.
	last, stable := int64(-1), 0
	for i := 0; i < 200 && stable < 10; i++ {
		time.Sleep(10 * time.Millisecond)
		if n := written.Load(); n == last {
			stable++
		} else {
			last, stable = n, 0
		}
	}
	// The handler is one buffered chunk or so past what the window let
	// through.
	if last > window+256<<10 {
		t.Fatalf("server wrote %d bytes against a %d-byte window", last, window)
	}
	n, err := io.Copy(io.Discard, cs.ResponseBody())
	if err != nil || n != total {
		t.Fatalf("read %d bytes: %v", n, err)
	}
}

func TestClientKeepalive(t *testing.T) {
	t.Run("answered", func(t *testing.T) {
		ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), nil)
		mc := ts.dial(t, &stream.ClientOptions{KeepaliveInterval: 10 * time.Millisecond, KeepaliveTimeout: time.Second})
		time.Sleep(200 * time.Millisecond)
		if !mc.Usable() {
			t.Fatal("a connection answering pings was closed")
		}
	})
	t.Run("unanswered", func(t *testing.T) {
		f, mc := clStartFake(t, &stream.ClientOptions{KeepaliveInterval: 10 * time.Millisecond, KeepaliveTimeout: 50 * time.Millisecond})
		f.expect(xhttp2.FramePing) // and never answer it
		select {
		case <-mc.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("connection kept despite an unanswered ping")
		}
	})
}

func TestClientStreamIDsExhausted(t *testing.T) {
	ts := clStartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), nil)
	mc := ts.dial(t, nil)
	mc.mu.Lock()
	mc.idsLeft = 1
	mc.mu.Unlock()
	cs, err := mc.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	if mc.Usable() || mc.Capacity() != 0 {
		t.Fatal("usable with no stream ids left")
	}
	if _, err := mc.NewStream(); !errors.Is(err, stream.ErrConnClosed) {
		t.Fatalf("NewStream: %v", err)
	}
	cs.Close() // never used its id: the connection may take one more
	if !mc.Usable() {
		t.Fatal("unused reservation not returned")
	}
}
