package wasm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	wasmhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeStream is a stream.CalloutStream the test answers: it records what
// the host sends (each message decoded from its StringValue, "END" for
// the end of the request) and plays the upstream's response.
type fakeStream struct {
	cluster string
	head    header.Map

	sent   chan string
	heads  chan fakeHead
	pr     *io.PipeReader
	pw     *io.PipeWriter
	closed chan struct{}
	once   sync.Once

	trailers header.Map // set before pw closes

	mu    sync.Mutex
	ended bool
}

type fakeHead struct {
	h     header.Map
	ended bool
	err   error
}

func newFakeStream(cluster string, h *header.Map) *fakeStream {
	pr, pw := io.Pipe()
	return &fakeStream{
		cluster: cluster, head: h.Clone(),
		sent: make(chan string, 32), heads: make(chan fakeHead, 1),
		pr: pr, pw: pw, closed: make(chan struct{}),
	}
}

var errFakeClosed = errors.New("fake: stream closed")

func (s *fakeStream) Send(p []byte, end bool) error {
	select {
	case <-s.closed:
		return errFakeClosed
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return errors.New("fake: send after the end of the request")
	}
	for len(p) > 0 {
		if len(p) < 5 || p[0] != 0 {
			return fmt.Errorf("fake: bad frame %x", p)
		}
		n := int(p[1])<<24 | int(p[2])<<16 | int(p[3])<<8 | int(p[4])
		s.sent <- stringValueText(p[5 : 5+n])
		p = p[5+n:]
	}
	if end {
		s.ended = true
		s.sent <- "END"
	}
	return nil
}

func stringValueText(b []byte) string {
	if len(b) < 2 {
		return ""
	}
	return string(b[2 : 2+int(b[1])])
}

func (s *fakeStream) ResponseHeaders() (*header.Map, bool, error) {
	select {
	case h := <-s.heads:
		if h.err != nil {
			return nil, false, h.err
		}
		return &h.h, h.ended, nil
	case <-s.closed:
		return nil, false, errFakeClosed
	}
}

func (s *fakeStream) Read(p []byte) (int, error)    { return s.pr.Read(p) }
func (s *fakeStream) ResponseTrailers() *header.Map { return &s.trailers }

func (s *fakeStream) Close() error {
	s.once.Do(func() {
		close(s.closed)
		s.pr.CloseWithError(errFakeClosed)
	})
	return nil
}

// The upstream's side.

func (s *fakeStream) respond(ended bool, kv ...string) {
	var h header.Map
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	s.heads <- fakeHead{h: h, ended: ended}
}

func (s *fakeStream) message(t testing.TB, text string) {
	t.Helper()
	b := []byte{0, 0, 0, 0, 0}
	if text != "" {
		b[4] = byte(2 + len(text))
		b = append(append(b, 0x0a, byte(len(text))), text...)
	}
	if _, err := s.pw.Write(b); err != nil {
		t.Fatalf("writing message %q: %v", text, err)
	}
}

func (s *fakeStream) end(kv ...string) {
	for i := 0; i+1 < len(kv); i += 2 {
		s.trailers.Add(kv[i], kv[i+1])
	}
	s.pw.Close()
}

func (s *fakeStream) expectSent(t testing.TB, want string) {
	t.Helper()
	select {
	case got := <-s.sent:
		if got != want {
			t.Fatalf("sent %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for the host to send %q", want)
	}
}

func (s *fakeStream) waitClosed(t testing.TB) {
	t.Helper()
	select {
	case <-s.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream was not closed")
	}
}

// streamCB is a fake stream whose OpenStream hands each stream to the
// test: grpc_cluster and down_cluster exist, nothing else.
func streamCB(path string) (*fakeCB, chan *fakeStream) {
	cb := newCB(":method", "GET", ":path", path, ":authority", "x")
	opened := make(chan *fakeStream, 4)
	cb.open = func(_ context.Context, cluster string, h *header.Map) (stream.CalloutStream, error) {
		if cluster != "grpc_cluster" && cluster != "down_cluster" {
			return nil, fmt.Errorf("%w %q", proxy.ErrUnknownCluster, cluster)
		}
		s := newFakeStream(cluster, h)
		opened <- s
		return s, nil
	}
	return cb, opened
}

func nextStream(t testing.TB, opened chan *fakeStream) *fakeStream {
	t.Helper()
	select {
	case s := <-opened:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no stream was opened")
		return nil
	}
}

// startStream runs the request headers of a grpcstream-mode stream that
// opens a stream and waits for it.
func startStream(t *testing.T, fac *Factory, path string) (*fakeCB, stream.Filter, *fakeStream) {
	t.Helper()
	cb, opened := streamCB(path)
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.StopAndWait {
		t.Fatalf("status %v", st)
	}
	return cb, f, nextStream(t, opened)
}

func expectStream(t *testing.T, cb *fakeCB, want string) {
	t.Helper()
	if e := cb.wait(t); e != "resume" {
		r, _ := cb.lastReply()
		t.Fatalf("event %s (reply %+v), want resume", e, r)
	}
	if got := cb.req.Value("x-stream"); got != want {
		t.Errorf("x-stream = %q\nwant       %q", got, want)
	}
}

var grpcOKHead = []string{":status", "200", "content-type", "application/grpc"}

// TestGrpcStreamBidi: each answer of the upstream makes the guest send
// the next message, so the messages interleave both ways before either
// side ends; the guest half-closes, the upstream ends with OK trailers.
func TestGrpcStreamBidi(t *testing.T) {
	fac, st := compileGo(t, "grpcstream")
	cb, f, s := startStream(t, fac, "/chat")
	defer f.OnDone()
	h := &s.head
	if s.cluster != "grpc_cluster" || h.Value(":method") != "POST" || h.Value(":path") != "/sluice.test.Streamer/Chat" ||
		h.Value(":authority") != "grpc_cluster" || h.Value("content-type") != "application/grpc" || h.Value("te") != "trailers" ||
		h.Value("x-from-wasm") != "stream" || h.Has("grpc-timeout") {
		t.Errorf("stream to %q with head %v", s.cluster, h.Fields())
	}
	s.expectSent(t, "a")
	s.respond(false, grpcOKHead...)
	s.message(t, "A")
	s.expectSent(t, "b")
	s.message(t, "B")
	s.expectSent(t, "END")
	s.end("grpc-status", "0", "x-count", "2")
	expectStream(t, cb, "im:application/grpc,m:A,m:B,half:0,tm:2,close:0:,after:0:1")
	s.waitClosed(t)
	if v, _ := metricValue(st, "wasmcustom.goguest_grpc_stream_messages"); v != 2 {
		t.Errorf("messages metric %v, want 2", v)
	}
}

// TestGrpcStreamOutcomes: how the end of a stream reaches the guest, in
// Envoy's order (initial metadata, messages, trailing metadata, close).
func TestGrpcStreamOutcomes(t *testing.T) {
	fac, _ := compileGo(t, "grpcstream")
	for _, tc := range []struct {
		name string
		play func(*testing.T, *fakeStream)
		want string
	}{
		{"server streaming", func(t *testing.T, s *fakeStream) {
			s.expectSent(t, "3")
			s.expectSent(t, "END")
			s.respond(false, grpcOKHead...)
			for _, m := range []string{"1", "2", "3"} {
				s.message(t, m)
			}
			s.end("grpc-status", "0", "x-count", "3")
		}, "im:application/grpc,m:1,m:2,m:3,tm:3,close:0:,after:0:1"},
		{"trailers-only error", func(t *testing.T, s *fakeStream) {
			s.respond(true, append(grpcOKHead, "grpc-status", "7", "grpc-message", "no%20way", "x-count", "0")...)
		}, "im:-,tm:0,close:7:no way,after:0:1"},
		{"error after messages", func(t *testing.T, s *fakeStream) {
			s.respond(false, grpcOKHead...)
			s.message(t, "1")
			s.end("grpc-status", "5", "grpc-message", "gone")
		}, "im:application/grpc,m:1,tm:-,close:5:gone,after:0:1"},
		{"empty message", func(t *testing.T, s *fakeStream) {
			s.respond(false, grpcOKHead...)
			s.message(t, "")
			s.end("grpc-status", "0")
		}, "im:application/grpc,m:,tm:-,close:0:,after:0:1"},
		{"http error", func(t *testing.T, s *fakeStream) {
			s.respond(false, ":status", "503", "content-type", "text/plain")
		}, "im:text/plain,tm:-,close:14:http status 503,after:0:1"},
		{"no trailers", func(t *testing.T, s *fakeStream) {
			s.respond(false, grpcOKHead...)
			s.message(t, "1")
			s.end()
		}, "im:application/grpc,m:1,tm:-,close:13:response without grpc-status,after:0:1"},
		{"compressed message", func(t *testing.T, s *fakeStream) {
			s.respond(false, grpcOKHead...)
			s.pw.Write([]byte{1, 0, 0, 0, 0})
		}, "im:application/grpc,tm:-,close:13:compressed message,after:0:1"},
		{"truncated message", func(t *testing.T, s *fakeStream) {
			s.respond(false, grpcOKHead...)
			s.pw.Write([]byte{0, 0, 0, 0, 9, 1})
			s.end("grpc-status", "0")
		}, "im:application/grpc,tm:-,close:13:truncated message,after:0:1"},
		{"no connection", func(t *testing.T, s *fakeStream) {
			s.heads <- fakeHead{err: errors.New("dial tcp: connection refused")}
		}, "tm:-,close:14:dial tcp: connection refused,after:0:1"},
		{"reset by the upstream", func(t *testing.T, s *fakeStream) {
			s.respond(false, grpcOKHead...)
			s.message(t, "1")
			s.pw.CloseWithError(fmt.Errorf("read: %w", &stream.ErrStreamReset{Code: 2, Remote: true}))
		}, "im:application/grpc,m:1,tm:-,close:13:read: stream: remote reset, code 2,after:0:1"},
		{"refused by the upstream", func(t *testing.T, s *fakeStream) {
			s.heads <- fakeHead{err: &stream.ErrStreamReset{Code: 7, Remote: true}}
		}, "tm:-,close:14:stream: remote reset, code 7,after:0:1"},
		{"timeout", func(t *testing.T, s *fakeStream) {
			s.heads <- fakeHead{err: fmt.Errorf("proxy: stream call: %w", context.DeadlineExceeded)}
		}, "tm:-,close:4:deadline exceeded,after:0:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cb, f, s := startStream(t, fac, "/count")
			defer f.OnDone()
			tc.play(t, s)
			expectStream(t, cb, tc.want)
			s.waitClosed(t)
		})
	}
}

// TestGrpcStreamCancel: the guest cancels during its first message; the
// stream is reset and nothing more reaches the guest.
func TestGrpcStreamCancel(t *testing.T) {
	fac, _ := compileGo(t, "grpcstream")
	cb, f, s := startStream(t, fac, "/hold")
	defer f.OnDone()
	s.respond(false, grpcOKHead...)
	s.message(t, "held")
	expectStream(t, cb, "im:application/grpc,m:held,cancel:0:1")
	s.waitClosed(t)
	// The upstream's next message goes nowhere: its reader is closed
	// (the guest would have panicked on an unknown stream).
	if _, err := s.pw.Write([]byte{0, 0, 0, 0, 0}); err == nil {
		t.Error("the cancelled stream is still read")
	}
}

// TestGrpcStreamRefused: streams the host cannot open are refused at the
// call, with what Envoy (and the Rust SDK) use.
func TestGrpcStreamRefused(t *testing.T) {
	fac, _ := compileGo(t, "grpcstream")
	cb, _ := streamCB("/unknown")
	f := fac.NewFilter(cb)
	defer f.OnDone()
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.Continue {
		t.Fatalf("status %v", st)
	}
	// A GrpcService naming an unknown cluster: InternalFailure; the
	// cluster named by the raw bytes: ParseFailure.
	if got := cb.req.Value("x-stream"); got != "open:10:4" {
		t.Errorf("x-stream = %q", got)
	}

	// Callbacks that cannot open streams.
	cb = newCB(":method", "GET", ":path", "/count", ":authority", "x")
	f = fac.NewFilter(cb)
	defer f.OnDone()
	f.OnRequestHeaders(&cb.req, true)
	if got := cb.req.Value("x-stream"); got != "open:10" {
		t.Errorf("without streams: x-stream = %q", got)
	}
}

// TestGrpcStreamMisuse: sends and closes the host refuses.
func TestGrpcStreamMisuse(t *testing.T) {
	fac, _ := compileGo(t, "grpcstream")
	cb, opened := streamCB("/misuse")
	f := fac.NewFilter(cb)
	defer f.OnDone()
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.Continue {
		t.Fatalf("status %v", st)
	}
	// Send to a call token: BadArgument; to no stream: NotFound; close:
	// Ok; send after it: BadArgument; cancel: Ok, then NotFound; the
	// metadata maps outside their callbacks: NotFound.
	if got := cb.req.Value("x-stream"); got != "misuse:2:1:0:2:0:1:1" {
		t.Errorf("x-stream = %q", got)
	}
	s := nextStream(t, opened)
	s.waitClosed(t)
}

// TestGrpcStreamContextEnds: a stream still open when its context ends
// is reset.
func TestGrpcStreamContextEnds(t *testing.T) {
	fac, st := compileGo(t, "grpcstream")
	_, f, s := startStream(t, fac, "/count")
	s.expectSent(t, "3")
	f.OnDone()
	s.waitClosed(t)
	if v, _ := metricValue(st, "wasm.test.active"); v != 0 {
		t.Errorf("active %v", v)
	}
}

// TestGrpcStreamTrap: a trap in a stream callback fails the streams
// waiting on that VM and resets their upstream streams; a fresh VM
// replaces it.
func TestGrpcStreamTrap(t *testing.T) {
	fac, st := compileGo(t, "grpcstream", func(c *Compiler, _ *wasmhttpv3.Wasm) { c.PoolSize = 1 })
	cbA, fA, sA := startStream(t, fac, "/count")
	defer fA.OnDone()
	cbB, fB, sB := startStream(t, fac, "/panic")
	defer fB.OnDone()
	sB.respond(false, grpcOKHead...)
	sB.message(t, "1")
	for _, cb := range []*fakeCB{cbB, cbA} {
		if e := cb.wait(t); e != "reply" {
			t.Fatalf("event %s, want reply", e)
		}
		if r, _ := cb.lastReply(); r.status != 503 || r.details != "wasm_fail_closed" {
			t.Errorf("reply %+v", r)
		}
	}
	sA.waitClosed(t)
	sB.waitClosed(t)
	eventually(t, "the replacement vm", func() bool { v, _ := metricValue(st, "wasm.test.created"); return v == 2 })
}

// TestGrpcStreamRootContext: a stream opened on a tick (no stream to
// call through) goes through the Compiler's StreamCallout, and its
// callbacks reach the root context.
func TestGrpcStreamRootContext(t *testing.T) {
	var mu sync.Mutex
	var opened []string
	open := func(ctx context.Context, cluster string, h *header.Map) (stream.CalloutStream, error) {
		mu.Lock()
		opened = append(opened, cluster+" "+h.Value(":path"))
		mu.Unlock()
		s := newFakeStream(cluster, h)
		go func() {
			<-s.sent // "2"
			s.respond(false, grpcOKHead...)
			for _, m := range []string{"1", "2"} {
				b := []byte{0, 0, 0, 0, 3, 0x0a, 1, m[0]}
				if _, err := s.pw.Write(b); err != nil {
					return
				}
			}
			s.end("grpc-status", "0", "x-count", "2")
		}()
		return s, nil
	}
	compileGo(t, "grpcstream-root", func(c *Compiler, _ *wasmhttpv3.Wasm) { c.StreamCallout = open })
	want := "im:application/grpc,m:1,m:2,tm:2,close:0:,after:0:1"
	eventually(t, "the root context's stream", func() bool { return sharedValueOf("vm-"+t.Name(), "root_stream") == want })
	mu.Lock()
	defer mu.Unlock()
	if len(opened) == 0 || opened[0] != "grpc_cluster /sluice.test.Streamer/Count" {
		t.Errorf("opened %q", opened)
	}
}

// Without a StreamCallout the root context cannot open streams.
func TestGrpcStreamRootContextWithoutCallout(t *testing.T) {
	compileGo(t, "grpcstream-root")
	eventually(t, "the refused stream", func() bool { return sharedValueOf("vm-"+t.Name(), "root_stream") == "open:10" })
}

func TestGrpcStatusOfBrokenStream(t *testing.T) {
	for _, tc := range []struct {
		cause, err error
		want       uint32
	}{
		{errGrpcSendQueueFull, errors.New("closed"), grpcResourceExhausted},
		{nil, context.DeadlineExceeded, grpcDeadlineExceeded},
		{nil, &stream.ErrStreamReset{Code: 8, Remote: true}, grpcCancelled},
		{nil, &stream.ErrStreamReset{Code: 0xb, Remote: true}, grpcResourceExhausted},
		{nil, &stream.ErrStreamReset{Code: 1, Remote: true}, grpcInternal},
		{nil, &stream.ErrStreamReset{Code: 8}, grpcUnavailable}, // a local reset: the connection failed
		{nil, errors.New("eof"), grpcUnavailable},
	} {
		if got, _ := grpcStatus(tc.cause, tc.err); got != tc.want {
			t.Errorf("grpcStatus(%v, %v) = %d, want %d", tc.cause, tc.err, got, tc.want)
		}
	}
}

// TestGrpcStreamConcurrent: many streams of many requests on a small VM
// pool, answered concurrently, each reach their own context.
func TestGrpcStreamConcurrent(t *testing.T) {
	fac, _ := compileGo(t, "grpcstream")
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cb := newCB(":method", "GET", ":path", "/count", ":authority", "x")
			cb.open = func(_ context.Context, cluster string, h *header.Map) (stream.CalloutStream, error) {
				s := newFakeStream(cluster, h)
				go func() {
					<-s.sent // "3"
					<-s.sent // END
					s.respond(false, grpcOKHead...)
					for m := 1; m <= 3; m++ {
						b := []byte{0, 0, 0, 0, 3, 0x0a, 1, byte('0' + m)}
						if _, err := s.pw.Write(b); err != nil {
							return
						}
					}
					s.end("grpc-status", "0", "x-count", fmt.Sprint(i))
				}()
				return s, nil
			}
			f := fac.NewFilter(cb)
			defer f.OnDone()
			if st := f.OnRequestHeaders(&cb.req, true); st != stream.StopAndWait {
				t.Errorf("status %v", st)
				return
			}
			select {
			case e := <-cb.events:
				want := fmt.Sprintf("im:application/grpc,m:1,m:2,m:3,tm:%d,close:0:,after:0:1", i)
				if got := cb.req.Value("x-stream"); e != "resume" || got != want {
					t.Errorf("event %s x-stream %q, want %q", e, got, want)
				}
			case <-time.After(10 * time.Second):
				t.Error("timed out")
			}
		}()
	}
	wg.Wait()
}
