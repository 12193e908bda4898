package http2

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEcho(t *testing.T) {
	srv := startServer(t, echoHandler, nil, nil)
	client := h2cClient()
	cases := []struct {
		name     string
		size     int
		trailers bool
	}{
		{"empty", 0, false},
		{"small", 100, false},
		{"one frame", 16 << 10, false},
		{"several windows", 3<<20 + 7, false},
		{"with trailers", 50 << 10, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := randomBytes(t, tc.size)
			req, _ := http.NewRequest("POST", "http://"+srv.addr+"/echo", io.NopCloser(bytes.NewReader(body)))
			req.ContentLength = -1 // streamed: no content-length
			if tc.trailers {
				req.Trailer = http.Header{"Grpc-Status": {"0"}}
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" {
				t.Fatalf("status %d proto %s", resp.StatusCode, resp.Proto)
			}
			if !bytes.Equal(got, body) {
				t.Fatalf("echoed %d bytes, want %d (equal prefix: %v)", len(got), len(body), bytes.HasPrefix(body, got))
			}
			if resp.Trailer.Get("X-Body-Done") != "1" {
				t.Errorf("trailers %v: want x-body-done", resp.Trailer)
			}
			if tc.trailers && resp.Trailer.Get("Echo-Grpc-Status") != "0" {
				t.Errorf("trailers %v: want echo-grpc-status 0", resp.Trailer)
			}
		})
	}
}

// TestRequestMap checks the map a handler sees: pseudo-headers first in
// the HTTP/1 codec's order, host folded into :authority, cookies joined.
func TestRequestMap(t *testing.T) {
	got := make(chan []header.Field, 1)
	h := handlerFunc(func(s stream.ServerStream) {
		got <- append([]header.Field(nil), s.RequestHeaders().Fields()...)
		var rh header.Map
		rh.Add(":status", "204")
		s.WriteHeaders(&rh, true)
	})
	srv := startServer(t, h, nil, nil)
	rc := dialRaw(t, srv.addr)
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{
		{":method", "GET"}, {":scheme", "https"}, {":path", "/a?b=c"}, {":authority", "example.com"},
		{"cookie", "a=1"}, {"user-agent", "test"}, {"cookie", "b=2"}, {"te", "trailers"},
	} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: buf.Bytes(), EndStream: true, EndHeaders: true})
	var fields []header.Field
	select {
	case fields = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("handler not called")
	}
	want := [][2]string{
		{":method", "GET"}, {":path", "/a?b=c"}, {":authority", "example.com"}, {":scheme", "https"},
		{"cookie", "a=1; b=2"}, {"user-agent", "test"}, {"te", "trailers"},
	}
	var gotPairs [][2]string
	for _, f := range fields {
		gotPairs = append(gotPairs, [2]string{f.Name, f.Value})
	}
	if fmt.Sprint(gotPairs) != fmt.Sprint(want) {
		t.Errorf("request map\n got %v\nwant %v", fields, want)
	}
}

// TestMalformedRequests sends request heads RFC 9113 calls malformed and
// expects RST_STREAM PROTOCOL_ERROR without the handler being called; the
// valid ones reach the handler.
func TestMalformedRequests(t *testing.T) {
	var called atomic.Int32
	h := handlerFunc(func(s stream.ServerStream) {
		called.Add(1)
		var rh header.Map
		rh.Add(":status", "200")
		s.WriteHeaders(&rh, true)
	})
	srv := startServer(t, h, nil, nil)
	base := [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "a.example"}}
	cases := []struct {
		name   string
		fields [][2]string
		ok     bool
	}{
		{"valid", base, true},
		{"host instead of authority", [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {"host", "a.example"}}, true},
		{"host differs from authority", append(append([][2]string{}, base...), [2]string{"host", "b.example"}), false},
		{"connect", [][2]string{{":method", "CONNECT"}, {":authority", "a.example:443"}}, true},
		{"connect with path", [][2]string{{":method", "CONNECT"}, {":authority", "a.example:443"}, {":path", "/"}}, false},
		{"connect without port", [][2]string{{":method", "CONNECT"}, {":authority", "a.example"}}, false},
		{"upper-case name", append(append([][2]string{}, base...), [2]string{"X-Up", "1"}), false},
		{"keep-alive", append(append([][2]string{}, base...), [2]string{"keep-alive", "1"}), false},
		{"te gzip", append(append([][2]string{}, base...), [2]string{"te", "gzip"}), false},
		{"value with newline", append(append([][2]string{}, base...), [2]string{"x", "a\nb"}), false},
		{"value with leading space", append(append([][2]string{}, base...), [2]string{"x", " a"}), false},
		{"protocol pseudo", append(append([][2]string{}, base...), [2]string{":protocol", "websocket"}), false},
		{"relative path", [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "a"}}, false},
		{"asterisk for GET", [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "*"}}, false},
		{"content-length with END_STREAM", append(append([][2]string{}, base...), [2]string{"content-length", "3"}), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := called.Load()
			rc := dialRaw(t, srv.addr)
			var buf bytes.Buffer
			enc := hpack.NewEncoder(&buf)
			for _, f := range tc.fields {
				enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: buf.Bytes(), EndStream: true, EndHeaders: true})
			f := rc.readUntil(func(f http2.Frame) bool {
				switch f.(type) {
				case *http2.MetaHeadersFrame, *http2.RSTStreamFrame, *http2.GoAwayFrame:
					return true
				}
				return false
			})
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if !tc.ok {
					t.Fatalf("got a response, want RST_STREAM PROTOCOL_ERROR")
				}
			case *http2.RSTStreamFrame:
				if tc.ok || f.ErrCode != http2.ErrCodeProtocol {
					t.Fatalf("got RST_STREAM %v", f.ErrCode)
				}
				if called.Load() != before {
					t.Fatal("handler called for a malformed request")
				}
			default:
				t.Fatalf("got %v", f)
			}
		})
	}
}

func TestHeaderListTooLarge(t *testing.T) {
	srv := startServer(t, okHandler, &stream.ServerOptions{MaxHeaderBytes: 4 << 10}, nil)
	rc := dialRaw(t, srv.addr)
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {"x-big", strings.Repeat("a", 3000)}, {"x-big2", strings.Repeat("b", 3000)}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: buf.Bytes(), EndStream: true, EndHeaders: true})
	f := rc.readUntil(func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
	if f == nil {
		t.Fatal("no response")
	}
	if st := f.(*http2.MetaHeadersFrame).PseudoValue("status"); st != "431" {
		t.Fatalf("status %s, want 431", st)
	}
}

func TestConcurrentStreams(t *testing.T) {
	srv := startServer(t, echoHandler, &stream.ServerOptions{HTTP2: stream.HTTP2Options{MaxConcurrentStreams: 16}}, nil)
	client := h2cClient()
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := strings.Repeat(fmt.Sprintf("%d,", i), 1000+i)
			resp, err := client.Post("http://"+srv.addr+"/", "text/plain", strings.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(got) != body {
				errs <- fmt.Errorf("request %d: %d bytes, err %v", i, len(got), err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestResponseBackpressure: a client that grants no credit gets exactly
// the initial window, and the handler blocks instead of buffering 10 MiB.
func TestResponseBackpressure(t *testing.T) {
	const total = 10 << 20
	var written atomic.Int64
	done := make(chan error, 1)
	h := handlerFunc(func(s stream.ServerStream) {
		var rh header.Map
		rh.Add(":status", "200")
		s.WriteHeaders(&rh, false)
		chunk := make([]byte, 256<<10)
		for written.Load() < total {
			if err := s.WriteBody(chunk, written.Load()+int64(len(chunk)) >= total); err != nil {
				done <- err
				return
			}
			written.Add(int64(len(chunk)))
		}
		done <- nil
	})
	srv := startServer(t, h, nil, nil)
	rc := dialRaw(t, srv.addr)
	rc.writeRequest(1, true)
	var got int
	rc.readUntil(func(f http2.Frame) bool {
		if d, ok := f.(*http2.DataFrame); ok {
			got += len(d.Data())
		}
		return got >= defaultWindow
	})
	if got != defaultWindow {
		t.Fatalf("received %d DATA bytes, want the initial window %d", got, defaultWindow)
	}
	// Nothing more may arrive without credit.
	rc.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if f := rc.readUntil(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }); f != nil {
		t.Fatalf("DATA beyond the window: %v", f)
	}
	if w := written.Load(); w >= total {
		t.Fatalf("handler wrote %d bytes to a stalled client", w)
	}
	// Grant credit as we read: the rest arrives.
	rc.c.SetDeadline(time.Now().Add(20 * time.Second))
	rc.fr.WriteWindowUpdate(0, total)
	rc.fr.WriteWindowUpdate(1, total)
	ended := rc.readUntil(func(f http2.Frame) bool {
		if d, ok := f.(*http2.DataFrame); ok {
			got += len(d.Data())
			return d.StreamEnded()
		}
		return false
	})
	if ended == nil || got < total {
		t.Fatalf("received %d of %d bytes", got, total)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRequestBodyBackpressure: credit is returned as the handler reads,
// not as DATA arrives, so a client overrunning a window nobody read from
// is a flow-control error.
func TestRequestBodyBackpressure(t *testing.T) {
	const window = 64 << 10
	release := make(chan struct{})
	readN := make(chan int, 1)
	h := handlerFunc(func(s stream.ServerStream) {
		<-release
		n, _ := io.Copy(io.Discard, s.Body())
		readN <- int(n)
		var rh header.Map
		rh.Add(":status", "200")
		s.WriteHeaders(&rh, true)
	})
	srv := startServer(t, h, &stream.ServerOptions{HTTP2: stream.HTTP2Options{InitialStreamWindow: window}}, nil)
	defer close(release)
	rc := dialRaw(t, srv.addr)
	// Wait for our SETTINGS to be acknowledged... the server's SETTINGS
	// must be acked by us for it to enforce its window.
	rc.readUntil(func(f http2.Frame) bool {
		s, ok := f.(*http2.SettingsFrame)
		return ok && !s.IsAck()
	})
	rc.fr.WriteSettingsAck()
	rc.writeRequest(1, false)
	chunk := make([]byte, 16<<10)
	for sent := 0; sent < window; sent += len(chunk) {
		rc.fr.WriteData(1, false, chunk)
	}
	rc.fr.WriteData(1, false, []byte{1})
	f := rc.readUntil(func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			return true
		case *http2.WindowUpdateFrame:
			return f.StreamID == 1
		}
		return false
	})
	rst, ok := f.(*http2.RSTStreamFrame)
	if !ok || rst.ErrCode != http2.ErrCodeFlowControl {
		t.Fatalf("got %v, want RST_STREAM FLOW_CONTROL_ERROR", f)
	}
}

// TestClientCancel: a client giving up resets the stream; the handler's
// ResetNotifier fires and its Body read fails with a remote reset.
func TestClientCancel(t *testing.T) {
	notified := make(chan uint32, 1)
	readErr := make(chan error, 1)
	h := handlerFunc(func(s stream.ServerStream) {
		s.(stream.ResetNotifier).NotifyReset(func(code uint32) { notified <- code })
		var rh header.Map
		rh.Add(":status", "200")
		s.WriteHeaders(&rh, false)
		_, err := io.Copy(io.Discard, s.Body())
		readErr <- err
		if err := s.WriteBody([]byte("late"), true); err == nil {
			readErr <- errors.New("write after reset succeeded")
		}
	})
	srv := startServer(t, h, nil, nil)
	client := h2cClient()
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+srv.addr+"/", pr)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pw.Write([]byte("partial"))
	cancel()
	resp.Body.Close()
	select {
	case code := <-notified:
		if code != uint32(http2.ErrCodeCancel) {
			t.Errorf("reset code %d, want CANCEL", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ResetNotifier did not fire")
	}
	err = <-readErr
	var rst *stream.ErrStreamReset
	if !errors.As(err, &rst) || !rst.Remote {
		t.Fatalf("body read error %v, want a remote *stream.ErrStreamReset", err)
	}
	select {
	case err := <-readErr:
		t.Fatal(err)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestDrain: cancelling ServeConn's context sends GOAWAY, lets the stream
// in flight finish, then closes and returns nil.
func TestDrain(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	h := handlerFunc(func(s stream.ServerStream) {
		close(started)
		<-release
		var rh header.Map
		rh.Add(":status", "200")
		s.WriteHeaders(&rh, false)
		s.WriteBody([]byte("done"), true)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		served <- NewServerCodec().ServeConn(ctx, c, &stream.ConnInfo{}, h, nil)
	}()
	rc := dialRaw(t, ln.Addr().String())
	rc.writeRequest(1, true)
	<-started
	cancel()
	ga := rc.goAway()
	if ga == nil || ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
		t.Fatalf("GOAWAY %v, want NO_ERROR last stream 1", ga)
	}
	close(release)
	ended := rc.readUntil(func(f http2.Frame) bool {
		d, ok := f.(*http2.DataFrame)
		return ok && d.StreamEnded()
	})
	if ended == nil {
		t.Fatal("in-flight stream did not complete")
	}
	if f := rc.readUntil(func(http2.Frame) bool { return false }); f != nil {
		t.Fatal("connection not closed")
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("ServeConn: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeConn did not return")
	}
}

func TestIdleTimeout(t *testing.T) {
	srv := startServer(t, okHandler, &stream.ServerOptions{IdleTimeout: 100 * time.Millisecond}, nil)
	rc := dialRaw(t, srv.addr)
	ga := rc.goAway()
	if ga == nil || ga.ErrCode != http2.ErrCodeNo {
		t.Fatalf("GOAWAY %v, want NO_ERROR", ga)
	}
}

func TestRequestHeadersTimeout(t *testing.T) {
	srv := startServer(t, okHandler, &stream.ServerOptions{RequestHeadersTimeout: 100 * time.Millisecond}, nil)
	c, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("connection not closed: %v", err)
	}
	srv.close()
	if errs := srv.connErrors(); len(errs) != 1 || !errors.Is(errs[0], ErrHeadersTimeout) {
		t.Fatalf("ServeConn errors %v, want ErrHeadersTimeout", errs)
	}
}

// TestHandlerWithoutResponse: a handler returning early resets the stream.
func TestHandlerWithoutResponse(t *testing.T) {
	srv := startServer(t, handlerFunc(func(stream.ServerStream) {}), nil, nil)
	rc := dialRaw(t, srv.addr)
	rc.writeRequest(1, true)
	f := rc.readUntil(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if f == nil || f.(*http2.RSTStreamFrame).ErrCode != http2.ErrCodeInternal {
		t.Fatalf("got %v, want RST_STREAM INTERNAL_ERROR", f)
	}
}

// TestRapidReset: opening streams and resetting them at once (CVE-2023-44487)
// ends with GOAWAY ENHANCE_YOUR_CALM.
func TestRapidReset(t *testing.T) {
	h := handlerFunc(func(s stream.ServerStream) {
		io.Copy(io.Discard, s.Body()) // returns at the reset
	})
	srv := startServer(t, h, &stream.ServerOptions{HTTP2: stream.HTTP2Options{MaxResetsPerSecond: 50}}, nil)
	rc := dialRaw(t, srv.addr)
	go func() {
		for id := uint32(1); id < 20000; id += 2 {
			if rc.writeRequest(id, false) != nil || rc.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				return
			}
		}
	}()
	ga := rc.goAway()
	if ga == nil || ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga)
	}
}

// TestPingFlood: PINGs from a client that does not read the ACKs are cut
// off once the queue of unsent ACKs passes the limit.
func TestPingFlood(t *testing.T) {
	smallBuffers := func(ln net.Listener) net.Listener { return smallBufListener{ln} }
	srv := startServer(t, okHandler, &stream.ServerOptions{HTTP2: stream.HTTP2Options{MaxOutboundControlFrames: 100}}, smallBuffers)
	rc := dialRaw(t, srv.addr)
	rc.c.(*net.TCPConn).SetReadBuffer(4 << 10)
	for i := 0; i < 2_000_000; i++ {
		if rc.fr.WritePing(false, [8]byte{byte(i)}) != nil {
			break
		}
	}
	ga := rc.goAway()
	if ga == nil || ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga)
	}
}

// smallBufListener shrinks accepted connections' send buffers, so a
// client that does not read fills them fast.
type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4 << 10)
	}
	return c, err
}

// TestContinuationFlood: endless CONTINUATION frames (CVE-2024-27316) are
// cut off by the header block size and frame count limits.
func TestContinuationFlood(t *testing.T) {
	cases := []struct {
		name string
		frag int
	}{
		{"large fragments", 16 << 10},
		{"tiny fragments", 8},
		{"empty fragments", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, okHandler, nil, nil)
			rc := dialRaw(t, srv.addr)
			var buf bytes.Buffer
			enc := hpack.NewEncoder(&buf)
			enc.WriteField(hpack.HeaderField{Name: ":method", Value: "GET"})
			rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: buf.Bytes()})
			go func() {
				for i := 0; i < 100000; i++ {
					buf.Reset()
					for buf.Len() < tc.frag {
						enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-%d", i), Value: "0123456789"})
					}
					if rc.fr.WriteContinuation(1, false, buf.Bytes()) != nil {
						return
					}
				}
			}()
			ga := rc.goAway()
			if ga == nil || ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga)
			}
		})
	}
}

// writeRequest sends a GET (or POST without END_STREAM) head.
func (rc *rawConn) writeRequest(id uint32, endStream bool) error {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	method := "GET"
	if !endStream {
		method = "POST"
	}
	for _, f := range [][2]string{{":method", method}, {":scheme", "http"}, {":path", "/"}, {":authority", "test"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndStream: endStream, EndHeaders: true})
}

// TestWriteTimeout: a client that never grants credit cannot hold a
// handler longer than WriteTimeout; the stream is reset.
func TestWriteTimeout(t *testing.T) {
	writeErr := make(chan error, 1)
	h := handlerFunc(func(s stream.ServerStream) {
		var rh header.Map
		rh.Add(":status", "200")
		s.WriteHeaders(&rh, false)
		writeErr <- s.WriteBody(make([]byte, 200<<10), true)
	})
	srv := startServer(t, h, &stream.ServerOptions{WriteTimeout: 100 * time.Millisecond}, nil)
	rc := dialRaw(t, srv.addr)
	rc.writeRequest(1, true)
	f := rc.readUntil(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if f == nil || f.(*http2.RSTStreamFrame).ErrCode != http2.ErrCodeCancel {
		t.Fatalf("got %v, want RST_STREAM CANCEL", f)
	}
	if err := <-writeErr; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteBody error %v, want os.ErrDeadlineExceeded", err)
	}
}

func TestMaxRequestsPerConnection(t *testing.T) {
	srv := startServer(t, okHandler, &stream.ServerOptions{MaxRequestsPerConnection: 2}, nil)
	rc := dialRaw(t, srv.addr)
	rc.writeRequest(1, true)
	rc.writeRequest(3, true)
	ga := rc.goAway()
	if ga == nil || ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 3 {
		t.Fatalf("GOAWAY %+v, want NO_ERROR after stream 3", ga)
	}
}
