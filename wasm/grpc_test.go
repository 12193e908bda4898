package wasm

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	wasmhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// grpcAnswer builds a gRPC-shaped HTTP/2 response: headers, body, trailers
// as name/value lists.
func grpcAnswer(headers, trailers []string, body []byte) func(string, *header.Map, []byte) (*stream.HTTPResponse, error) {
	return func(string, *header.Map, []byte) (*stream.HTTPResponse, error) {
		r := &stream.HTTPResponse{Body: body}
		for i := 0; i+1 < len(headers); i += 2 {
			r.Headers.Add(headers[i], headers[i+1])
		}
		for i := 0; i+1 < len(trailers); i += 2 {
			r.Trailers.Add(trailers[i], trailers[i+1])
		}
		return r, nil
	}
}

var grpcHead = []string{":status", "200", "content-type", "application/grpc"}

func TestGrpcCall(t *testing.T) {
	fac, _ := compileGo(t, "grpccall")
	okAnswer := grpcAnswer(grpcHead, []string{"grpc-status", "0"}, []byte{0, 0, 0, 0, 2, 0x08, 0x01})
	for _, tc := range []struct {
		name, path string
		answer     func(string, *header.Map, []byte) (*stream.HTTPResponse, error)
		event      string
		want       string // x-grpc-result on resume, the reply body otherwise
	}{
		{"ok", "/", okAnswer, "resume", "0 0801"},
		{"cluster name instead of a GrpcService", "/raw", okAnswer, "resume", "0 0801"},
		{"ok with an empty message", "/", grpcAnswer(grpcHead, []string{"grpc-status", "0"}, []byte{0, 0, 0, 0, 0}), "resume", "0 "},
		{"trailers-only error", "/", grpcAnswer(append(grpcHead, "grpc-status", "7", "grpc-message", "no%20way"), nil, nil), "reply", "grpc 7 7 no way"},
		{"error in trailers", "/", grpcAnswer(grpcHead, []string{"grpc-status", "5", "grpc-message", "gone"}, nil), "reply", "grpc 5 5 gone"},
		{"ok without a message", "/", grpcAnswer(grpcHead, []string{"grpc-status", "0"}, nil), "reply", "grpc 13 13 response without a message"},
		{"no grpc-status", "/", grpcAnswer(grpcHead, nil, []byte{0, 0, 0, 0, 0}), "reply", "grpc 13 13 response without grpc-status"},
		{"http error", "/", grpcAnswer([]string{":status", "503"}, nil, []byte("down")), "reply", "grpc 14 14 http status 503"},
		{"transport failure", "/", func(string, *header.Map, []byte) (*stream.HTTPResponse, error) {
			return nil, errors.New("proxy: http call: unknown cluster \"grpc_cluster\"")
		}, "reply", "grpc 14 14 proxy: http call: unknown cluster \"grpc_cluster\""},
		{"timeout", "/", func(string, *header.Map, []byte) (*stream.HTTPResponse, error) {
			return nil, fmt.Errorf("proxy: http call: %w", context.DeadlineExceeded)
		}, "reply", "grpc 4 4 deadline exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cb := newCB(":method", "GET", ":path", tc.path, ":authority", "x")
			cb.answer = tc.answer
			f := fac.NewFilter(cb)
			if st := f.OnRequestHeaders(&cb.req, true); st != stream.StopAndWait {
				t.Fatalf("status %v", st)
			}
			if e := cb.wait(t); e != tc.event {
				r, _ := cb.lastReply()
				t.Fatalf("event %s, want %s (reply %+v)", e, tc.event, r)
			}
			if tc.event == "resume" {
				if got := cb.req.Value("x-grpc-result"); got != tc.want {
					t.Errorf("x-grpc-result = %q, want %q", got, tc.want)
				}
			} else if r, _ := cb.lastReply(); r.status != 503 || r.details != "wasm_grpc_failed" || r.body != tc.want {
				t.Errorf("reply %+v, want body %q", r, tc.want)
			}
			cb.mu.Lock()
			c := cb.calls[0]
			cb.mu.Unlock()
			h := &c.headers
			if c.cluster != "grpc_cluster" || h.Value(":method") != "POST" || h.Value(":path") != "/grpc.health.v1.Health/Check" ||
				h.Value(":authority") != "grpc_cluster" || h.Value("content-type") != "application/grpc" || h.Value("te") != "trailers" ||
				h.Value("grpc-timeout") != "1000m" || h.Value("x-from-wasm") != "1" || c.body != "\x00\x00\x00\x00\x00" || c.timeout != time.Second {
				t.Errorf("call %+v headers %v", c, h.Fields())
			}
			f.OnDone()
		})
	}
}

func TestGrpcCallBadService(t *testing.T) {
	fac, _ := compileGo(t, "grpccall")
	cb := newCB(":method", "GET", ":path", "/bad-service", ":authority", "x")
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.LocalReply {
		t.Fatalf("status %v", st)
	}
	if r, _ := cb.lastReply(); r.status != 500 || r.body != "grpc call failed 4" { // ParseFailure
		t.Errorf("reply %+v", r)
	}
	f.OnDone()
}

func TestGrpcCancel(t *testing.T) {
	fac, _ := compileGo(t, "grpccall")
	cb := newCB(":method", "GET", ":path", "/cancel", ":authority", "x")
	release := make(chan struct{})
	cb.answer = func(string, *header.Map, []byte) (*stream.HTTPResponse, error) {
		<-release
		return grpcAnswer(grpcHead, []string{"grpc-status", "0"}, []byte{0, 0, 0, 0, 0})("", nil, nil)
	}
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.Continue {
		t.Fatalf("status %v", st)
	}
	if got := cb.req.Value("x-cancel"); got != "0 1" { // Ok, then NotFound
		t.Errorf("x-cancel = %q", got)
	}
	close(release)
	select {
	case e := <-cb.events:
		t.Fatalf("a cancelled call was delivered: %s", e)
	case <-time.After(100 * time.Millisecond):
	}
	if cb.req.Has("x-grpc-result") {
		t.Error("a cancelled call reached the guest")
	}
	f.OnDone()
}

func TestTrapInGrpcCallbackFailsWaitingStream(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(string, *header.Map, []byte) (*stream.HTTPResponse, error)
	}{
		{"receive", grpcAnswer(grpcHead, []string{"grpc-status", "0"}, []byte{0, 0, 0, 0, 0})},
		{"close", grpcAnswer(append(grpcHead, "grpc-status", "14"), nil, nil)},
	} {
		for _, failOpen := range []bool{false, true} {
			t.Run(fmt.Sprint(tc.name, " fail_open=", failOpen), func(t *testing.T) {
				fac, st := compileGo(t, "grpccall", func(_ *Compiler, w *wasmhttpv3.Wasm) { w.Config.FailOpen = failOpen })
				cb := newCB(":method", "GET", ":path", "/grpc-panic", ":authority", "x")
				cb.answer = tc.answer
				f := fac.NewFilter(cb)
				if s := f.OnRequestHeaders(&cb.req, true); s != stream.StopAndWait {
					t.Fatalf("status %v", s)
				}
				want := "reply"
				if failOpen {
					want = "resume"
				}
				if e := cb.wait(t); e != want {
					t.Fatalf("event %s, want %s", e, want)
				}
				if r, ok := cb.lastReply(); !failOpen && (r.status != 503 || r.details != "wasm_fail_closed") || failOpen && ok {
					t.Errorf("reply %+v", r)
				}
				f.OnDone()
				eventually(t, "the replacement vm", func() bool { v, _ := metricValue(st, "wasm.test.created"); return v == 3 })
			})
		}
	}
}

func TestParseGrpcService(t *testing.T) {
	// envoy_grpc { cluster_name: "c1" authority: "a.example" } initial_metadata { key: "K" value: "v" }
	proto := []byte{0x0a, 0x0f, 0x0a, 0x02, 'c', '1', 0x12, 0x09, 'a', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e',
		0x2a, 0x06, 0x0a, 0x01, 'K', 0x12, 0x01, 'v'}
	for _, tc := range []struct {
		in   []byte
		want string
		ok   bool
	}{
		{proto, "c1 a.example [{k v}]", true},
		{[]byte("grpc_cluster"), "grpc_cluster  []", true},
		{nil, "", false},
		{[]byte("bad\x00name"), "", false},
	} {
		g, ok := parseGrpcService(tc.in)
		got := ""
		if ok {
			got = fmt.Sprintf("%s %s %v", g.cluster, g.authority, g.metadata)
		}
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseGrpcService(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestGrpcTimeoutHeader(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Second:                  "1000m",
		99999999 * time.Millisecond:  "99999999m",
		100000000 * time.Millisecond: "100000S",
	} {
		if got := grpcTimeout(d); got != want {
			t.Errorf("grpcTimeout(%v) = %q, want %q", d, got, want)
		}
	}
}
