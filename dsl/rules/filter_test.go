package rules

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/dsl/expr"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

var env = func() *expr.Env {
	e, err := expr.NewEnv(expr.WithCostLimit(5000))
	if err != nil {
		panic(err)
	}
	return e
}()

func prog(t testing.TB, src string, want expr.Type) *expr.Program {
	t.Helper()
	p, err := env.Compile(src, want)
	if err != nil {
		t.Fatalf("compile %q: %v", src, err)
	}
	return p
}

// fakeStream is a stream.Callbacks that records local replies.
type fakeStream struct {
	req, resp header.Map
	code      int
	remote    netip.AddrPort
	override  any
	replies   []fakeReply
}

type fakeReply struct {
	status  int
	body    string
	headers []header.Field
	details string
}

func (f *fakeStream) RequestHeaders() *header.Map      { return &f.req }
func (f *fakeStream) ResponseHeaders() *header.Map     { return &f.resp }
func (f *fakeStream) ResponseTrailers() *header.Map    { return nil }
func (f *fakeStream) ResponseCode() int                { return f.code }
func (f *fakeStream) RequestID() string                { return "rid-1" }
func (f *fakeStream) StartTime() time.Time             { return time.Time{} }
func (f *fakeStream) Protocol() string                 { return "HTTP/1.1" }
func (f *fakeStream) DownstreamRemote() netip.AddrPort { return f.remote }
func (f *fakeStream) DownstreamLocal() netip.AddrPort  { return netip.AddrPort{} }
func (f *fakeStream) TLS() *tls.ConnectionState        { return nil }
func (f *fakeStream) UpstreamAddress() string          { return "" }
func (f *fakeStream) RouteName() string                { return "" }
func (f *fakeStream) ClusterName() string              { return "" }
func (f *fakeStream) RequestBodySize() int64           { return 0 }
func (f *fakeStream) ResponseBodySize() int64          { return 0 }
func (f *fakeStream) Context() context.Context         { return context.Background() }
func (f *fakeStream) Resume()                          {}
func (f *fakeStream) ClearRouteCache()                 {}
func (f *fakeStream) FilterOverride() any              { return f.override }
func (f *fakeStream) StreamID() uint64                 { return 7 }
func (f *fakeStream) SendLocalReply(status int, body string, hs []header.Field, details string) {
	f.replies = append(f.replies, fakeReply{status, body, hs, details})
}

var _ stream.Callbacks = (*fakeStream)(nil)

func newStream(path string, kv ...string) *fakeStream {
	f := &fakeStream{remote: netip.MustParseAddrPort("10.1.2.3:5555")}
	f.req.Add(":method", "GET")
	f.req.Add(":path", path)
	f.req.Add(":authority", "example.com")
	f.req.Add(":scheme", "http")
	for i := 0; i+1 < len(kv); i += 2 {
		f.req.Add(kv[i], kv[i+1])
	}
	return f
}

func pairs(h *header.Map) []string {
	var out []string
	for _, f := range h.Fields() {
		out = append(out, f.Name+": "+f.Value)
	}
	return out
}

func mustFactory(t testing.TB, c *Config) stream.Factory {
	t.Helper()
	f, err := Compiler{}.Compile(c)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mustRoute(t testing.TB, acts ...Action) any {
	t.Helper()
	o, err := Compiler{}.CompilePerRoute(&RouteActions{Route: "r", Actions: acts})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func hdr(op HeaderOp, resp bool, name, value string, t testing.TB) *Header {
	h := &Header{Src: Src{Where: "t:1:1"}, Op: op, Response: resp, Name: name}
	if value != "" {
		h.Value = prog(t, value, expr.String)
	}
	return h
}

func TestHeaderActions(t *testing.T) {
	fac := mustFactory(t, &Config{Request: []*Block{
		{Where: "t:1:1", When: prog(t, `request.headers["x-debug"] == "1"`, expr.Bool), Actions: []Action{
			hdr(Set, false, "x-echo", `request.id + "/" + source.address`, t),
		}},
		{Where: "t:2:1", Actions: []Action{
			hdr(Add, false, "x-multi", `"b"`, t),
			hdr(Remove, false, "cookie", "", t),
			hdr(Set, true, "x-resp", `"from-request:" + request.path`, t),
		}},
	}, Response: []*Block{
		{Where: "t:3:1", When: prog(t, `response.code >= 500`, expr.Bool), Actions: []Action{
			hdr(Set, true, "x-upstream-error", `"true"`, t),
			hdr(Remove, true, "server", "", t),
		}},
	}})
	s := newStream("/p", "x-debug", "1", "x-multi", "a", "Cookie", "c=1")
	s.override = mustRoute(t, hdr(Set, false, "x-route", `"r"`, t), hdr(Add, true, "x-route-resp", `string(response.code)`, t))
	f := fac.NewFilter(s)
	if st := f.OnRequestHeaders(&s.req, true); st != stream.Continue {
		t.Fatalf("status %v, replies %+v", st, s.replies)
	}
	want := []string{":method: GET", ":path: /p", ":authority: example.com", ":scheme: http", "x-debug: 1", "x-multi: a",
		"x-echo: rid-1/10.1.2.3", "x-multi: b", "x-route: r"}
	if got := pairs(&s.req); !reflect.DeepEqual(got, want) {
		t.Errorf("request:\n got %q\nwant %q", got, want)
	}
	// The engine has not recorded the code when response filters run:
	// response.code comes from :status.
	s.resp.Add(":status", "503")
	s.resp.Add("server", "up")
	if st := f.OnResponseHeaders(&s.resp, true); st != stream.Continue {
		t.Fatal(st)
	}
	want = []string{":status: 503", "x-route-resp: 503", "x-resp: from-request:/p", "x-upstream-error: true"}
	if got := pairs(&s.resp); !reflect.DeepEqual(got, want) {
		t.Errorf("response:\n got %q\nwant %q", got, want)
	}
	// Without x-debug (a missing key in `when`: false), with a 200.
	s = newStream("/p")
	f = fac.NewFilter(s)
	f.OnRequestHeaders(&s.req, true)
	if s.req.Has("x-echo") || len(s.replies) > 0 {
		t.Errorf("block ran without x-debug: %q %+v", pairs(&s.req), s.replies)
	}
	s.resp.Add(":status", "200")
	f.OnResponseHeaders(&s.resp, true)
	if got := pairs(&s.resp); !reflect.DeepEqual(got, []string{":status: 200", "x-resp: from-request:/p"}) {
		t.Errorf("response: %q", got)
	}
}

func TestLocalReplies(t *testing.T) {
	onResp := []*Block{{Where: "t:9:1", Actions: []Action{hdr(Set, true, "x-seen", `string(response.code)`, t)}}}
	for _, tc := range []struct {
		name  string
		cfg   *Config
		route []Action
		want  fakeReply
	}{
		{"respond in on request", &Config{Request: []*Block{{Where: "t:1:1", Actions: []Action{
			&Respond{Src: Src{Where: "t:1:2"}, Code: 418, Body: prog(t, `"teapot " + request.path`, expr.String)},
			hdr(Set, false, "x-never", `"x"`, t),
		}}}, Response: onResp}, nil,
			fakeReply{418, "teapot /p", []header.Field{{Name: "x-seen", Value: "418"}}, "sluice_respond"}},
		{"deny", &Config{Request: []*Block{{Where: "t:1:1", Actions: []Action{&Respond{Code: 403, Literal: "forbidden\n"}}}}}, nil,
			fakeReply{403, "forbidden\n", nil, "sluice_respond"}},
		{"redirect", &Config{Response: onResp}, []Action{&Redirect{Code: 302, Location: prog(t, `"https://" + request.host + request.path`, expr.String)}},
			fakeReply{302, "", []header.Field{{Name: "location", Value: "https://example.com/p"}, {Name: "x-seen", Value: "302"}}, "sluice_redirect"}},
		{"abort percent 100", &Config{}, []Action{&Abort{Code: 503, Percent: 100}},
			fakeReply{503, "fault filter abort\n", nil, "sluice_fault_abort"}},
		{"deferred response header of on request", &Config{Request: []*Block{{Where: "t:1:1", Actions: []Action{
			hdr(Set, true, "x-from-on", `"1"`, t),
		}}}}, []Action{&Respond{Code: 404, Body: prog(t, `"no " + request.path`, expr.String)}},
			fakeReply{404, "no /p", []header.Field{{Name: "x-from-on", Value: "1"}}, "sluice_respond"}},
		{"CEL runtime error", &Config{Request: []*Block{{Where: "t:1:1", Actions: []Action{
			hdr(Set, false, "x", `request.headers["missing"]`, t),
		}}}, Response: onResp}, nil,
			fakeReply{500, "rule evaluation failed\n", nil, "sluice_rules_error"}},
		{"cost overrun", &Config{Request: []*Block{{Where: "t:1:1",
			When: prog(t, `[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, request.path.size() + a + b + c > 0)))`, expr.Bool)}}}, nil,
			fakeReply{500, "rule evaluation failed\n", nil, "sluice_rules_cost_limit"}},
		{"header value with a line break", &Config{}, []Action{hdr(Set, false, "x", `"a\nb"`, t)},
			fakeReply{500, "rule evaluation failed\n", nil, "sluice_rules_error"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			tc.cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			fac := mustFactory(t, tc.cfg)
			s := newStream("/p")
			if tc.route != nil {
				s.override = mustRoute(t, tc.route...)
			}
			f := fac.NewFilter(s)
			if st := f.OnRequestHeaders(&s.req, true); st != stream.LocalReply {
				t.Fatalf("status %v", st)
			}
			if len(s.replies) != 1 || !reflect.DeepEqual(s.replies[0], tc.want) {
				t.Fatalf("replies %+v, want %+v", s.replies, tc.want)
			}
			if s.req.Has("x-never") {
				t.Error("an action after the reply ran")
			}
			// The engine does not run this filter's response side for its
			// own reply; if it did, nothing would change twice.
			var h header.Map
			h.Add(":status", "418")
			if f.OnResponseHeaders(&h, true) != stream.Continue || h.Len() != 1 {
				t.Errorf("own reply filtered twice: %q", pairs(&h))
			}
			if tc.want.status == 500 {
				if !strings.Contains(logs.String(), "sluice rules: request failed") || !strings.Contains(logs.String(), "stream=7") {
					t.Errorf("log: %s", logs.String())
				}
			} else if logs.Len() > 0 {
				t.Errorf("unexpected log: %s", logs.String())
			}
		})
	}
}

func TestRewrite(t *testing.T) {
	fac := mustFactory(t, &Config{})
	s := newStream("/old?q=1")
	s.override = mustRoute(t,
		&Rewrite{Value: prog(t, `"/new" + request.path`, expr.String)},
		&Rewrite{Host: true, Value: prog(t, `"backend.internal"`, expr.String)},
	)
	if st := fac.NewFilter(s).OnRequestHeaders(&s.req, true); st != stream.Continue {
		t.Fatal(st, s.replies)
	}
	if p, a := s.req.Value(":path"), s.req.Value(":authority"); p != "/new/old?q=1" || a != "backend.internal" {
		t.Errorf("path %q authority %q", p, a)
	}
	s = newStream("/old")
	s.override = mustRoute(t, &Rewrite{Value: prog(t, `"relative"`, expr.String)})
	if st := fac.NewFilter(s).OnRequestHeaders(&s.req, true); st != stream.LocalReply || s.replies[0].status != 500 {
		t.Errorf("relative rewrite: %v %+v", st, s.replies)
	}
}

func TestRateLimit(t *testing.T) {
	fac := mustFactory(t, &Config{})
	route := mustRoute(t, &RateLimit{Count: 2, Per: time.Hour, By: prog(t, `request.headers["x-key"]`, expr.String)})
	run := func(kv ...string) *fakeStream {
		s := newStream("/", kv...)
		s.override = route
		fac.NewFilter(s).OnRequestHeaders(&s.req, true)
		return s
	}
	for i := range 2 {
		if s := run("x-key", "a"); len(s.replies) != 0 {
			t.Fatalf("request %d limited: %+v", i, s.replies)
		}
	}
	s := run("x-key", "a")
	if len(s.replies) != 1 || s.replies[0].status != 429 {
		t.Fatalf("third request: %+v", s.replies)
	}
	want := []header.Field{{Name: "x-ratelimit-limit", Value: "2;w=3600"}, {Name: "x-ratelimit-remaining", Value: "0"},
		{Name: "x-ratelimit-reset", Value: "1800"}, {Name: "retry-after", Value: "1800"}}
	if !reflect.DeepEqual(s.replies[0].headers, want) {
		t.Errorf("429 headers %+v", s.replies[0].headers)
	}
	// Another key has its own bucket; a missing key shares the "" bucket.
	if s := run("x-key", "b"); len(s.replies) != 0 {
		t.Errorf("key b limited")
	}
	run()
	run()
	if s := run(); len(s.replies) != 1 || s.replies[0].status != 429 {
		t.Errorf("keyless: %+v", s.replies)
	}
}

func TestLimiterRefillAndCap(t *testing.T) {
	l := newLimiter(1, 20*time.Millisecond, 32)
	if ok, _ := l.take("k"); !ok {
		t.Fatal("first")
	}
	if ok, wait := l.take("k"); ok || wait <= 0 || wait > 20*time.Millisecond {
		t.Fatalf("second: %v %v", ok, wait)
	}
	time.Sleep(25 * time.Millisecond)
	if ok, _ := l.take("k"); !ok {
		t.Fatal("refilled")
	}
	for i := range 1000 {
		l.take(fmt.Sprint(i))
	}
	if n := l.keys(); n > 32 {
		t.Errorf("%d buckets, cap 32", n)
	}
}

// Many streams share buckets safely (run with -race); exactly the burst
// gets through.
func TestLimiterConcurrent(t *testing.T) {
	l := newLimiter(100, time.Hour, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				ok, _ := l.take([]string{"a", "b"}[(g+i)%2])
				if ok {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if allowed != 200 {
		t.Errorf("allowed %d, want 200 (2 keys × burst 100)", allowed)
	}
}

func TestDelay(t *testing.T) {
	fac := mustFactory(t, &Config{})
	s := newStream("/")
	s.override = mustRoute(t, &Delay{Duration: 30 * time.Millisecond, Percent: 100}, &Delay{Duration: time.Hour, Percent: 0})
	start := time.Now()
	if st := fac.NewFilter(s).OnRequestHeaders(&s.req, true); st != stream.Continue {
		t.Fatal(st)
	}
	if d := time.Since(start); d < 30*time.Millisecond || d > 10*time.Second {
		t.Errorf("delayed %v", d)
	}
}

// tracer records a dry run.
type tracer struct {
	fakeStream
	events []Event
}

func (tr *tracer) Trace(e Event)       { tr.events = append(tr.events, e) }
func (tr *tracer) Roll(p float64) bool { return p >= 100 }

func TestTrace(t *testing.T) {
	fac := mustFactory(t, &Config{Request: []*Block{
		{Where: "t:1:1", Text: "on request when false", When: prog(t, `request.method == "POST"`, expr.Bool)},
		{Where: "t:2:1", Text: "on request", Actions: []Action{
			&Delay{Src: Src{Where: "t:3:1", Text: "delay 1h"}, Duration: time.Hour, Percent: 100},
			&Abort{Src: Src{Where: "t:4:1"}, Code: 500, Percent: 10},
		}},
	}})
	tr := &tracer{fakeStream: *newStream("/")}
	start := time.Now()
	fac.NewFilter(tr).OnRequestHeaders(&tr.req, true)
	if time.Since(start) > time.Second {
		t.Error("a traced delay waited")
	}
	var got []string
	for _, e := range tr.events {
		got = append(got, fmt.Sprintf("%d %s %s %s", e.Kind, e.Where, e.Text, e.Note))
	}
	want := []string{
		"0 t:1:1 on request when false ",
		"1 t:2:1 on request ",
		"2 t:3:1 delay 1h waits 1h0m0s",
		"3 t:4:1 abort 500 percent 10 ",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestCompileRejects(t *testing.T) {
	for _, cfg := range []any{nil, (*Config)(nil), &RouteActions{}} {
		if _, err := (Compiler{}).Compile(cfg); err == nil {
			t.Errorf("Compile(%T) accepted", cfg)
		}
	}
	if _, err := (Compiler{}).CompilePerRoute(&Config{}); err == nil {
		t.Error("CompilePerRoute(*Config) accepted")
	}
	for _, a := range []Action{
		&Header{Op: Set, Name: "bad name", Value: prog(t, `"x"`, expr.String)},
		&Header{Op: Set, Name: ":path", Value: prog(t, `"x"`, expr.String)},
		&Header{Op: Set, Name: "x"},
		&RateLimit{Count: 0, Per: time.Second},
		&Respond{Code: 100},
		&Redirect{Code: 302},
	} {
		if _, err := (Compiler{}).CompilePerRoute(&RouteActions{Actions: []Action{a}}); err == nil {
			t.Errorf("%T %+v accepted", a, a)
		}
	}
	if _, err := (Compiler{}).Compile(&Config{Response: []*Block{{Actions: []Action{hdr(Set, false, "x", `"1"`, t)}}}}); err == nil {
		t.Error("request header action in on response accepted")
	}
}

func BenchmarkOnRequest(b *testing.B) {
	fac := mustFactory(b, &Config{Request: []*Block{
		{Where: "t:1:1", When: prog(b, `request.headers["x-debug"] == "1"`, expr.Bool), Actions: []Action{
			hdr(Set, false, "x-echo", `request.id`, b),
		}},
		{Where: "t:2:1", When: prog(b, `request.path.startsWith("/api/")`, expr.Bool), Actions: []Action{
			hdr(Set, false, "x-api", `"1"`, b),
		}},
	}})
	s := newStream("/api/users", "x-debug", "1")
	b.ReportAllocs()
	for b.Loop() {
		f := fac.NewFilter(s)
		if f.OnRequestHeaders(&s.req, true) != stream.Continue {
			b.Fatal(s.replies)
		}
	}
}

func (*fakeStream) HTTPCall(context.Context, string, *header.Map, []byte, time.Duration) (*stream.HTTPResponse, error) {
	return nil, errors.New("no calls in this test")
}
func (*fakeStream) DynamicMetadata() *stream.Metadata   { return &stream.Metadata{} }
func (*fakeStream) FilterState() *stream.Metadata       { return &stream.Metadata{} }
func (*fakeStream) RouteMetadata(string) map[string]any { return nil }
func (*fakeStream) Logger() *slog.Logger                { return slog.New(slog.DiscardHandler) }
