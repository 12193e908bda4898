package wasm

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

const (
	goGuest  = "testdata/goguest.wasm"
	asGuest  = "testdata/asguest.wasm"
	watGuest = "testdata/watguest.wasm"
)

// reply is a local reply the fake stream received.
type reply struct {
	status  int
	body    string
	headers []header.Field
	details string
}

type httpCall struct {
	cluster string
	headers header.Map
	body    string
	timeout time.Duration
}

// fakeCB is a stream.Callbacks that records what the filter asks for.
type fakeCB struct {
	req, resp, respTrailers header.Map

	mu           sync.Mutex
	replies      []reply
	calls        []httpCall
	routeCleared bool
	events       chan string // "resume" or "reply"

	// answer serves HTTPCall; nil answers 200 "ok".
	answer func(cluster string, h *header.Map, body []byte) (*stream.HTTPResponse, error)
	// open serves OpenStream; nil refuses every stream.
	open func(ctx context.Context, cluster string, h *header.Map) (stream.CalloutStream, error)

	fs, dm stream.Metadata
	log    *slog.Logger
}

func newCB(kv ...string) *fakeCB {
	cb := &fakeCB{events: make(chan string, 8), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for i := 0; i+1 < len(kv); i += 2 {
		cb.req.Add(kv[i], kv[i+1])
	}
	return cb
}

func (f *fakeCB) RequestHeaders() *header.Map   { return &f.req }
func (f *fakeCB) ResponseHeaders() *header.Map  { return &f.resp }
func (f *fakeCB) ResponseTrailers() *header.Map { return &f.respTrailers }
func (f *fakeCB) ResponseCode() int {
	if v := f.resp.Value(":status"); v == "200" {
		return 200
	}
	return 0
}
func (f *fakeCB) RequestID() string    { return "req-1" }
func (f *fakeCB) StartTime() time.Time { return time.Unix(1700000000, 0) }
func (f *fakeCB) Protocol() string     { return "HTTP/1.1" }
func (f *fakeCB) DownstreamRemote() netip.AddrPort {
	return netip.MustParseAddrPort("10.1.2.3:4567")
}
func (f *fakeCB) DownstreamLocal() netip.AddrPort { return netip.MustParseAddrPort("127.0.0.1:8080") }
func (f *fakeCB) TLS() *tls.ConnectionState       { return nil }
func (f *fakeCB) UpstreamAddress() string         { return "" }
func (f *fakeCB) RouteName() string               { return "route-a" }
func (f *fakeCB) ClusterName() string             { return "backend" }
func (f *fakeCB) RequestBodySize() int64          { return 0 }
func (f *fakeCB) ResponseBodySize() int64         { return 0 }
func (f *fakeCB) Context() context.Context        { return context.Background() }
func (f *fakeCB) SendLocalReply(status int, body string, h []header.Field, details string) {
	f.mu.Lock()
	f.replies = append(f.replies, reply{status, body, h, details})
	f.mu.Unlock()
	f.events <- "reply"
}
func (f *fakeCB) Resume() { f.events <- "resume" }
func (f *fakeCB) ClearRouteCache() {
	f.mu.Lock()
	f.routeCleared = true
	f.mu.Unlock()
}
func (f *fakeCB) FilterOverride() any { return nil }
func (f *fakeCB) StreamID() uint64    { return 7 }
func (f *fakeCB) HTTPCall(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*stream.HTTPResponse, error) {
	f.mu.Lock()
	f.calls = append(f.calls, httpCall{cluster, h.Clone(), string(body), timeout})
	answer := f.answer
	f.mu.Unlock()
	if answer != nil {
		return answer(cluster, h, body)
	}
	r := &stream.HTTPResponse{Body: []byte("ok")}
	r.Headers.Add(":status", "200")
	return r, nil
}
func (f *fakeCB) OpenStream(ctx context.Context, cluster string, h *header.Map) (stream.CalloutStream, error) {
	f.mu.Lock()
	open := f.open
	f.mu.Unlock()
	if open == nil {
		return nil, errors.New("fake: no streams")
	}
	return open(ctx, cluster, h)
}
func (f *fakeCB) DynamicMetadata() *stream.Metadata      { return &f.dm }
func (f *fakeCB) FilterState() *stream.Metadata          { return &f.fs }
func (f *fakeCB) RouteMetadata(ns string) map[string]any { return nil }
func (f *fakeCB) Logger() *slog.Logger                   { return f.log }

var (
	_ stream.Callbacks    = (*fakeCB)(nil)
	_ stream.StreamCaller = (*fakeCB)(nil)
)

func (f *fakeCB) lastReply() (reply, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.replies) == 0 {
		return reply{}, false
	}
	return f.replies[len(f.replies)-1], true
}

// wait returns the next resume or reply event.
func (f *fakeCB) wait(t testing.TB) string {
	t.Helper()
	select {
	case e := <-f.events:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for resume or local reply")
		return ""
	}
}

func stringAny(t testing.TB, s string) *anypb.Any {
	a, err := anypb.New(wrapperspb.String(s))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// config builds an Envoy Wasm filter config for a module file.
func config(t testing.TB, file, pluginConfig string) *wasmhttpv3.Wasm {
	return &wasmhttpv3.Wasm{Config: &wasmv3.PluginConfig{
		Name:          "test",
		RootId:        "test_root",
		Configuration: stringAny(t, pluginConfig),
		Vm: &wasmv3.PluginConfig_VmConfig{VmConfig: &wasmv3.VmConfig{
			VmId:          "vm-" + t.Name(),
			Runtime:       "envoy.wasm.runtime.v8",
			Configuration: stringAny(t, "vm-config-value"),
			Code: &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{Local: &corev3.DataSource{
				Specifier: &corev3.DataSource_Filename{Filename: file},
			}}},
		}},
	}}
}

func inlineConfig(t testing.TB, code []byte, pluginConfig string) *wasmhttpv3.Wasm {
	c := config(t, "", pluginConfig)
	c.Config.GetVmConfig().Code = &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{Local: &corev3.DataSource{
		Specifier: &corev3.DataSource_InlineBytes{InlineBytes: code},
	}}}
	return c
}

// compileGo compiles the Go guest in a mode with a small pool.
func compileGo(t testing.TB, mode string, mutate ...func(*Compiler, *wasmhttpv3.Wasm)) (*Factory, *observe.Store) {
	t.Helper()
	st := observe.NewStore()
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Stats: st, PoolSize: 2}
	cfg := config(t, goGuest, "mode="+mode)
	for _, m := range mutate {
		m(&c, cfg)
	}
	f, err := c.Compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.(*Factory).Close)
	return f.(*Factory), st
}

func readFile(t testing.TB, name string) []byte {
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func metricValue(st *observe.Store, name string) (float64, bool) {
	for _, m := range st.Metrics() {
		if m.Name == name {
			if m.Histogram != nil {
				return float64(m.Histogram.Count()), true
			}
			return m.Value, true
		}
	}
	return 0, false
}
