package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// --- fakes ---------------------------------------------------------------

type nopServerCodec struct{}

func (nopServerCodec) ServeConn(context.Context, net.Conn, *stream.ConnInfo, stream.Handler, *stream.ServerOptions) error {
	return nil
}

// fakeServerStream records what the proxy writes downstream.
type fakeServerStream struct {
	req      header.Map
	body     io.Reader
	hasBody  bool
	reqTrail header.Map
	conn     stream.ConnInfo

	respHeaders header.Map
	headersEnd  bool
	wroteHead   int
	respBody    bytes.Buffer
	bodyEnd     bool
	respTrail   header.Map
	resets      int
}

func newFakeStream(path, body string) *fakeServerStream {
	ss := &fakeServerStream{
		conn: stream.ConnInfo{ID: 7, Remote: netip.MustParseAddrPort("[::ffff:192.0.2.9]:4444"), Local: netip.MustParseAddrPort("127.0.0.1:8080")},
	}
	ss.req.Add(":method", "GET")
	ss.req.Add(":path", path)
	ss.req.Add(":authority", "example.com")
	ss.req.Add(":scheme", "http")
	if body != "" {
		ss.hasBody = true
		ss.body = strings.NewReader(body)
		ss.req.Set(":method", "POST")
	} else {
		ss.body = strings.NewReader("")
	}
	return ss
}

func (f *fakeServerStream) RequestHeaders() *header.Map { return &f.req }
func (f *fakeServerStream) Body() io.Reader             { return f.body }
func (f *fakeServerStream) HasBody() bool               { return f.hasBody }
func (f *fakeServerStream) ContentLength() int64        { return -1 }
func (f *fakeServerStream) RequestTrailers() *header.Map {
	return &f.reqTrail
}
func (f *fakeServerStream) WriteInformational(*header.Map) error { return nil }
func (f *fakeServerStream) WriteHeaders(h *header.Map, end bool) error {
	f.wroteHead++
	f.respHeaders.CopyFrom(h)
	f.headersEnd = end
	return nil
}
func (f *fakeServerStream) WriteBody(p []byte, end bool) error {
	f.respBody.Write(p)
	f.bodyEnd = end
	return nil
}
func (f *fakeServerStream) WriteTrailers(t *header.Map) error {
	f.respTrail.CopyFrom(t)
	return nil
}
func (f *fakeServerStream) Hijack() (io.ReadWriteCloser, error) { return nil, errors.New("no hijack") }
func (f *fakeServerStream) Reset()                              { f.resets++ }
func (f *fakeServerStream) Conn() *stream.ConnInfo              { return &f.conn }
func (f *fakeServerStream) Protocol() string                    { return "HTTP/1.1" }

func (f *fakeServerStream) status() string { return f.respHeaders.Value(":status") }

// recorder is a shared, goroutine-safe event log.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(e string) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// recSpec configures one recording filter. Nil hooks continue.
type recSpec struct {
	name      string
	rec       *recorder
	created   *int
	reqHeads  func(cb stream.Callbacks, h *header.Map, end bool) stream.Status
	reqBody   func(cb stream.Callbacks, b *stream.Buffer, end bool) stream.Status
	respHeads func(cb stream.Callbacks, h *header.Map, end bool) stream.Status
	respBody  func(cb stream.Callbacks, b *stream.Buffer, end bool) stream.Status
}

type recCompiler struct{}

var errBadConfig = errors.New("bad filter config")

func (recCompiler) Compile(cfg any) (stream.Factory, error) {
	spec, ok := cfg.(*recSpec)
	if !ok {
		return nil, errBadConfig
	}
	return stream.FactoryFunc(func(cb stream.Callbacks) stream.Filter {
		if spec.created != nil {
			*spec.created++
		}
		return &recFilter{spec: spec, cb: cb}
	}), nil
}

func (recCompiler) CompilePerRoute(cfg any) (any, error) {
	if s, ok := cfg.(string); ok && s == "bad" {
		return nil, errBadConfig
	}
	return cfg, nil
}

type recFilter struct {
	spec *recSpec
	cb   stream.Callbacks
}

func (f *recFilter) log(ev string) { f.spec.rec.add(f.spec.name + "." + ev) }

func (f *recFilter) OnRequestHeaders(h *header.Map, end bool) stream.Status {
	f.log("reqHeaders")
	if f.spec.reqHeads != nil {
		return f.spec.reqHeads(f.cb, h, end)
	}
	return stream.Continue
}
func (f *recFilter) OnRequestBody(b *stream.Buffer, end bool) stream.Status {
	f.log("reqBody")
	if f.spec.reqBody != nil {
		return f.spec.reqBody(f.cb, b, end)
	}
	return stream.Continue
}
func (f *recFilter) OnRequestTrailers(*header.Map) stream.Status {
	f.log("reqTrailers")
	return stream.Continue
}
func (f *recFilter) OnResponseHeaders(h *header.Map, end bool) stream.Status {
	f.log("respHeaders")
	if f.spec.respHeads != nil {
		return f.spec.respHeads(f.cb, h, end)
	}
	return stream.Continue
}
func (f *recFilter) OnResponseBody(b *stream.Buffer, end bool) stream.Status {
	f.log("respBody")
	if f.spec.respBody != nil {
		return f.spec.respBody(f.cb, b, end)
	}
	return stream.Continue
}
func (f *recFilter) OnResponseTrailers(*header.Map) stream.Status {
	f.log("respTrailers")
	return stream.Continue
}
func (f *recFilter) OnDone() { f.log("done") }

const recType = "test.recorder"

func testEnv() *Env {
	reg := stream.NewRegistry()
	reg.RegisterCodec("http1", nopServerCodec{}, nil)
	reg.RegisterFilter(recCompiler{}, recType)
	return &Env{Registry: reg, Stats: observe.NewStore(), Log: slog.New(slog.DiscardHandler)}
}

func directRoute(name, prefix string, status int, body string) *config.Route {
	return &config.Route{Name: name, Match: config.RouteMatch{Prefix: prefix}, DirectResponse: &config.DirectResponse{Status: status, Body: body}}
}

func hcm(filters []*config.HTTPFilter, vh *config.VirtualHost) *config.HTTPConnectionManager {
	if vh.Name == "" {
		vh.Name = "vh"
	}
	if len(vh.Domains) == 0 {
		vh.Domains = []string{"*"}
	}
	return &config.HTTPConnectionManager{
		StatPrefix:  "test",
		RouteConfig: &config.RouteConfiguration{Name: "rc", VirtualHosts: []*config.VirtualHost{vh}},
		HTTPFilters: filters,
	}
}

func recFilters(specs ...*recSpec) []*config.HTTPFilter {
	out := make([]*config.HTTPFilter, len(specs))
	for i, s := range specs {
		out[i] = &config.HTTPFilter{Name: s.name, TypeURL: recType, Config: s}
	}
	return out
}

func compileCM(t *testing.T, env *Env, cfg *config.HTTPConnectionManager) *ConnectionManager {
	t.Helper()
	cm, err := CompileConnectionManager(env, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cm
}

func counter(st *observe.Store, name string) float64 {
	for _, m := range st.Metrics() {
		if m.Name == name {
			return m.Value
		}
	}
	return -1
}

// serve runs one stream with a bound on time, so a stuck chain fails the
// test instead of hanging it.
func serve(t *testing.T, cm *ConnectionManager, ss *fakeServerStream) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		cm.ServeStream(ss)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeStream did not return")
	}
}

// --- tests ---------------------------------------------------------------

func TestChainOrder(t *testing.T) {
	rec := &recorder{}
	a, b, c := &recSpec{name: "A", rec: rec}, &recSpec{name: "B", rec: rec}, &recSpec{name: "C", rec: rec}
	env := testEnv()
	cm := compileCM(t, env, hcm(recFilters(a, b, c), &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "hello")}}))
	ss := newFakeStream("/x", "")
	serve(t, cm, ss)

	want := []string{
		"A.reqHeaders", "B.reqHeaders", "C.reqHeaders",
		"C.respHeaders", "B.respHeaders", "A.respHeaders",
		"C.respBody", "B.respBody", "A.respBody",
		"A.done", "B.done", "C.done",
	}
	if got := rec.get(); !reflect.DeepEqual(got, want) {
		t.Errorf("events\n got  %q\n want %q", got, want)
	}
	if ss.status() != "200" || ss.respBody.String() != "hello" || !ss.bodyEnd || ss.headersEnd {
		t.Errorf("response %s %q (bodyEnd %v headersEnd %v)", ss.status(), ss.respBody.String(), ss.bodyEnd, ss.headersEnd)
	}
	if v := ss.respHeaders.Value("content-length"); v != "5" {
		t.Errorf("content-length = %q, want 5", v)
	}
	if v := counter(env.Stats, "http.test.downstream_rq_2xx"); v != 1 {
		t.Errorf("downstream_rq_2xx = %v, want 1", v)
	}
	if v := counter(env.Stats, "vhost.vh.route.d.rq_2xx"); v != 1 {
		t.Errorf("route rq_2xx = %v, want 1", v)
	}
}

func TestChainLocalReplies(t *testing.T) {
	tests := []struct {
		name       string
		b          func(*recSpec)
		wantStatus string
		wantBody   string
		wantEvents []string
		wantHeader [2]string
		idle       time.Duration // stream idle timeout; 10s when zero
	}{
		{
			name: "request headers local reply skips later filters",
			b: func(s *recSpec) {
				s.reqHeads = func(cb stream.Callbacks, h *header.Map, end bool) stream.Status {
					cb.SendLocalReply(403, "denied", []header.Field{{Name: "x-reason", Value: "policy"}}, "")
					return stream.LocalReply
				}
			},
			wantStatus: "403", wantBody: "denied", wantHeader: [2]string{"x-reason", "policy"},
			wantEvents: []string{"A.reqHeaders", "B.reqHeaders", "A.respHeaders", "A.respBody", "A.done", "B.done"},
		},
		{
			name: "local reply status without a reply is a 500",
			b: func(s *recSpec) {
				s.reqHeads = func(stream.Callbacks, *header.Map, bool) stream.Status { return stream.LocalReply }
			},
			wantStatus: "500", wantBody: "filter error\n",
			wantEvents: []string{"A.reqHeaders", "B.reqHeaders", "A.respHeaders", "A.respBody", "A.done", "B.done"},
		},
		{
			name: "panicking filter fails its request with 500",
			b: func(s *recSpec) {
				s.reqHeads = func(stream.Callbacks, *header.Map, bool) stream.Status { panic("boom") }
			},
			wantStatus: "500", wantBody: "filter error\n",
			wantEvents: []string{"A.reqHeaders", "B.reqHeaders", "A.respHeaders", "A.respBody", "A.done", "B.done"},
		},
		{
			name: "stop and wait resumed from another goroutine",
			b: func(s *recSpec) {
				s.reqHeads = func(cb stream.Callbacks, h *header.Map, end bool) stream.Status {
					go func() { time.Sleep(5 * time.Millisecond); cb.Resume() }()
					return stream.StopAndWait
				}
			},
			wantStatus: "200", wantBody: "ok",
			wantEvents: []string{"A.reqHeaders", "B.reqHeaders", "C.reqHeaders", "C.respHeaders", "B.respHeaders", "A.respHeaders",
				"C.respBody", "B.respBody", "A.respBody", "A.done", "B.done", "C.done"},
		},
		{
			name: "stop and wait answered by a local reply from another goroutine",
			b: func(s *recSpec) {
				s.reqHeads = func(cb stream.Callbacks, h *header.Map, end bool) stream.Status {
					go func() { time.Sleep(5 * time.Millisecond); cb.SendLocalReply(429, "slow down", nil, "rate_limited") }()
					return stream.StopAndWait
				}
			},
			wantStatus: "429", wantBody: "slow down",
			wantEvents: []string{"A.reqHeaders", "B.reqHeaders", "A.respHeaders", "A.respBody", "A.done", "B.done"},
		},
		{
			name: "stop and wait times out after the stream idle timeout",
			b: func(s *recSpec) {
				s.reqHeads = func(stream.Callbacks, *header.Map, bool) stream.Status { return stream.StopAndWait }
			},
			idle:       30 * time.Millisecond,
			wantStatus: "504", wantBody: "filter_wait_timeout\n",
			wantEvents: []string{"A.reqHeaders", "B.reqHeaders", "A.respHeaders", "A.respBody", "A.done", "B.done"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			var createdC int
			a, b, c := &recSpec{name: "A", rec: rec}, &recSpec{name: "B", rec: rec}, &recSpec{name: "C", rec: rec, created: &createdC}
			tt.b(b)
			env := testEnv()
			cfg := hcm(recFilters(a, b, c), &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "ok")}})
			cfg.StreamIdleTimeout = 10 * time.Second
			if tt.idle != 0 {
				cfg.StreamIdleTimeout = tt.idle
			}
			cm := compileCM(t, env, cfg)
			ss := newFakeStream("/", "")
			serve(t, cm, ss)
			if ss.status() != tt.wantStatus || ss.respBody.String() != tt.wantBody {
				t.Errorf("response %s %q, want %s %q", ss.status(), ss.respBody.String(), tt.wantStatus, tt.wantBody)
			}
			if tt.wantHeader[0] != "" && ss.respHeaders.Value(tt.wantHeader[0]) != tt.wantHeader[1] {
				t.Errorf("%s = %q, want %q", tt.wantHeader[0], ss.respHeaders.Value(tt.wantHeader[0]), tt.wantHeader[1])
			}
			if got := rec.get(); !reflect.DeepEqual(got, tt.wantEvents) {
				t.Errorf("events\n got  %q\n want %q", got, tt.wantEvents)
			}
			if tt.wantStatus != "200" && createdC != 0 {
				t.Errorf("filter C created %d times though the chain stopped before it", createdC)
			}
			if ss.wroteHead != 1 {
				t.Errorf("WriteHeaders called %d times", ss.wroteHead)
			}
		})
	}
}

func TestChainPanicCounted(t *testing.T) {
	rec := &recorder{}
	p := &recSpec{name: "P", rec: rec, reqHeads: func(stream.Callbacks, *header.Map, bool) stream.Status { panic("x") }}
	env := testEnv()
	cm := compileCM(t, env, hcm(recFilters(p), &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "ok")}}))
	serve(t, cm, newFakeStream("/", ""))
	if v := counter(env.Stats, "http.test.filter_error"); v != 1 {
		t.Errorf("filter_error = %v, want 1", v)
	}
	if v := counter(env.Stats, "http.test.downstream_rq_5xx"); v != 1 {
		t.Errorf("downstream_rq_5xx = %v, want 1", v)
	}
}

func TestChainStopAndBufferRequest(t *testing.T) {
	rec := &recorder{}
	type seen struct {
		body string
		end  bool
	}
	var mu sync.Mutex
	bodies := map[string][]seen{}
	bodyHook := func(name string, suffix string) func(stream.Callbacks, *stream.Buffer, bool) stream.Status {
		return func(_ stream.Callbacks, b *stream.Buffer, end bool) stream.Status {
			mu.Lock()
			bodies[name] = append(bodies[name], seen{string(b.Bytes()), end})
			mu.Unlock()
			b.Append([]byte(suffix))
			return stream.Continue
		}
	}
	a := &recSpec{name: "A", rec: rec, reqBody: bodyHook("A", "")}
	b := &recSpec{name: "B", rec: rec, reqBody: bodyHook("B", "-more"),
		reqHeads: func(stream.Callbacks, *header.Map, bool) stream.Status { return stream.StopAndBuffer }}
	c := &recSpec{name: "C", rec: rec, reqBody: bodyHook("C", "")}
	env := testEnv()
	cm := compileCM(t, env, hcm(recFilters(a, b, c), &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "ok")}}))
	ss := newFakeStream("/", "payload")
	serve(t, cm, ss)

	want := map[string][]seen{
		"A": {{"payload", true}},
		"B": {{"payload", true}},
		"C": {{"payload-more", true}},
	}
	if !reflect.DeepEqual(bodies, want) {
		t.Errorf("bodies seen %+v, want %+v", bodies, want)
	}
	if got := ss.req.Value("content-length"); got != "12" {
		t.Errorf("request content-length = %q, want 12 (recomputed after filters)", got)
	}
	wantEvents := []string{"A.reqHeaders", "B.reqHeaders", "A.reqBody", "B.reqBody", "C.reqHeaders", "C.reqBody"}
	if got := rec.get(); len(got) < len(wantEvents) || !reflect.DeepEqual(got[:len(wantEvents)], wantEvents) {
		t.Errorf("events %q, want prefix %q", got, wantEvents)
	}
}

func TestChainStopAndBufferRequestTooLarge(t *testing.T) {
	rec := &recorder{}
	a := &recSpec{name: "A", rec: rec, reqHeads: func(stream.Callbacks, *header.Map, bool) stream.Status { return stream.StopAndBuffer }}
	env := testEnv()
	cm := compileCM(t, env, hcm(recFilters(a), &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "ok")}}))
	cm.bufferLimit = 8
	ss := newFakeStream("/", "0123456789")
	serve(t, cm, ss)
	if ss.status() != "413" || ss.respBody.String() != "payload too large\n" {
		t.Errorf("response %s %q, want 413", ss.status(), ss.respBody.String())
	}
}

func TestChainStopAndBufferResponse(t *testing.T) {
	rec := &recorder{}
	var got []string
	a := &recSpec{name: "A", rec: rec,
		respHeads: func(stream.Callbacks, *header.Map, bool) stream.Status { return stream.StopAndBuffer },
		respBody: func(_ stream.Callbacks, b *stream.Buffer, end bool) stream.Status {
			got = append(got, string(b.Bytes()))
			if !end {
				t.Error("buffered body delivered without endStream")
			}
			b.SetString(strings.ToUpper(string(b.Bytes())) + "!!!")
			return stream.Continue
		}}
	b := &recSpec{name: "B", rec: rec}
	env := testEnv()
	cm := compileCM(t, env, hcm(recFilters(a, b), &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "hello")}}))
	ss := newFakeStream("/", "")
	serve(t, cm, ss)
	if !reflect.DeepEqual(got, []string{"hello"}) {
		t.Errorf("A saw bodies %q, want [hello]", got)
	}
	if ss.respBody.String() != "HELLO!!!" {
		t.Errorf("body = %q, want HELLO!!!", ss.respBody.String())
	}
	if cl := ss.respHeaders.Value("content-length"); cl != "8" {
		t.Errorf("content-length = %q, want 8", cl)
	}
}

func TestChainResponseFilterReplacesReply(t *testing.T) {
	rec := &recorder{}
	a := &recSpec{name: "A", rec: rec}
	b := &recSpec{name: "B", rec: rec, respHeads: func(cb stream.Callbacks, h *header.Map, end bool) stream.Status {
		if h.Value(":status") == "200" {
			cb.SendLocalReply(502, "replaced", nil, "")
			return stream.LocalReply
		}
		return stream.Continue
	}}
	env := testEnv()
	cm := compileCM(t, env, hcm(recFilters(a, b), &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "orig")}}))
	ss := newFakeStream("/", "")
	serve(t, cm, ss)
	if ss.status() != "502" || ss.respBody.String() != "replaced" || ss.wroteHead != 1 {
		t.Errorf("response %s %q (%d heads), want one 502 replaced", ss.status(), ss.respBody.String(), ss.wroteHead)
	}
}

func TestChainRouting(t *testing.T) {
	tests := []struct {
		name       string
		path       string
		hook       func(cb stream.Callbacks, h *header.Map, end bool) stream.Status
		wantStatus string
		wantBody   string
		wantStat   string
	}{
		{name: "route a", path: "/a", wantStatus: "200", wantBody: "A"},
		{name: "no route", path: "/zzz", wantStatus: "404", wantBody: "", wantStat: "http.test.no_route"},
		{name: "unknown cluster", path: "/cluster", wantStatus: "503", wantBody: "cluster_not_found\n", wantStat: "http.test.no_cluster"},
		{
			name: "clear route cache re-picks the route", path: "/a",
			hook: func(cb stream.Callbacks, h *header.Map, end bool) stream.Status {
				h.Set(":path", "/b")
				cb.ClearRouteCache()
				return stream.Continue
			},
			wantStatus: "200", wantBody: "B",
		},
		{
			name: "changing the path without clearing the cache keeps the route", path: "/a",
			hook: func(cb stream.Callbacks, h *header.Map, end bool) stream.Status {
				h.Set(":path", "/b")
				return stream.Continue
			},
			wantStatus: "200", wantBody: "A",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			a := &recSpec{name: "A", rec: rec, reqHeads: tt.hook}
			env := testEnv()
			vh := &config.VirtualHost{Routes: []*config.Route{
				directRoute("ra", "/a", 200, "A"),
				directRoute("rb", "/b", 200, "B"),
				{Name: "rc", Match: config.RouteMatch{Prefix: "/cluster"}, Action: &config.RouteAction{Cluster: "missing"}},
			}}
			cm := compileCM(t, env, hcm(recFilters(a), vh))
			ss := newFakeStream(tt.path, "")
			serve(t, cm, ss)
			if ss.status() != tt.wantStatus || ss.respBody.String() != tt.wantBody {
				t.Errorf("response %s %q, want %s %q", ss.status(), ss.respBody.String(), tt.wantStatus, tt.wantBody)
			}
			if tt.wantStat != "" && counter(env.Stats, tt.wantStat) != 1 {
				t.Errorf("%s = %v, want 1", tt.wantStat, counter(env.Stats, tt.wantStat))
			}
			// The response went back through the filter.
			if ev := rec.get(); !contains(ev, "A.respHeaders") {
				t.Errorf("response did not pass filter A: %q", ev)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestChainPerRouteOverrides(t *testing.T) {
	tests := []struct {
		name         string
		path         string
		disabled     bool // chain-level Disabled
		vhOverride   bool // the virtual host carries a config for F
		wantCreated  int
		wantOverride any
	}{
		{name: "no override", path: "/plain", wantCreated: 1, wantOverride: nil},
		{name: "route config", path: "/route", wantCreated: 1, wantOverride: "route-cfg"},
		{name: "virtual host config", path: "/plain", vhOverride: true, wantCreated: 1, wantOverride: "vh-cfg"},
		{name: "route config beats virtual host config", path: "/route", vhOverride: true, wantCreated: 1, wantOverride: "route-cfg"},
		{name: "route disable beats virtual host config", path: "/off", vhOverride: true, wantCreated: 0},
		{name: "disabled in chain, virtual host config enables", path: "/plain", disabled: true, vhOverride: true, wantCreated: 1, wantOverride: "vh-cfg"},
		{name: "route disables", path: "/off", wantCreated: 0},
		{name: "disabled in chain", path: "/plain", disabled: true, wantCreated: 0},
		{name: "disabled in chain, route enables", path: "/on", disabled: true, wantCreated: 1, wantOverride: nil},
		{name: "route enables, virtual host config applies", path: "/on", disabled: true, vhOverride: true, wantCreated: 1, wantOverride: "vh-cfg"},
		{name: "disabled in chain, route config enables", path: "/route", disabled: true, wantCreated: 1, wantOverride: "route-cfg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			created := 0
			var override any = "unset"
			f := &recSpec{name: "F", rec: rec, created: &created, reqHeads: func(cb stream.Callbacks, _ *header.Map, _ bool) stream.Status {
				override = cb.FilterOverride()
				return stream.Continue
			}}
			filters := recFilters(f)
			filters[0].Disabled = tt.disabled
			r := func(name, prefix string, o map[string]*config.FilterOverride) *config.Route {
				rt := directRoute(name, prefix, 200, name)
				rt.TypedPerFilterConfig = o
				return rt
			}
			vh := &config.VirtualHost{
				Routes: []*config.Route{
					r("plain", "/plain", nil),
					r("route", "/route", map[string]*config.FilterOverride{"F": {Config: "route-cfg"}}),
					r("off", "/off", map[string]*config.FilterOverride{"F": {Disabled: true}}),
					r("on", "/on", map[string]*config.FilterOverride{"F": {}, "not-in-chain": {Config: "x"}}),
				},
			}
			if tt.vhOverride {
				vh.TypedPerFilterConfig = map[string]*config.FilterOverride{"F": {Config: "vh-cfg"}}
			}
			env := testEnv()
			cm := compileCM(t, env, hcm(filters, vh))
			ss := newFakeStream(tt.path, "")
			serve(t, cm, ss)
			if ss.status() != "200" {
				t.Fatalf("status %s", ss.status())
			}
			if created != tt.wantCreated {
				t.Errorf("filter created %d times, want %d", created, tt.wantCreated)
			}
			if tt.wantCreated > 0 && override != tt.wantOverride {
				t.Errorf("FilterOverride = %v, want %v", override, tt.wantOverride)
			}
		})
	}
}

// mergeCompiler is recCompiler whose per-route configs merge
// (stream.PerRouteMerger): "parent+child".
type mergeCompiler struct{ recCompiler }

func (mergeCompiler) MergePerRoute(parent, child any) any {
	return parent.(string) + "+" + child.(string)
}

// A filter whose compiler merges sees its route's config merged over its
// virtual host's; routes without their own config see the virtual host's.
func TestChainPerRouteMerge(t *testing.T) {
	for _, tt := range []struct{ path, want string }{{"/route", "vh-cfg+route-cfg"}, {"/plain", "vh-cfg"}} {
		var override any
		f := &recSpec{name: "F", rec: &recorder{}, reqHeads: func(cb stream.Callbacks, _ *header.Map, _ bool) stream.Status {
			override = cb.FilterOverride()
			return stream.Continue
		}}
		filters := recFilters(f)
		filters[0].TypeURL = "merging"
		routeCfg := directRoute("route", "/route", 200, "r")
		routeCfg.TypedPerFilterConfig = map[string]*config.FilterOverride{"F": {Config: "route-cfg"}}
		vh := &config.VirtualHost{
			Routes:               []*config.Route{routeCfg, directRoute("plain", "/plain", 200, "p")},
			TypedPerFilterConfig: map[string]*config.FilterOverride{"F": {Config: "vh-cfg"}},
		}
		env := testEnv()
		env.Registry.RegisterFilter(mergeCompiler{}, "merging")
		cm := compileCM(t, env, hcm(filters, vh))
		ss := newFakeStream(tt.path, "")
		serve(t, cm, ss)
		if override != tt.want {
			t.Errorf("%s: FilterOverride = %v, want %v", tt.path, override, tt.want)
		}
	}
}

func TestCompileConnectionManagerErrors(t *testing.T) {
	vh := func() *config.VirtualHost {
		return &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "")}}
	}
	rec := &recorder{}
	ok := &recSpec{name: "ok", rec: rec}
	tests := []struct {
		name    string
		cfg     func() *config.HTTPConnectionManager
		wantErr string
	}{
		{"valid", func() *config.HTTPConnectionManager { return hcm(recFilters(ok), vh()) }, ""},
		{"unknown filter type", func() *config.HTTPConnectionManager {
			return hcm([]*config.HTTPFilter{{Name: "f0", TypeURL: recType, Config: ok}, {Name: "mystery", TypeURL: "type.example/Unknown"}}, vh())
		}, `http filter 1 (mystery): unknown filter type "type.example/Unknown"`},
		{"optional unknown filter skipped", func() *config.HTTPConnectionManager {
			return hcm([]*config.HTTPFilter{{Name: "mystery", TypeURL: "type.example/Unknown", Optional: true}}, vh())
		}, ""},
		{"filter compile error", func() *config.HTTPConnectionManager {
			return hcm([]*config.HTTPFilter{{Name: "f0", TypeURL: recType, Config: ok}, {Name: "broken", TypeURL: recType, Config: 42}}, vh())
		}, "http filter 1 (broken): bad filter config"},
		{"duplicate filter name", func() *config.HTTPConnectionManager {
			return hcm([]*config.HTTPFilter{{Name: "x", TypeURL: recType, Config: ok}, {Name: "x", TypeURL: recType, Config: ok}}, vh())
		}, `duplicate filter name "x"`},
		{"per-route config error", func() *config.HTTPConnectionManager {
			v := vh()
			v.Routes[0].TypedPerFilterConfig = map[string]*config.FilterOverride{"ok": {Config: "bad"}}
			return hcm(recFilters(ok), v)
		}, `per-route config of filter "ok": bad filter config`},
		{"unknown codec", func() *config.HTTPConnectionManager {
			c := hcm(nil, vh())
			c.Codec = config.CodecHTTP2
			return c
		}, `codec "http2"`},
		{"no route configuration", func() *config.HTTPConnectionManager {
			return &config.HTTPConnectionManager{StatPrefix: "p"}
		}, "has no route configuration"},
		{"unknown RDS name", func() *config.HTTPConnectionManager {
			return &config.HTTPConnectionManager{RDSName: "nope"}
		}, `route configuration "nope" not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cm, err := CompileConnectionManager(testEnv(), tt.cfg(), nil, nil)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr == "" && cm == nil:
				t.Error("nil manager without error")
			case tt.wantErr != "" && err == nil:
				t.Errorf("compiled; want error containing %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Errorf("error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestPrepareRequest(t *testing.T) {
	tests := []struct {
		name      string
		cfg       func(*config.HTTPConnectionManager)
		in        []string
		wantXFF   string
		wantProto string
		wantID    func(string) bool
	}{
		{
			name:      "defaults: no xff, proto set, id passed through",
			cfg:       func(*config.HTTPConnectionManager) {},
			in:        []string{"x-request-id", "abc"},
			wantXFF:   "",
			wantProto: "http",
			wantID:    func(id string) bool { return id == "abc" },
		},
		{
			name:      "use remote address appends unmapped client ip",
			cfg:       func(c *config.HTTPConnectionManager) { c.UseRemoteAddress = true },
			in:        []string{"x-forwarded-for", "1.1.1.1", "x-forwarded-proto", "https"},
			wantXFF:   "1.1.1.1, 192.0.2.9",
			wantProto: "http",
			wantID:    func(id string) bool { return id == "" },
		},
		{
			name:      "skip xff append",
			cfg:       func(c *config.HTTPConnectionManager) { c.UseRemoteAddress, c.SkipXFFAppend = true, true },
			in:        []string{"x-forwarded-for", "1.1.1.1"},
			wantXFF:   "1.1.1.1",
			wantProto: "http",
			wantID:    func(id string) bool { return id == "" },
		},
		{
			name:      "trusted proto kept without use remote address",
			cfg:       func(*config.HTTPConnectionManager) {},
			in:        []string{"x-forwarded-proto", "https"},
			wantProto: "https",
			wantID:    func(id string) bool { return id == "" },
		},
		{
			name:      "generate request id when absent",
			cfg:       func(c *config.HTTPConnectionManager) { c.GenerateRequestID = true },
			wantProto: "http",
			wantID:    func(id string) bool { return len(id) == 36 && id[14] == '4' },
		},
		{
			name:      "keep internal request id",
			cfg:       func(c *config.HTTPConnectionManager) { c.GenerateRequestID = true },
			in:        []string{"x-request-id", "mine"},
			wantProto: "http",
			wantID:    func(id string) bool { return id == "mine" },
		},
		{
			name:      "edge replaces external request id",
			cfg:       func(c *config.HTTPConnectionManager) { c.GenerateRequestID, c.UseRemoteAddress = true, true },
			in:        []string{"x-request-id", "mine"},
			wantXFF:   "192.0.2.9",
			wantProto: "http",
			wantID:    func(id string) bool { return id != "mine" && len(id) == 36 },
		},
		{
			name: "edge preserves external request id when asked",
			cfg: func(c *config.HTTPConnectionManager) {
				c.GenerateRequestID, c.UseRemoteAddress, c.PreserveExternalRequestID = true, true, true
			},
			in:        []string{"x-request-id", "mine"},
			wantXFF:   "192.0.2.9",
			wantProto: "http",
			wantID:    func(id string) bool { return id == "mine" },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := hcm(nil, &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "")}})
			tt.cfg(cfg)
			cm := compileCM(t, testEnv(), cfg)
			ss := newFakeStream("/", "")
			for i := 0; i+1 < len(tt.in); i += 2 {
				ss.req.Add(tt.in[i], tt.in[i+1])
			}
			ss.req.Add("expect", "100-continue")
			ss.req.Add("connection", "keep-alive")
			s := newActiveStream()
			s.init(cm, ss)
			s.prepareRequest()
			if got := ss.req.Value("x-forwarded-for"); got != tt.wantXFF {
				t.Errorf("x-forwarded-for = %q, want %q", got, tt.wantXFF)
			}
			if got := ss.req.Value("x-forwarded-proto"); got != tt.wantProto {
				t.Errorf("x-forwarded-proto = %q, want %q", got, tt.wantProto)
			}
			if !tt.wantID(s.RequestID()) || ss.req.Value("x-request-id") != s.RequestID() {
				t.Errorf("request id %q (header %q)", s.RequestID(), ss.req.Value("x-request-id"))
			}
			if ss.req.Has("expect") || ss.req.Has("connection") {
				t.Error("expect or connection not removed")
			}
		})
	}
}

// A filter that waited too long may still get its asynchronous answer
// later (an HTTP call completing after the stream idle timeout). That late
// Resume or SendLocalReply must not reach the next stream that reuses the
// pooled activeStream.
func TestChainLateAsyncReplyDoesNotLeakIntoNextStream(t *testing.T) {
	rec := &recorder{}
	var mu sync.Mutex
	var cbs []stream.Callbacks
	w := &recSpec{name: "W", rec: rec, reqHeads: func(cb stream.Callbacks, h *header.Map, _ bool) stream.Status {
		mu.Lock()
		cbs = append(cbs, cb)
		mu.Unlock()
		if h.Value("x-answer") == "now" {
			// The asynchronous work finished before the filter even
			// returned: the resume token waits in the stream.
			cb.Resume()
		}
		return stream.StopAndWait
	}}
	cfg := hcm(recFilters(w), &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/", 200, "ok")}})
	cfg.StreamIdleTimeout = 20 * time.Millisecond
	cm := compileCM(t, testEnv(), cfg)
	for i := range 10 {
		// First stream: nobody answers in time.
		first := newFakeStream("/", "")
		serve(t, cm, first)
		if first.status() != "504" {
			t.Fatalf("round %d: first stream got %s %q, want 504: an earlier stream's late reply leaked into it", i, first.status(), first.respBody.String())
		}
		mu.Lock()
		late := cbs[len(cbs)-1]
		mu.Unlock()
		// The answer arrives after the stream ended.
		late.SendLocalReply(418, "stale", nil, "late")

		// Second stream: answered in time.
		second := newFakeStream("/", "")
		second.req.Add("x-answer", "now")
		serve(t, cm, second)
		if second.status() != "200" || second.respBody.String() != "ok" {
			t.Fatalf("round %d: second stream got %s %q, want 200 \"ok\": the first stream's late reply leaked into it",
				i, second.status(), second.respBody.String())
		}
	}
}

// The connection manager's server name overwrites the server header of
// every response after the response filters, local replies included (as
// Envoy's server_name with server_header_transformation OVERWRITE, its
// default); without one the header is left alone.
func TestServerHeader(t *testing.T) {
	rec := &recorder{}
	a := &recSpec{name: "A", rec: rec, respHeads: func(_ stream.Callbacks, h *header.Map, _ bool) stream.Status {
		h.Set("server", "from-a-filter")
		return stream.Continue
	}}
	for _, tt := range []struct {
		name, server, path, want string
	}{
		{"direct response", "istio-envoy", "/d", "istio-envoy"},
		{"no route", "istio-envoy", "/none", "istio-envoy"},
		{"no server name", "", "/d", "from-a-filter"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := hcm(recFilters(a), &config.VirtualHost{Routes: []*config.Route{directRoute("d", "/d", 200, "hi")}})
			cfg.ServerName = tt.server
			ss := newFakeStream(tt.path, "")
			serve(t, compileCM(t, testEnv(), cfg), ss)
			if got := ss.respHeaders.Values(nil, "server"); len(got) != 1 || got[0] != tt.want {
				t.Errorf("server %q, want %q", got, tt.want)
			}
		})
	}
}
