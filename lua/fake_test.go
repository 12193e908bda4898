package lua

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeCB is a stream.Callbacks that records what a filter asks for.
type fakeCB struct {
	mu        sync.Mutex
	req       header.Map
	resp      header.Map
	replies   []reply
	cleared   int
	override  any
	dyn, fs   stream.Metadata
	routeMeta map[string]map[string]any
	calls     []httpCall
	answer    func(cluster string, h *header.Map, body []byte, timeout time.Duration) (*stream.HTTPResponse, error)
	logs      *logSink
	tlsState  *tls.ConnectionState
	protocol  string
}

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

func newCB() *fakeCB {
	return &fakeCB{logs: &logSink{}, protocol: "HTTP/1.1"}
}

func (c *fakeCB) RequestHeaders() *header.Map   { return &c.req }
func (c *fakeCB) ResponseHeaders() *header.Map  { return &c.resp }
func (c *fakeCB) ResponseTrailers() *header.Map { return &header.Map{} }
func (c *fakeCB) ResponseCode() int             { return 0 }
func (c *fakeCB) RequestID() string             { return "rid" }
func (c *fakeCB) StartTime() time.Time          { return time.Unix(0, 0) }
func (c *fakeCB) Protocol() string              { return c.protocol }
func (c *fakeCB) DownstreamRemote() netip.AddrPort {
	return netip.MustParseAddrPort("10.0.0.1:5555")
}
func (c *fakeCB) DownstreamLocal() netip.AddrPort {
	return netip.MustParseAddrPort("[::ffff:127.0.0.1]:8080")
}
func (c *fakeCB) TLS() *tls.ConnectionState { return c.tlsState }
func (c *fakeCB) UpstreamAddress() string   { return "" }
func (c *fakeCB) RouteName() string         { return "r1" }
func (c *fakeCB) ClusterName() string       { return "c1" }
func (c *fakeCB) RequestBodySize() int64    { return 0 }
func (c *fakeCB) ResponseBodySize() int64   { return 0 }
func (c *fakeCB) Context() context.Context  { return context.Background() }
func (c *fakeCB) SendLocalReply(status int, body string, headers []header.Field, details string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.replies = append(c.replies, reply{status, body, headers, details})
}
func (c *fakeCB) Resume()             {}
func (c *fakeCB) ClearRouteCache()    { c.cleared++ }
func (c *fakeCB) FilterOverride() any { return c.override }
func (c *fakeCB) StreamID() uint64    { return 7 }
func (c *fakeCB) HTTPCall(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*stream.HTTPResponse, error) {
	c.mu.Lock()
	c.calls = append(c.calls, httpCall{cluster, h.Clone(), string(body), timeout})
	answer := c.answer
	c.mu.Unlock()
	if answer == nil {
		r := &stream.HTTPResponse{Body: []byte("ok")}
		r.Headers.Add(":status", "200")
		return r, nil
	}
	return answer(cluster, h, body, timeout)
}
func (c *fakeCB) DynamicMetadata() *stream.Metadata      { return &c.dyn }
func (c *fakeCB) FilterState() *stream.Metadata          { return &c.fs }
func (c *fakeCB) RouteMetadata(ns string) map[string]any { return c.routeMeta[ns] }
func (c *fakeCB) Logger() *slog.Logger                   { return slog.New(c.logs) }

func (c *fakeCB) httpCalls() []httpCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]httpCall(nil), c.calls...)
}

// logSink is a slog.Handler keeping records as text.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	s.mu.Lock()
	s.lines = append(s.lines, b.String())
	s.mu.Unlock()
	return nil
}
func (s *logSink) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *logSink) WithGroup(string) slog.Handler      { return s }

func (s *logSink) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// message is one direction of an exchange as the engine delivers it.
type message struct {
	headers  []header.Field
	chunks   []string
	trailers []header.Field
}

// outcome is what left the filter.
type outcome struct {
	reqStatus, respStatus []stream.Status
	req, resp             header.Map
	reqBody, respBody     string
	reqTrailers           header.Map
	respTrailers          header.Map
	local                 bool
}

// runDir delivers one direction the way engine/proxy's chain does for a
// single filter: StopAndBuffer from the headers buffers the whole body
// and delivers it with endStream; a chunk answered with StopAndBuffer gets
// the rest appended and is delivered again.
func runDir(f stream.Filter, resp bool, m message, h *header.Map, trailers *header.Map, statuses *[]stream.Status) (string, bool) {
	for _, fld := range m.headers {
		h.Add(fld.Name, fld.Value)
	}
	for _, fld := range m.trailers {
		trailers.Add(fld.Name, fld.Value)
	}
	onHeaders, onBody, onTrailers := f.OnRequestHeaders, f.OnRequestBody, f.OnRequestTrailers
	if resp {
		onHeaders, onBody, onTrailers = f.OnResponseHeaders, f.OnResponseBody, f.OnResponseTrailers
	}
	end := len(m.chunks) == 0 && len(m.trailers) == 0
	st := onHeaders(h, end)
	*statuses = append(*statuses, st)
	if st == stream.LocalReply {
		return "", false
	}
	var out strings.Builder
	if st == stream.StopAndBuffer && !end {
		b := &stream.Buffer{}
		b.SetString(strings.Join(m.chunks, ""))
		st = onBody(b, true)
		*statuses = append(*statuses, st)
		if st == stream.LocalReply {
			return "", false
		}
		out.Write(b.Bytes())
	} else {
		for i := 0; i < len(m.chunks); i++ {
			b := &stream.Buffer{}
			b.SetString(m.chunks[i])
			last := i == len(m.chunks)-1
			st = onBody(b, last)
			if st == stream.StopAndBuffer && !last {
				b.SetString(strings.Join(m.chunks[i:], ""))
				i = len(m.chunks)
				st = onBody(b, true)
			}
			*statuses = append(*statuses, st)
			if st == stream.LocalReply {
				return "", false
			}
			out.Write(b.Bytes())
		}
	}
	if len(m.trailers) > 0 {
		st = onTrailers(trailers)
		*statuses = append(*statuses, st)
		if st == stream.LocalReply {
			return "", false
		}
	}
	return out.String(), true
}

func exchange(fac stream.Factory, cb *fakeCB, req, resp message) outcome {
	var o outcome
	f := fac.NewFilter(cb)
	defer f.OnDone()
	body, ok := runDir(f, false, req, &o.req, &o.reqTrailers, &o.reqStatus)
	o.reqBody = body
	if !ok {
		o.local = true
		return o
	}
	if len(resp.headers) == 0 {
		resp.headers = []header.Field{{Name: ":status", Value: "200"}}
	}
	body, ok = runDir(f, true, resp, &o.resp, &o.respTrailers, &o.respStatus)
	o.respBody = body
	o.local = !ok
	return o
}

func get(req string) message {
	return message{headers: []header.Field{{Name: ":method", Value: "GET"}, {Name: ":path", Value: req}, {Name: ":authority", Value: "example.com"}, {Name: ":scheme", Value: "http"}}}
}

func post(path string, chunks ...string) message {
	m := get(path)
	m.headers[0].Value = "POST"
	m.chunks = chunks
	return m
}

func inline(src string) *luav3.Lua {
	return &luav3.Lua{DefaultSourceCode: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: src}}}
}

func mustCompile(t testing.TB, cfg *luav3.Lua) stream.Factory {
	t.Helper()
	// Scaled as the default is: race builds run scripts several times slower.
	fac, err := Compiler{TimeBudget: 200 * time.Millisecond * raceScale}.Compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return fac
}

func mustFile(t testing.TB, name string) *luav3.Lua {
	return &luav3.Lua{DefaultSourceCode: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "testdata/" + name}}}
}
