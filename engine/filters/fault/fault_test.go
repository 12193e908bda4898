package fault

import (
	"context"
	"errors"
	"github.com/sluice-proxy/sluice/engine/filters/envoymatch"
	"strings"
	"sync"
	"testing"
	"time"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeStream implements the callbacks the filter uses; the embedded nil
// interface panics on anything else.
type fakeStream struct {
	stream.Callbacks
	ctx      context.Context
	override any

	replied bool
	status  int
	body    string
	headers []header.Field
	details string
}

func (f *fakeStream) Context() context.Context {
	if f.ctx == nil {
		return context.Background()
	}
	return f.ctx
}
func (f *fakeStream) FilterOverride() any { return f.override }
func (f *fakeStream) SendLocalReply(status int, body string, h []header.Field, details string) {
	f.replied, f.status, f.body, f.headers, f.details = true, status, body, h, details
}

func parse(t testing.TB, src string) *faultv3.HTTPFault {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	m := &faultv3.HTTPFault{}
	if err := protojson.Unmarshal(js, m); err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	return m
}

func request(kv ...string) *header.Map {
	h := &header.Map{}
	h.Add(":method", "GET")
	h.Add(":path", "/")
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// fixedRand returns v % n: the draw "hits" when v%n < numerator.
func fixedRand(v uint64) func(uint64) uint64 { return func(n uint64) uint64 { return v % n } }

type result struct {
	status  stream.Status
	code    int
	body    string
	grpc    string
	delayed bool
}

func run(t *testing.T, c Compiler, filterCfg, routeCfg string, h *header.Map) (result, *observe.Store) {
	t.Helper()
	st := observe.NewStore()
	c.Stats = st
	f, err := c.CompileScoped(parse(t, filterCfg), stream.CompileScope{StatPrefix: "inbound"})
	if err != nil {
		t.Fatal(err)
	}
	fs := &fakeStream{}
	if routeCfg != "" {
		if fs.override, err = c.CompilePerRoute(parse(t, routeCfg)); err != nil {
			t.Fatal(err)
		}
	}
	flt := f.NewFilter(fs)
	start := time.Now()
	r := result{status: flt.OnRequestHeaders(h, true)}
	r.delayed = time.Since(start) >= 20*time.Millisecond
	flt.OnDone()
	if fs.replied {
		r.code, r.body = fs.status, fs.body
		for _, f := range fs.headers {
			if f.Name == "grpc-status" {
				r.grpc = f.Value
			}
		}
	}
	return r, st
}

func TestFaults(t *testing.T) {
	const abort503 = "abort: { http_status: 503, percentage: { numerator: 100 } }"
	tests := []struct {
		name           string
		rand           uint64
		filter, route  string
		headers        []string
		want           result
		aborts, delays string
	}{
		{name: "abort 100%", filter: abort503,
			want: result{status: stream.LocalReply, code: 503, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "abort without percentage is 100%", filter: "abort: { http_status: 418 }",
			want: result{status: stream.LocalReply, code: 418, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "abort 0%", filter: "abort: { http_status: 503, percentage: { numerator: 0 } }",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "abort custom body", filter: "abort: { http_status: 500, response_body: oops }",
			want: result{status: stream.LocalReply, code: 500, body: "oops"}, aborts: "1", delays: "0"},
		{name: "50% hit", rand: 49, filter: "abort: { http_status: 503, percentage: { numerator: 50 } }",
			want: result{status: stream.LocalReply, code: 503, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "50% miss", rand: 50, filter: "abort: { http_status: 503, percentage: { numerator: 50 } }",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "ten thousand hit", rand: 2, filter: "abort: { http_status: 503, percentage: { numerator: 3, denominator: TEN_THOUSAND } }",
			want: result{status: stream.LocalReply, code: 503, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "ten thousand miss", rand: 3, filter: "abort: { http_status: 503, percentage: { numerator: 3, denominator: TEN_THOUSAND } }",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "million hit", rand: 999_998, filter: "abort: { http_status: 503, percentage: { numerator: 999999, denominator: MILLION } }",
			want: result{status: stream.LocalReply, code: 503, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "million miss", rand: 999_999, filter: "abort: { http_status: 503, percentage: { numerator: 999999, denominator: MILLION } }",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "grpc status on a gRPC request", filter: "abort: { grpc_status: 14 }", headers: []string{"content-type", "application/grpc"},
			want: result{status: stream.LocalReply, code: 200, body: AbortBody, grpc: "14"}, aborts: "1", delays: "0"},
		{name: "grpc status on plain HTTP", filter: "abort: { grpc_status: 14 }",
			want: result{status: stream.LocalReply, code: 200, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "header abort", filter: "abort: { header_abort: {} }", headers: []string{HeaderAbort, "429"},
			want: result{status: stream.LocalReply, code: 429, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "header abort grpc", filter: "abort: { header_abort: {} }", headers: []string{HeaderAbortGRPC, "8", "content-type", "application/grpc+proto"},
			want: result{status: stream.LocalReply, code: 200, body: AbortBody, grpc: "8"}, aborts: "1", delays: "0"},
		{name: "header abort without header", filter: "abort: { header_abort: {} }",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "header abort invalid status", filter: "abort: { header_abort: {} }", headers: []string{HeaderAbort, "99"},
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "percentage header lowers", rand: 10, filter: abort503, headers: []string{HeaderAbortPercentage, "10"},
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "percentage header lowers the default 100/HUNDRED", rand: 10, filter: "abort: { http_status: 503 }", headers: []string{HeaderAbortPercentage, "10"},
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "percentage header under the default", rand: 9, filter: "abort: { http_status: 503 }", headers: []string{HeaderAbortPercentage, "10"},
			want: result{status: stream.LocalReply, code: 503, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "header matcher matches", filter: abort503 + "\nheaders: [{ name: x-user, string_match: { exact: jason } }]",
			headers: []string{"x-user", "jason"},
			want:    result{status: stream.LocalReply, code: 503, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "header matcher does not match", filter: abort503 + "\nheaders: [{ name: x-user, string_match: { exact: jason } }]",
			headers: []string{"x-user", "other"},
			want:    result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "fixed delay", filter: "delay: { fixed_delay: 0.03s, percentage: { numerator: 100 } }",
			want: result{status: stream.Continue, delayed: true}, aborts: "0", delays: "1"},
		{name: "delay 0%", filter: "delay: { fixed_delay: 0.03s, percentage: { numerator: 0 } }",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "header delay", filter: "delay: { header_delay: {} }", headers: []string{HeaderDelay, "30"},
			want: result{status: stream.Continue, delayed: true}, aborts: "0", delays: "1"},
		{name: "header delay without header", filter: "delay: { header_delay: {} }",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "delay then abort", filter: "delay: { fixed_delay: 0.03s }\n" + abort503,
			want: result{status: stream.LocalReply, code: 503, body: AbortBody, delayed: true}, aborts: "1", delays: "1"},
		{name: "empty filter does nothing", filter: "{}",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "route config replaces empty filter", filter: "{}", route: abort503,
			want: result{status: stream.LocalReply, code: 503, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "route config replaces filter config", filter: abort503, route: "abort: { http_status: 404 }",
			want: result{status: stream.LocalReply, code: 404, body: AbortBody}, aborts: "1", delays: "0"},
		{name: "empty route config turns it off", filter: abort503, route: "{}",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
		{name: "max_active_faults 0", filter: abort503 + "\nmax_active_faults: 0",
			want: result{status: stream.Continue}, aborts: "0", delays: "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, st := run(t, Compiler{Rand: fixedRand(tt.rand)}, tt.filter, tt.route, request(tt.headers...))
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			var b strings.Builder
			observe.WriteText(&b, st, nil, false)
			for _, line := range []string{"http.inbound.fault.aborts_injected: " + tt.aborts, "http.inbound.fault.delays_injected: " + tt.delays, "http.inbound.fault.active_faults: 0"} {
				if !strings.Contains(b.String(), line+"\n") {
					t.Errorf("stats lack %q:\n%s", line, b.String())
				}
			}
		})
	}
}

// The delay ends when the stream's context does.
func TestDelayCancelled(t *testing.T) {
	f, err := Compiler{}.Compile(parse(t, "delay: { fixed_delay: 3600s }"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fs := &fakeStream{ctx: ctx}
	flt := f.NewFilter(fs)
	time.AfterFunc(20*time.Millisecond, cancel)
	done := make(chan stream.Status)
	go func() { done <- flt.OnRequestHeaders(request(), true) }()
	select {
	case st := <-done:
		if st != stream.LocalReply || !fs.replied {
			t.Errorf("status %v, replied %v", st, fs.replied)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the delay did not end with its stream")
	}
	flt.OnDone()
	if n := f.(*factory).active.Load(); n != 0 {
		t.Errorf("active faults %d after the stream", n)
	}
}

// max_active_faults caps the faults in progress; streams over it pass
// untouched and count in faults_overflow. Delays run side by side.
func TestMaxActiveFaults(t *testing.T) {
	st := observe.NewStore()
	f, err := Compiler{Stats: st}.Compile(parse(t, "delay: { fixed_delay: 3600s }\nmax_active_faults: 2"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var filters []stream.Filter
	for range 2 {
		flt := f.NewFilter(&fakeStream{ctx: ctx})
		filters = append(filters, flt)
		wg.Add(1)
		go func() { defer wg.Done(); flt.OnRequestHeaders(request(), true) }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.(*factory).active.Load() != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the two delays did not start")
		}
		time.Sleep(time.Millisecond)
	}
	third := f.NewFilter(&fakeStream{})
	if st := third.OnRequestHeaders(request(), true); st != stream.Continue {
		t.Errorf("third stream: %v, want continue", st)
	}
	third.OnDone()
	cancel()
	wg.Wait()
	for _, flt := range filters {
		flt.OnDone()
	}
	var b strings.Builder
	observe.WriteText(&b, st, nil, false)
	for _, line := range []string{"http.ingress_http.fault.faults_overflow: 1", "http.ingress_http.fault.delays_injected: 2", "http.ingress_http.fault.active_faults: 0"} {
		if !strings.Contains(b.String(), line+"\n") {
			t.Errorf("stats lack %q:\n%s", line, b.String())
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tt := range []struct{ cfg, want string }{
		{"upstream_cluster: foo\nabort: { http_status: 503 }", "fault: upstream_cluster: faults limited to an upstream cluster are not supported"},
		{"downstream_nodes: [a]", "fault: downstream_nodes:"},
		{"response_rate_limit: { fixed_limit: { limit_kbps: 1 } }", "fault: response_rate_limit: response rate limiting is not supported"},
		{"filter_metadata: { a: 1 }", "fault: filter_metadata: field not supported"},
		{"abort: { http_status: 99 }", "fault: abort.http_status:"},
		{"abort: { percentage: { numerator: 1 } }", "fault: abort: one of http_status"},
		{"delay: { percentage: { numerator: 1 } }", "fault: delay: one of fixed_delay or header_delay"},
		{"headers: [{ name: x, safe_regex_match: { regex: '(' } }]", "fault: headers[0].safe_regex_match.regex:"},
	} {
		_, err := Compiler{}.Compile(parse(t, tt.cfg))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want prefix %q", tt.cfg, err, tt.want)
		}
		if err != nil && strings.Contains(tt.want, "not supported") && !errors.Is(err, envoymatch.ErrUnsupported) {
			t.Errorf("%q: %v does not wrap envoymatch.ErrUnsupported", tt.cfg, err)
		}
	}
	if _, err := (Compiler{}).CompilePerRoute("nope"); err == nil || !strings.HasPrefix(err.Error(), "fault: ") {
		t.Errorf("wrong type: %v", err)
	}
}
