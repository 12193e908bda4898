package wasm

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	wasmhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	wasmnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/wasm/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

var _ stream.NetworkCompiler = Compiler{}

// fakeConn is a stream.NetworkCallbacks that records what the filter asks
// of its connection.
type fakeConn struct {
	ctx    context.Context
	cancel context.CancelFunc
	id     uint64
	dm     stream.Metadata
	log    *slog.Logger

	mu     sync.Mutex
	closed bool
}

func newConn(id uint64) *fakeConn {
	ctx, cancel := context.WithCancel(context.Background())
	return &fakeConn{ctx: ctx, cancel: cancel, id: id, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

var noHeaders header.Map

func (c *fakeConn) RequestHeaders() *header.Map   { return &noHeaders }
func (c *fakeConn) ResponseHeaders() *header.Map  { return &noHeaders }
func (c *fakeConn) ResponseTrailers() *header.Map { return &noHeaders }
func (c *fakeConn) ResponseCode() int             { return 0 }
func (c *fakeConn) RequestID() string             { return "" }
func (c *fakeConn) StartTime() time.Time          { return time.Unix(1700000000, 0) }
func (c *fakeConn) Protocol() string              { return "" }
func (c *fakeConn) DownstreamRemote() netip.AddrPort {
	return netip.MustParseAddrPort("10.1.2.3:4567")
}
func (c *fakeConn) DownstreamLocal() netip.AddrPort   { return netip.MustParseAddrPort("127.0.0.1:8080") }
func (c *fakeConn) TLS() *tls.ConnectionState         { return nil }
func (c *fakeConn) UpstreamAddress() string           { return "127.0.0.1:9000" }
func (c *fakeConn) RouteName() string                 { return "" }
func (c *fakeConn) ClusterName() string               { return "echo" }
func (c *fakeConn) RequestBodySize() int64            { return 0 }
func (c *fakeConn) ResponseBodySize() int64           { return 0 }
func (c *fakeConn) ConnectionID() uint64              { return c.id }
func (c *fakeConn) Context() context.Context          { return c.ctx }
func (c *fakeConn) WriteDownstream([]byte) error      { return nil }
func (c *fakeConn) WriteUpstream([]byte) error        { return nil }
func (c *fakeConn) DynamicMetadata() *stream.Metadata { return &c.dm }
func (c *fakeConn) Logger() *slog.Logger              { return c.log }
func (c *fakeConn) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
}

func (c *fakeConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

var _ stream.NetworkCallbacks = (*fakeConn)(nil)

// compileNet compiles the Go guest as a network filter in a mode.
func compileNet(t testing.TB, pluginConfig string, mutate ...func(*Compiler, *wasmnetv3.Wasm)) (*NetworkFactory, *observe.Store) {
	t.Helper()
	st := observe.NewStore()
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Stats: st, PoolSize: 2}
	cfg := &wasmnetv3.Wasm{Config: config(t, goGuest, pluginConfig).GetConfig()}
	for _, m := range mutate {
		m(&c, cfg)
	}
	f, err := c.CompileNetworkFilter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.(*NetworkFactory).Close)
	return f.(*NetworkFactory), st
}

func buf(s string) *stream.Buffer {
	b := &stream.Buffer{}
	b.SetString(s)
	return b
}

func vmIDOf(t testing.TB) string { return "vm-" + t.Name() }

// TestNetworkUpper: the guest rewrites the client's bytes, sees the
// upstream's, counts in its metric, and gets Envoy's callbacks in Envoy's
// order, with end of stream both ways.
func TestNetworkUpper(t *testing.T) {
	fac, st := compileNet(t, "mode=tcp-upper")
	c := newConn(1)
	f := fac.NewNetworkFilter(c)
	if s := f.OnNewConnection(); s != stream.NetworkContinue {
		t.Fatalf("new connection: %v", s)
	}
	b := buf("hello, world\n")
	if s := f.OnDownstreamData(b, false); s != stream.NetworkContinue || string(b.Bytes()) != "HELLO, WORLD\n" {
		t.Fatalf("downstream: %v %q", s, b.Bytes())
	}
	up := buf("from upstream")
	if s := f.OnUpstreamData(up, false); s != stream.NetworkContinue || string(up.Bytes()) != "from upstream" {
		t.Fatalf("upstream: %v %q", s, up.Bytes())
	}
	if s := f.OnDownstreamData(buf(""), true); s != stream.NetworkContinue {
		t.Fatalf("downstream end: %v", s)
	}
	if s := f.OnUpstreamData(buf(""), true); s != stream.NetworkContinue {
		t.Fatalf("upstream end: %v", s)
	}
	if v, _ := metricValue(st, "wasm.test.active"); v != 1 {
		t.Errorf("active %v, want 1", v)
	}
	f.OnClose()
	want := "new,down:13:0,up:13:0,down:0:1,up:0:1,upclose:0,downclose:2,log,delete"
	if got := sharedValueOf(vmIDOf(t), "tcp_events"); got != want {
		t.Errorf("events\n got %s\nwant %s", got, want)
	}
	if v, _ := metricValue(st, "wasmcustom.goguest_tcp_bytes_total"); v != 13 {
		t.Errorf("goguest_tcp_bytes_total %v, want 13", v)
	}
	if v, _ := metricValue(st, "wasm.test.active"); v != 0 {
		t.Errorf("active %v after close", v)
	}
	if c.isClosed() {
		t.Error("the filter closed the connection")
	}
}

// TestNetworkHold: Pause holds the bytes; the guest is called again with
// more appended (as the chain does) and its Continue lets them through.
func TestNetworkHold(t *testing.T) {
	fac, st := compileNet(t, "mode=tcp-hold")
	f := fac.NewNetworkFilter(newConn(1))
	f.OnNewConnection()
	b := buf("first ")
	if s := f.OnDownstreamData(b, false); s != stream.NetworkStopIteration {
		t.Fatalf("without a newline: %v", s)
	}
	b.Append([]byte("second\n"))
	if s := f.OnDownstreamData(b, false); s != stream.NetworkContinue || string(b.Bytes()) != "first second\n" {
		t.Fatalf("with a newline: %v %q", s, b.Bytes())
	}
	f.OnClose()
	if got := sharedValueOf(vmIDOf(t), "tcp_events"); !strings.HasPrefix(got, "new,down:6:0,down:13:0,upclose:0,downclose:0") {
		t.Errorf("events %s", got)
	}
	if v, _ := metricValue(st, "wasmcustom.goguest_tcp_bytes_total"); v != 13 {
		t.Errorf("goguest_tcp_bytes_total %v, want 13", v)
	}
}

// TestNetworkDeny: proxy_close_stream closes the connection (LOCAL in the
// close callback); a good prefix, possibly split, lets everything pass.
func TestNetworkDeny(t *testing.T) {
	fac, _ := compileNet(t, "mode=tcp-deny prefix=HELLO")

	good := newConn(1)
	f := fac.NewNetworkFilter(good)
	f.OnNewConnection()
	b := buf("HEL")
	if s := f.OnDownstreamData(b, false); s != stream.NetworkStopIteration {
		t.Fatalf("a short prefix: %v", s)
	}
	b.Append([]byte("LO there"))
	if s := f.OnDownstreamData(b, false); s != stream.NetworkContinue {
		t.Fatalf("the prefix: %v", s)
	}
	if s := f.OnDownstreamData(buf("anything"), false); s != stream.NetworkContinue {
		t.Fatalf("after the prefix: %v", s)
	}
	f.OnClose()
	if good.isClosed() {
		t.Error("a good connection was closed")
	}

	bad := newConn(2)
	f = fac.NewNetworkFilter(bad)
	f.OnNewConnection()
	if s := f.OnDownstreamData(buf("GET / HTTP/1.1\r\n"), false); s != stream.NetworkStopIteration {
		t.Fatalf("a bad prefix: %v", s)
	}
	if !bad.isClosed() {
		t.Fatal("the connection was not closed")
	}
	f.OnClose()
	if got, want := sharedValueOf(vmIDOf(t), "tcp_events"), "new,down:16:0,deny,upclose:0,downclose:1,log,delete"; got != want {
		t.Errorf("events\n got %s\nwant %s", got, want)
	}
}

// TestNetworkTrap: a trap closes the connection that hit it (fail
// closed), the VM is replaced, and new connections work. A connection
// bound to the trapped VM loses its guest and fails at its next callback.
func TestNetworkTrap(t *testing.T) {
	fac, st := compileNet(t, "mode=tcp-trap", func(c *Compiler, _ *wasmnetv3.Wasm) { c.PoolSize = 1 })
	bystander := newConn(1)
	fb := fac.NewNetworkFilter(bystander)
	fb.OnNewConnection()

	c := newConn(2)
	f := fac.NewNetworkFilter(c)
	f.OnNewConnection()
	if s := f.OnDownstreamData(buf("a trap"), false); s != stream.NetworkStopIteration {
		t.Fatalf("trap: %v", s)
	}
	if !c.isClosed() {
		t.Fatal("the trapping connection was not closed")
	}
	f.OnClose() // nothing left to call
	if v, _ := metricValue(st, "wasm.test.traps"); v != 1 {
		t.Errorf("traps %v", v)
	}
	eventually(t, "the replacement vm", func() bool { v, _ := metricValue(st, "wasm.test.created"); return v == 2 })

	if bystander.isClosed() {
		t.Error("the bystander was closed before its next callback")
	}
	if s := fb.OnDownstreamData(buf("more"), false); s != stream.NetworkStopIteration || !bystander.isClosed() {
		t.Errorf("bystander on the trapped vm: %v, closed %v", s, bystander.isClosed())
	}
	fb.OnClose()

	for i := range 5 {
		n := newConn(uint64(10 + i))
		nf := fac.NewNetworkFilter(n)
		if s := nf.OnNewConnection(); s != stream.NetworkContinue {
			t.Fatalf("new connection after the trap: %v", s)
		}
		if s := nf.OnDownstreamData(buf("fine"), false); s != stream.NetworkContinue || n.isClosed() {
			t.Fatalf("data after the trap: %v", s)
		}
		nf.OnClose()
	}
	if v, _ := metricValue(st, "wasm.test.traps"); v != 1 {
		t.Errorf("traps %v", v)
	}
}

// With fail_open a trapped connection passes untouched from then on.
func TestNetworkTrapFailOpen(t *testing.T) {
	fac, _ := compileNet(t, "mode=tcp-trap", func(_ *Compiler, cfg *wasmnetv3.Wasm) { cfg.Config.FailOpen = true })
	c := newConn(1)
	f := fac.NewNetworkFilter(c)
	f.OnNewConnection()
	for _, s := range []string{"a trap", "more trap", "fine"} {
		if st := f.OnDownstreamData(buf(s), false); st != stream.NetworkContinue {
			t.Fatalf("%q: %v", s, st)
		}
	}
	f.OnClose()
	if c.isClosed() {
		t.Error("fail_open closed the connection")
	}
}

// tcpCallout answers the guest's http_call with status, after release
// is closed (nil: at once), and records the calls.
type tcpCallout struct {
	status  string
	release chan struct{}
	mu      sync.Mutex
	calls   []string
}

func (c *tcpCallout) call(ctx context.Context, cluster string, h *header.Map, body []byte, _ time.Duration) (*stream.HTTPResponse, error) {
	c.mu.Lock()
	c.calls = append(c.calls, cluster+" "+h.Value(":path")+" "+string(body))
	c.mu.Unlock()
	if c.release != nil {
		select {
		case <-c.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r := &stream.HTTPResponse{}
	r.Headers.Add(":status", c.status)
	return r, nil
}

// TestNetworkCallOnNewConnection: a new connection paused on an
// http_call waits for the answer: continue_stream(DOWNSTREAM) lets it
// go on, close_stream refuses it.
func TestNetworkCallOnNewConnection(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   stream.NetworkStatus
		events string
	}{
		{"200", stream.NetworkContinue, "new,call:200,continue:0"},
		{"403", stream.NetworkStopIteration, "new,call:403"},
	} {
		t.Run(tc.status, func(t *testing.T) {
			co := &tcpCallout{status: tc.status, release: make(chan struct{})}
			fac, _ := compileNet(t, "mode=tcp-call", func(c *Compiler, _ *wasmnetv3.Wasm) { c.Callout = co.call })
			c := newConn(1)
			f := fac.NewNetworkFilter(c)
			got := make(chan stream.NetworkStatus, 1)
			go func() { got <- f.OnNewConnection() }()
			eventually(t, "the call", func() bool { co.mu.Lock(); defer co.mu.Unlock(); return len(co.calls) == 1 })
			select {
			case s := <-got:
				t.Fatalf("returned %v before the answer", s)
			default:
			}
			close(co.release)
			if s := <-got; s != tc.want {
				t.Fatalf("status %v, want %v", s, tc.want)
			}
			if c.isClosed() != (tc.want != stream.NetworkContinue) {
				t.Errorf("closed %v", c.isClosed())
			}
			f.OnClose()
			if got := sharedValueOf(vmIDOf(t), "tcp_events"); !strings.HasPrefix(got, tc.events+",upclose") {
				t.Errorf("events %s, want %s...", got, tc.events)
			}
			if len(co.calls) != 1 || co.calls[0] != "auth_cluster /tcp-check " {
				t.Errorf("calls %q", co.calls)
			}
		})
	}
}

// A connection that ends while its callback waits releases it.
func TestNetworkCallConnectionEnds(t *testing.T) {
	co := &tcpCallout{status: "200", release: make(chan struct{})}
	defer close(co.release)
	fac, _ := compileNet(t, "mode=tcp-call", func(c *Compiler, _ *wasmnetv3.Wasm) { c.Callout = co.call })
	c := newConn(1)
	f := fac.NewNetworkFilter(c)
	got := make(chan stream.NetworkStatus, 1)
	go func() { got <- f.OnNewConnection() }()
	eventually(t, "the call", func() bool { co.mu.Lock(); defer co.mu.Unlock(); return len(co.calls) == 1 })
	c.cancel()
	if s := <-got; s != stream.NetworkStopIteration {
		t.Fatalf("status %v", s)
	}
	f.OnClose()
}

// Without a Callout the call fails at once and the guest goes on.
func TestNetworkCallWithoutCallout(t *testing.T) {
	fac, _ := compileNet(t, "mode=tcp-call")
	f := fac.NewNetworkFilter(newConn(1))
	if s := f.OnNewConnection(); s != stream.NetworkContinue {
		t.Fatalf("status %v", s)
	}
	f.OnClose()
	if got := sharedValueOf(vmIDOf(t), "tcp_events"); !strings.HasPrefix(got, "new,call-failed:10,") {
		t.Errorf("events %s", got)
	}
}

// TestNetworkCallOnData: data paused on a call waits for the answer,
// with the buffer the guest's meanwhile; then it passes whole.
func TestNetworkCallOnData(t *testing.T) {
	co := &tcpCallout{status: "200"}
	fac, st := compileNet(t, "mode=tcp-call-data", func(c *Compiler, _ *wasmnetv3.Wasm) { c.Callout = co.call })
	f := fac.NewNetworkFilter(newConn(1))
	f.OnNewConnection()
	b := buf("payload")
	if s := f.OnDownstreamData(b, false); s != stream.NetworkContinue || string(b.Bytes()) != "payload" {
		t.Fatalf("status %v %q", s, b.Bytes())
	}
	if s := f.OnDownstreamData(buf("more"), false); s != stream.NetworkContinue {
		t.Fatalf("more: %v", s)
	}
	f.OnClose()
	if len(co.calls) != 1 || co.calls[0] != "auth_cluster /tcp-check payload" {
		t.Errorf("calls %q", co.calls)
	}
	if got := sharedValueOf(vmIDOf(t), "tcp_events"); !strings.HasPrefix(got, "new,down:7:0,call:200,continue:0,down:4:0,") {
		t.Errorf("events %s", got)
	}
	if v, _ := metricValue(st, "wasmcustom.goguest_tcp_bytes_total"); v != 4 {
		t.Errorf("goguest_tcp_bytes_total %v", v) // the paused callback does not count its bytes
	}
}

// TestNetworkProps: what a connection context reads (properties through
// engine/attr, connection_id, filter state) and what HTTP-only calls do
// there; the upstream buffer takes Envoy's prepend/append rules.
func TestNetworkProps(t *testing.T) {
	fac, _ := compileNet(t, "mode=tcp-props")
	f := fac.NewNetworkFilter(newConn(42))
	f.OnNewConnection()
	want := "source.address=0:10.1.2.3,destination.port=0:8080,upstream.address=0:127.0.0.1:9000,connection_id=0:42,plugin_name=0:test," +
		"request.path=1:,my_prop=0:v1,header=1,local=0,continue-up=12,continue-req=0,close-bad=2"
	if got := sharedValueOf(vmIDOf(t), "tcp_props"); got != want {
		t.Errorf("props\n got %s\nwant %s", got, want)
	}
	b := buf("data")
	if s := f.OnUpstreamData(b, false); s != stream.NetworkContinue || string(b.Bytes()) != "<data>" {
		t.Errorf("upstream %v %q", s, b.Bytes())
	}
	f.OnClose()
	if got := sharedValueOf(vmIDOf(t), "tcp_events"); !strings.Contains(got, "up:4:0,splice:2,") {
		t.Errorf("events %s", got)
	}
}

// TestNetworkGrpcStream: a connection's gRPC stream goes through the
// Compiler's StreamCallout; without one it is refused.
func TestNetworkGrpcStream(t *testing.T) {
	var opened []string
	open := func(ctx context.Context, cluster string, h *header.Map) (stream.CalloutStream, error) {
		opened = append(opened, cluster+" "+h.Value(":path"))
		return nil, errors.New("fake: refused")
	}
	fac, _ := compileNet(t, "mode=tcp-grpcstream", func(c *Compiler, _ *wasmnetv3.Wasm) { c.StreamCallout = open })
	f := fac.NewNetworkFilter(newConn(1))
	f.OnNewConnection()
	f.OnClose()
	if len(opened) != 1 || opened[0] != "grpc_cluster /sluice.test.Streamer/Count" {
		t.Errorf("opened %q", opened)
	}
	if got := sharedValueOf(vmIDOf(t), "tcp_events"); !strings.HasPrefix(got, "new,stream:10:0,") {
		t.Errorf("events %s", got)
	}
}

func TestNetworkCompileErrors(t *testing.T) {
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), PoolSize: 1}
	for _, tc := range []struct {
		cfg  any
		want string
	}{
		{&wasmhttpv3.Wasm{}, "is an HTTP filter"},
		{"nope", "want *wasmnetv3.Wasm"},
		{&wasmnetv3.Wasm{}, "no plugin config"},
		{&wasmnetv3.Wasm{Config: config(t, goGuest, "mode=refuse").GetConfig()}, "plugin refused its configuration"},
	} {
		if _, err := c.CompileNetworkFilter(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "wasm: ") {
			t.Errorf("%T: error %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// Many connections at once on a small pool each see their own bytes.
func TestNetworkConcurrent(t *testing.T) {
	fac, st := compileNet(t, "mode=tcp-upper")
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := fac.NewNetworkFilter(newConn(uint64(i)))
			defer f.OnClose()
			f.OnNewConnection()
			for j := range 20 {
				msg := strings.Repeat("ab", i+j)
				b := buf(msg)
				if s := f.OnDownstreamData(b, false); s != stream.NetworkContinue || string(b.Bytes()) != strings.ToUpper(msg) {
					errs <- errors.New("wrong bytes: " + string(b.Bytes()))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	want := 0
	for i := range 16 {
		for j := range 20 {
			want += 2 * (i + j)
		}
	}
	if v, _ := metricValue(st, "wasmcustom.goguest_tcp_bytes_total"); v != float64(want) {
		t.Errorf("goguest_tcp_bytes_total %v, want %d", v, want)
	}
}

// BenchmarkNetworkDownstreamData is one proxy_on_downstream_data callback
// of 64 bytes: the guest reads the buffer (and, for upper, writes it
// back) and counts it.
func BenchmarkNetworkDownstreamData(b *testing.B) {
	for _, mode := range []string{"tcp-hold", "tcp-upper"} {
		b.Run(mode, func(b *testing.B) {
			fac, _ := compileNet(b, "mode="+mode)
			f := fac.NewNetworkFilter(newConn(1))
			defer f.OnClose()
			f.OnNewConnection()
			msg := strings.Repeat("x", 63) + "\n"
			data := &stream.Buffer{}
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				data.SetString(msg)
				if s := f.OnDownstreamData(data, false); s != stream.NetworkContinue {
					b.Fatal(s)
				}
			}
		})
	}
}
