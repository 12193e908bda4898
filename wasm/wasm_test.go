package wasm

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	wasmnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/wasm/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

func TestHeaders(t *testing.T) {
	fac, _ := compileGo(t, "headers")
	cb := newCB(":method", "GET", ":path", "/a", ":authority", "example", "x-replace", "old", "x-remove", "gone")
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, false); st != stream.Continue {
		t.Fatalf("request headers: %v", st)
	}
	for k, v := range map[string]string{"x-wasm-req": "added", "x-replace": "replaced", "x-size": "5", "x-first": ":method",
		"x-vm-config": "vm-config-value", "x-absent-result": "notfound"} {
		if got := cb.req.Value(k); got != v {
			t.Errorf("request %s = %q, want %q", k, got, v)
		}
	}
	if cb.req.Has("x-remove") {
		t.Error("x-remove not removed")
	}
	var reqTrailers header.Map
	reqTrailers.Add("x-t", "1")
	if st := f.OnRequestTrailers(&reqTrailers); st != stream.Continue || reqTrailers.Value("x-wasm-trailer") != "yes" {
		t.Errorf("request trailers: %v %v", st, reqTrailers.Fields())
	}
	cb.resp.Add(":status", "200")
	cb.resp.Add("server", "upstream")
	cb.resp.Add("x-secret", "s")
	if st := f.OnResponseHeaders(&cb.resp, false); st != stream.Continue {
		t.Fatalf("response headers: %v", st)
	}
	for k, v := range map[string]string{"x-wasm-resp": "yes", "server": "wasm", "x-saw-req": "added"} {
		if got := cb.resp.Value(k); got != v {
			t.Errorf("response %s = %q, want %q", k, got, v)
		}
	}
	if cb.resp.Has("x-secret") {
		t.Error("x-secret not removed")
	}
	cb.respTrailers.Add("grpc-status", "13")
	if st := f.OnResponseTrailers(&cb.respTrailers); st != stream.Continue || cb.respTrailers.Value("grpc-status") != "0" {
		t.Errorf("response trailers: %v %v", st, cb.respTrailers.Fields())
	}
	f.OnDone()
}

func TestSetHeaderMapPairs(t *testing.T) {
	fac, _ := compileGo(t, "setpairs")
	cb := newCB(":method", "POST", ":path", "/a", ":authority", "x", "x-old", "1")
	f := fac.NewFilter(cb)
	f.OnRequestHeaders(&cb.req, true)
	got := fmt.Sprint(cb.req.Fields())
	if want := "[{:method GET} {:path /replaced} {:authority example} {x-only 1}]"; got != want {
		t.Errorf("headers = %s, want %s", got, want)
	}
	f.OnDone()
}

func TestBody(t *testing.T) {
	fac, _ := compileGo(t, "body")
	cb := newCB(":method", "POST", ":path", "/b", ":authority", "x")
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, false); st != stream.Continue {
		t.Fatalf("headers: %v", st)
	}
	var b stream.Buffer
	b.SetString("hello ")
	// A pause on a chunk that does not end the stream buffers the body.
	if st := f.OnRequestBody(&b, false); st != stream.StopAndBuffer {
		t.Fatalf("first chunk: %v, want stop_and_buffer", st)
	}
	b.Append([]byte("world"))
	if st := f.OnRequestBody(&b, true); st != stream.Continue {
		t.Fatalf("whole body: %v", st)
	}
	if got := string(b.Bytes()); got != "REQ:HELLO WORLD" {
		t.Errorf("request body = %q", got)
	}
	cb.resp.Add(":status", "200")
	f.OnResponseHeaders(&cb.resp, false)
	var rb stream.Buffer
	rb.SetString("data")
	if st := f.OnResponseBody(&rb, true); st != stream.Continue {
		t.Fatalf("response body: %v", st)
	}
	if got := string(rb.Bytes()); got != ">RESP:data!" {
		t.Errorf("response body = %q", got)
	}
	f.OnDone()
}

func TestPauseHeadersBuffersBody(t *testing.T) {
	fac, _ := compileGo(t, "wait-body")
	cb := newCB(":method", "POST", ":path", "/b", ":authority", "x")
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, false); st != stream.StopAndBuffer {
		t.Fatalf("headers: %v, want stop_and_buffer", st)
	}
	var b stream.Buffer
	b.SetString("abc")
	if st := f.OnRequestBody(&b, true); st != stream.Continue {
		t.Fatalf("body: %v", st)
	}
	if cb.req.Value("x-body-seen") != "3" || string(b.Bytes()) != "REQ:ABC" {
		t.Errorf("headers %v body %q", cb.req.Fields(), b.Bytes())
	}
	f.OnDone()
}

func TestLocalReply(t *testing.T) {
	fac, _ := compileGo(t, "local")
	for _, tc := range []struct {
		name, path, ctype string
		status            int
		body              string
		headers           string
	}{
		{"plain", "/x", "", 403, "denied by wasm\n", "[{x-wasm local}]"},
		{"grpc", "/grpc", "application/grpc", 200, "", "[{x-wasm local} {content-type application/grpc} {grpc-status 7} {grpc-message no way}]"},
		{"grpc status on a plain request", "/grpc", "text/plain", 403, "no way", "[{x-wasm local}]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cb := newCB(":method", "GET", ":path", tc.path, ":authority", "x", "content-type", tc.ctype)
			f := fac.NewFilter(cb)
			if st := f.OnRequestHeaders(&cb.req, true); st != stream.LocalReply {
				t.Fatalf("status %v", st)
			}
			r, _ := cb.lastReply()
			if r.status != tc.status || r.body != tc.body || fmt.Sprint(r.headers) != tc.headers || r.details != "wasm_denied" {
				t.Errorf("reply = %+v", r)
			}
			f.OnDone()
		})
	}
}

func TestCloseStream(t *testing.T) {
	fac, _ := compileGo(t, "close")
	cb := newCB(":method", "GET", ":path", "/", ":authority", "x")
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.LocalReply {
		t.Fatalf("status %v", st)
	}
	if r, _ := cb.lastReply(); r.status != 503 || r.details != "wasm_close_stream" {
		t.Errorf("reply %+v", r)
	}
}

func TestProperties(t *testing.T) {
	fac, _ := compileGo(t, "props")
	cb := newCB(":method", "GET", ":path", "/p?q=1", ":authority", "x", "user-agent", "curl/8")
	f := fac.NewFilter(cb)
	f.OnRequestHeaders(&cb.req, true)
	for k, v := range map[string]string{"x-path": "/p?q=1", "x-source": "10.1.2.3", "x-route": "route-a", "x-root-id": "test_root",
		"x-port": "4567", "x-ua": "curl/8", "x-missing": "notfound", "x-prop": "v1"} {
		if got := cb.req.Value(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if v, ok := cb.fs.Get("", "wasm.my_prop"); !ok || v != "v1" {
		t.Errorf("filter state wasm.my_prop = %v %v", v, ok)
	}
	f.OnDone()
}

func TestHTTPCall(t *testing.T) {
	fac, _ := compileGo(t, "httpcall")
	for _, tc := range []struct {
		name   string
		answer func(string, *header.Map, []byte) (*stream.HTTPResponse, error)
		event  string
		check  func(t *testing.T, cb *fakeCB)
	}{
		{"allowed", nil, "resume", func(t *testing.T, cb *fakeCB) {
			if cb.req.Value("x-auth") != "ok" {
				t.Errorf("x-auth = %q", cb.req.Value("x-auth"))
			}
		}},
		{"denied", func(string, *header.Map, []byte) (*stream.HTTPResponse, error) {
			r := &stream.HTTPResponse{Body: []byte("nope")}
			r.Headers.Add(":status", "401")
			return r, nil
		}, "reply", func(t *testing.T, cb *fakeCB) {
			if r, _ := cb.lastReply(); r.status != 403 || r.body != "denied: 401 nope" || r.details != "wasm_auth_denied" {
				t.Errorf("reply %+v", r)
			}
		}},
		{"call failed", func(string, *header.Map, []byte) (*stream.HTTPResponse, error) {
			return nil, fmt.Errorf("no healthy upstream")
		}, "reply", func(t *testing.T, cb *fakeCB) {
			if r, _ := cb.lastReply(); r.status != 403 || r.body != "denied:  " {
				t.Errorf("reply %+v", r)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cb := newCB(":method", "GET", ":path", "/r", ":authority", "x")
			cb.answer = tc.answer
			f := fac.NewFilter(cb)
			if st := f.OnRequestHeaders(&cb.req, true); st != stream.StopAndWait {
				t.Fatalf("status %v", st)
			}
			if e := cb.wait(t); e != tc.event {
				t.Fatalf("event %s, want %s", e, tc.event)
			}
			cb.mu.Lock()
			c := cb.calls[0]
			cb.mu.Unlock()
			if c.cluster != "auth_cluster" || c.headers.Value(":path") != "/check/r" || c.body != "probe" || c.timeout != time.Second {
				t.Errorf("call %+v", c)
			}
			tc.check(t, cb)
			f.OnDone()
		})
	}
}

func TestSharedDataCAS(t *testing.T) {
	fac, _ := compileGo(t, "shared")
	var wg sync.WaitGroup
	const n = 40
	seen := make(chan string, n)
	one := func() {
		cb := newCB(":method", "GET", ":path", "/", ":authority", "x")
		f := fac.NewFilter(cb)
		f.OnRequestHeaders(&cb.req, true)
		seen <- cb.req.Value("x-count")
		f.OnDone()
	}
	// cas 0 sets unconditionally (as in Envoy), so the key is created
	// first; the increments after it race only through CAS.
	one()
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one()
		}()
	}
	wg.Wait()
	close(seen)
	// Every increment is distinct across VMs: CAS lost no update. (The
	// store is process-wide, so -count=N runs start past 1.)
	var got []int
	for s := range seen {
		v, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("x-count %q", s)
		}
		got = append(got, v)
	}
	sort.Ints(got)
	for i := range got {
		if got[i] != got[0]+i {
			t.Fatalf("counts not contiguous: %v", got)
		}
	}
}

func sharedValueOf(vmID, key string) string {
	shared.Lock()
	defer shared.Unlock()
	if v := shared.byVM[vmID][key]; v != nil {
		return string(v.data)
	}
	return ""
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSharedQueue(t *testing.T) {
	fac, _ := compileGo(t, "queue")
	cb := newCB(":method", "GET", ":path", "/queued-item", ":authority", "x")
	f := fac.NewFilter(cb)
	f.OnRequestHeaders(&cb.req, true)
	f.OnDone()
	eventually(t, "the queue item", func() bool { return sharedValueOf("vm-"+t.Name(), "dequeued") == "/queued-item" })
}

func TestTick(t *testing.T) {
	compileGo(t, "tick")
	eventually(t, "ticks", func() bool {
		n, _ := strconv.Atoi(sharedValueOf("vm-"+t.Name(), "ticks"))
		return n >= 3
	})
}

// TestRootContextHTTPCall: an http_call made from the root context (on a
// tick, no stream) goes through the Compiler's Callout and its answer comes
// back to the root context.
func TestRootContextHTTPCall(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	callout := func(_ context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*stream.HTTPResponse, error) {
		mu.Lock()
		calls = append(calls, cluster+" "+h.Value(":path"))
		mu.Unlock()
		resp := &stream.HTTPResponse{Body: []byte("tick-ok")}
		resp.Headers.Add(":status", "200")
		return resp, nil
	}
	compileGo(t, "tick-call", func(c *Compiler, _ *wasmhttpv3.Wasm) { c.Callout = callout })
	eventually(t, "the root context's call answered", func() bool { return sharedValueOf("vm-"+t.Name(), "tick_call") == "200 tick-ok" })
	mu.Lock()
	defer mu.Unlock()
	if len(calls) == 0 || calls[0] != "auth_cluster /from-tick" {
		t.Fatalf("calls %q", calls)
	}
}

// Without a Callout the root context's call fails cleanly.
func TestRootContextHTTPCallWithoutCallout(t *testing.T) {
	compileGo(t, "tick-call")
	eventually(t, "the failed call recorded", func() bool {
		return strings.HasPrefix(sharedValueOf("vm-"+t.Name(), "tick_call"), "failed ")
	})
}

func TestMetrics(t *testing.T) {
	fac, st := compileGo(t, "metrics")
	for i := 1; i <= 3; i++ {
		cb := newCB(":method", "GET", ":path", "/", ":authority", "x")
		f := fac.NewFilter(cb)
		f.OnRequestHeaders(&cb.req, true)
		if got := cb.req.Value("x-requests"); got != fmt.Sprint(i) {
			t.Errorf("x-requests = %q, want %d", got, i)
		}
		if i == 3 {
			if v, _ := metricValue(st, "wasm.test.active"); v != 1 {
				t.Errorf("active = %v during a stream", v)
			}
		}
		f.OnDone()
	}
	for name, want := range map[string]float64{
		"wasmcustom.goguest_requests_total": 3, "wasmcustom.goguest_gauge": 42, "wasmcustom.goguest_hist": 3,
		"wasm.test.created": 2, "wasm.test.active": 0, "wasm.test.traps": 0,
	} {
		if v, ok := metricValue(st, name); !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	var prom bool
	for _, m := range st.Metrics() {
		// Envoy exports custom-namespace stats without "envoy_" and
		// without the namespace.
		if m.PromName == "goguest_requests_total" {
			prom = true
		}
	}
	if !prom {
		t.Error("no Prometheus name for the guest counter")
	}
}

func TestMiscHostFunctions(t *testing.T) {
	fac, _ := compileGo(t, "misc", func(c *Compiler, _ *wasmhttpv3.Wasm) {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	cb := newCB(":method", "GET", ":path", "/", ":authority", "x")
	var logs strings.Builder
	cb.log = slog.New(slog.NewTextHandler(&logs, nil))
	f := fac.NewFilter(cb)
	f.OnRequestHeaders(&cb.req, true)
	for k, v := range map[string]string{
		"x-log-level": "3", "x-time": "ok", "x-foreign": "1" /* NotFound */, "x-grpc": "4", /* ParseFailure: no upstream */
		"x-effective-bad": "2" /* BadArgument */, "x-done": "0",
	} {
		if got := cb.req.Value(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if !strings.Contains(logs.String(), "hello from the go guest") {
		t.Errorf("guest log missing: %s", logs.String())
	}
	f.OnDone()
}

func TestOnLogReadsResponse(t *testing.T) {
	fac, _ := compileGo(t, "log")
	cb := newCB(":method", "GET", ":path", "/", ":authority", "x")
	f := fac.NewFilter(cb)
	f.OnRequestHeaders(&cb.req, true)
	cb.resp.Add(":status", "200")
	f.OnResponseHeaders(&cb.resp, true)
	f.OnDone()
	if got := sharedValueOf("vm-"+t.Name(), "last_code"); got != "200" {
		t.Errorf("response.code seen in on_log = %q", got)
	}
}

func TestTrapFailsClosedAndRecovers(t *testing.T) {
	for _, path := range []string{"/panic", "/nil", "/oom", "/resp-panic", "/body-panic"} {
		t.Run(path, func(t *testing.T) {
			fac, st := compileGo(t, "trap", func(c *Compiler, _ *wasmhttpv3.Wasm) { c.PoolSize = 1 })
			cb := newCB(":method", "GET", ":path", path, ":authority", "x")
			f := fac.NewFilter(cb)
			st1 := f.OnRequestHeaders(&cb.req, false)
			if st1 == stream.Continue {
				var b stream.Buffer
				b.SetString("x")
				st1 = f.OnRequestBody(&b, true)
			}
			if st1 == stream.Continue {
				cb.resp.Add(":status", "200")
				st1 = f.OnResponseHeaders(&cb.resp, true)
			}
			if st1 != stream.LocalReply {
				t.Fatalf("status %v, want local_reply", st1)
			}
			if r, _ := cb.lastReply(); r.status != 503 || r.details != "wasm_fail_closed" {
				t.Errorf("reply %+v", r)
			}
			// The failed stream stays out of the guest.
			if s := f.OnResponseHeaders(&cb.resp, true); s != stream.Continue {
				t.Errorf("after the trap: %v", s)
			}
			f.OnDone()
			if v, _ := metricValue(st, "wasm.test.traps"); v != 1 {
				t.Errorf("traps = %v", v)
			}
			// The next request runs on a fresh VM.
			cb2 := newCB(":method", "GET", ":path", "/fine", ":authority", "x")
			f2 := fac.NewFilter(cb2)
			if s := f2.OnRequestHeaders(&cb2.req, true); s != stream.Continue || cb2.req.Value("x-trap-mode") != "alive" {
				t.Errorf("next request: %v %v", s, cb2.req.Fields())
			}
			f2.OnDone()
			if v, _ := metricValue(st, "wasm.test.created"); v != 2 {
				t.Errorf("created = %v, want 2", v)
			}
		})
	}
}

func TestFailOpen(t *testing.T) {
	fac, _ := compileGo(t, "trap", func(_ *Compiler, w *wasmhttpv3.Wasm) { w.Config.FailOpen = true })
	cb := newCB(":method", "GET", ":path", "/panic", ":authority", "x")
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.Continue {
		t.Fatalf("status %v, want continue", st)
	}
	if _, ok := cb.lastReply(); ok {
		t.Error("fail open sent a reply")
	}
	f.OnDone()
}

func TestTrapInHTTPCallResponseFailsWaitingStream(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprint("fail_open=", failOpen), func(t *testing.T) {
			fac, st := compileGo(t, "httpcall", func(_ *Compiler, w *wasmhttpv3.Wasm) { w.Config.FailOpen = failOpen })
			cb := newCB(":method", "GET", ":path", "/call-panic", ":authority", "x")
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

func TestCompileErrors(t *testing.T) {
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), PoolSize: 1}
	unknownImport := buildModule(1, wfunc{importMod: "env", importName: "proxy_bogus", params: []byte{tI32}, results: []byte{tI32}}, fABI, fMalloc, fContext)
	badSig := buildModule(1, wfunc{importMod: "env", importName: "proxy_log", params: []byte{tI32}, results: []byte{tI32}}, fABI, fMalloc, fContext)
	otherModule := buildModule(1, wfunc{importMod: "mystery", importName: "f"}, fABI, fMalloc, fContext)
	noABI := buildModule(1, fMalloc, fContext)
	noAlloc := buildModule(1, fABI, fContext)
	trapStart := buildModule(1, fABI, fMalloc, fContext, wfunc{export: "_initialize", body: []byte{0x00}})
	refuseStart := buildModule(1, fABI, fMalloc, fContext, wfunc{export: "proxy_on_vm_start", params: []byte{tI32, tI32}, results: []byte{tI32}, body: []byte{0x41, 0}})
	tooBig := buildModule(600, fABI, fMalloc, fContext)
	for _, tc := range []struct {
		name string
		cfg  *wasmhttpv3.Wasm
		want string
	}{
		{"not wasm", inlineConfig(t, []byte("hello"), ""), "inline_bytes: cannot compile the module: invalid magic number"},
		{"missing file", config(t, "testdata/nope.wasm", ""), "wasm: read module"},
		{"no abi export", inlineConfig(t, noABI, ""), "no proxy_abi_version"},
		{"no allocator", inlineConfig(t, noAlloc, ""), "neither proxy_on_memory_allocate nor malloc"},
		{"unknown import", inlineConfig(t, unknownImport, ""), "imports functions the host does not provide: env.proxy_bogus"},
		{"other module import", inlineConfig(t, otherModule, ""), "mystery.f"},
		{"bad signature", inlineConfig(t, badSig, ""), "env.proxy_log(i32) -> (i32) (host provides (i32, i32, i32) -> (i32))"},
		{"trap in _initialize", inlineConfig(t, trapStart, ""), "_initialize failed"},
		{"vm refuses to start", inlineConfig(t, refuseStart, ""), "refused to start"},
		{"memory over the limit", inlineConfig(t, tooBig, ""), "over limit of 512 pages"},
		{"plugin refuses config", config(t, goGuest, "mode=refuse"), "goguest.wasm: plugin refused its configuration"},
		{"trap in on_configure", config(t, goGuest, "mode=trap-configure"), "proxy_on_configure failed"},
		{"null runtime", func() *wasmhttpv3.Wasm {
			c := config(t, goGuest, "")
			c.Config.GetVmConfig().Runtime = "envoy.wasm.runtime.null"
			return c
		}(), "not supported"},
		{"remote code without uri", func() *wasmhttpv3.Wasm {
			c := config(t, goGuest, "")
			c.Config.GetVmConfig().Code = &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Remote{Remote: &corev3.RemoteDataSource{}}}
			return c
		}(), "remote code has no http_uri.uri"},
		{"wrong type", nil, "want *wasmhttpv3.Wasm"},
		{"network filter", nil, "network filter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg any = tc.cfg
			switch {
			case tc.name == "network filter":
				cfg = &wasmnetv3.Wasm{}
			case tc.cfg == nil:
				cfg = "nope"
			}
			_, err := c.Compile(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "wasm: ") {
				t.Errorf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestModuleCompiledOncePerSHA(t *testing.T) {
	code := readFile(t, goGuest)
	eng, err := engineFor(DefaultMemoryLimitPages)
	if err != nil {
		t.Fatal(err)
	}
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), PoolSize: 1}
	f1, err := c.Compile(config(t, goGuest, "mode=headers"))
	if err != nil {
		t.Fatal(err)
	}
	defer f1.(*Factory).Close()
	eng.mu.Lock()
	before := eng.compiles
	_, cached := eng.modules[sha256.Sum256(code)]
	eng.mu.Unlock()
	if !cached {
		t.Fatal("module not cached by sha256")
	}
	f2, err := c.Compile(inlineConfig(t, code, "mode=headers"))
	if err != nil {
		t.Fatal(err)
	}
	defer f2.(*Factory).Close()
	eng.mu.Lock()
	after := eng.compiles
	eng.mu.Unlock()
	if after != before {
		t.Errorf("compiled again: %d -> %d", before, after)
	}
}

func TestAssemblyScriptGuest(t *testing.T) {
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Stats: observe.NewStore(), PoolSize: 2}
	cfg := config(t, asGuest, "as-config-value")
	cfg.Config.RootId = "as_root"
	fac, err := c.Compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer fac.(*Factory).Close()

	cb := newCB(":method", "GET", ":path", "/as-local", ":authority", "x")
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.LocalReply {
		t.Fatalf("status %v", st)
	}
	if r, _ := cb.lastReply(); r.status != 418 || r.body != "short and stout\n" || r.details != "as_local" {
		t.Errorf("reply %+v", r)
	}
	f.OnDone()

	cb = newCB(":method", "GET", ":path", "/as-reroute", ":authority", "x")
	f = fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.Continue {
		t.Fatalf("status %v", st)
	}
	if cb.req.Value(":path") != "/rerouted" || !cb.routeCleared {
		t.Errorf("path %q, route cleared %v", cb.req.Value(":path"), cb.routeCleared)
	}
	cb.resp.Add(":status", "200")
	f.OnResponseHeaders(&cb.resp, true)
	if got := cb.resp.Value("x-as-config"); got != "as-config-value" {
		t.Errorf("x-as-config = %q", got)
	}
	f.OnDone()
}

func TestConcurrentStreams(t *testing.T) {
	fac, st := compileGo(t, "httpcall", func(c *Compiler, _ *wasmhttpv3.Wasm) { c.PoolSize = 3 })
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cb := newCB(":method", "GET", ":path", fmt.Sprintf("/%d", i), ":authority", "x")
			f := fac.NewFilter(cb)
			if s := f.OnRequestHeaders(&cb.req, true); s != stream.StopAndWait {
				errs <- fmt.Errorf("status %v", s)
				return
			}
			select {
			case e := <-cb.events:
				if e != "resume" || cb.req.Value("x-auth") != "ok" {
					errs <- fmt.Errorf("event %s, x-auth %q", e, cb.req.Value("x-auth"))
				}
			case <-time.After(10 * time.Second):
				errs <- fmt.Errorf("stream %d never resumed", i)
			}
			cb.resp.Add(":status", "200")
			f.OnResponseHeaders(&cb.resp, true)
			f.OnDone()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if v, _ := metricValue(st, "wasm.test.active"); v != 0 {
		t.Errorf("active = %v after all streams", v)
	}
}

func BenchmarkHeaderFilter(b *testing.B) {
	fac, _ := compileGo(b, "addheader", func(c *Compiler, _ *wasmhttpv3.Wasm) { c.PoolSize = 1 })
	b.ReportAllocs()
	cb := newCB()
	for b.Loop() {
		cb.req.Reset()
		cb.req.Add(":method", "GET")
		cb.req.Add(":path", "/")
		cb.req.Add(":authority", "x")
		f := fac.NewFilter(cb)
		if f.OnRequestHeaders(&cb.req, true) != stream.Continue || cb.req.Value("x-wasm") != "1" {
			b.Fatal("header not added")
		}
		f.OnDone()
	}
}

// BenchmarkHeaderFilterAS is BenchmarkHeaderFilter with the AssemblyScript
// guest (proxy-runtime SDK): it reads :path on the request and adds a
// response header, the shape of a typical SDK-built header filter.
func BenchmarkHeaderFilterAS(b *testing.B) {
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Stats: observe.NewStore(), PoolSize: 1}
	cfg := config(b, asGuest, "as-config-value")
	cfg.Config.RootId = "as_root"
	fac, err := c.Compile(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer fac.(*Factory).Close()
	b.ReportAllocs()
	cb := newCB()
	for b.Loop() {
		cb.req.Reset()
		cb.req.Add(":method", "GET")
		cb.req.Add(":path", "/")
		cb.req.Add(":authority", "x")
		cb.resp.Reset()
		cb.resp.Add(":status", "200")
		f := fac.NewFilter(cb)
		f.OnRequestHeaders(&cb.req, true)
		if f.OnResponseHeaders(&cb.resp, true) != stream.Continue || cb.resp.Value("x-as-config") != "as-config-value" {
			b.Fatal("header not added")
		}
		f.OnDone()
	}
}

// The hand-written guest (testdata/watguest) adds its header through the
// same ABI as the SDK-built ones.
func TestWATGuest(t *testing.T) {
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Stats: observe.NewStore(), PoolSize: 1}
	fac, err := c.Compile(config(t, watGuest, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer fac.(*Factory).Close()
	cb := newCB(":method", "GET", ":path", "/", ":authority", "x")
	f := fac.NewFilter(cb)
	if st := f.OnRequestHeaders(&cb.req, true); st != stream.Continue || cb.req.Value("x-wasm") != "1" {
		t.Fatalf("status %v, x-wasm %q", st, cb.req.Value("x-wasm"))
	}
	f.OnDone()
}

// BenchmarkHeaderFilterWAT is BenchmarkHeaderFilter with the hand-written
// guest: next to no guest code, so it is what the host costs per stream
// (context create, request headers, done, log, delete).
func BenchmarkHeaderFilterWAT(b *testing.B) {
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Stats: observe.NewStore(), PoolSize: 1}
	fac, err := c.Compile(config(b, watGuest, ""))
	if err != nil {
		b.Fatal(err)
	}
	defer fac.(*Factory).Close()
	b.ReportAllocs()
	cb := newCB()
	for b.Loop() {
		cb.req.Reset()
		cb.req.Add(":method", "GET")
		cb.req.Add(":path", "/")
		cb.req.Add(":authority", "x")
		f := fac.NewFilter(cb)
		if f.OnRequestHeaders(&cb.req, true) != stream.Continue || cb.req.Value("x-wasm") != "1" {
			b.Fatal("header not added")
		}
		f.OnDone()
	}
}
