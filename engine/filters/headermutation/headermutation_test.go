package headermutation

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeCallbacks is a stream.Callbacks whose FilterOverride returns what
// the test put there.
type fakeCallbacks struct {
	override any
	req      header.Map
}

func (f *fakeCallbacks) RequestHeaders() *header.Map      { return &f.req }
func (f *fakeCallbacks) ResponseHeaders() *header.Map     { return nil }
func (f *fakeCallbacks) ResponseTrailers() *header.Map    { return nil }
func (f *fakeCallbacks) ResponseCode() int                { return 0 }
func (f *fakeCallbacks) RequestID() string                { return "" }
func (f *fakeCallbacks) StartTime() time.Time             { return time.Time{} }
func (f *fakeCallbacks) Protocol() string                 { return "HTTP/1.1" }
func (f *fakeCallbacks) DownstreamRemote() netip.AddrPort { return netip.AddrPort{} }
func (f *fakeCallbacks) DownstreamLocal() netip.AddrPort  { return netip.AddrPort{} }
func (f *fakeCallbacks) TLS() *tls.ConnectionState        { return nil }
func (f *fakeCallbacks) UpstreamAddress() string          { return "" }
func (f *fakeCallbacks) RouteName() string                { return "" }
func (f *fakeCallbacks) ClusterName() string              { return "" }
func (f *fakeCallbacks) RequestBodySize() int64           { return 0 }
func (f *fakeCallbacks) ResponseBodySize() int64          { return 0 }
func (f *fakeCallbacks) Context() context.Context         { return context.Background() }
func (f *fakeCallbacks) SendLocalReply(int, string, []header.Field, string) {
	panic("header mutation never replies locally")
}
func (f *fakeCallbacks) Resume()             {}
func (f *fakeCallbacks) ClearRouteCache()    {}
func (f *fakeCallbacks) FilterOverride() any { return f.override }
func (f *fakeCallbacks) StreamID() uint64    { return 1 }

var _ stream.Callbacks = (*fakeCallbacks)(nil)

func mk(kv ...string) *header.Map {
	var m header.Map
	for i := 0; i+1 < len(kv); i += 2 {
		m.Add(kv[i], kv[i+1])
	}
	return &m
}

func pairs(m *header.Map) []string {
	out := []string{}
	for _, f := range m.Fields() {
		out = append(out, f.Name, f.Value)
	}
	return out
}

func hvo(k, v string, a config.AppendAction) config.HeaderValueOption {
	return config.HeaderValueOption{Key: k, Value: v, Action: a}
}

func TestTypeNames(t *testing.T) {
	want := map[string]bool{config.TypeHeaderMutation: true, config.TypeHeaderMutationPerRoute: true, "sluice.header_mutation": true}
	if len(TypeNames) != len(want) {
		t.Fatalf("TypeNames = %q", TypeNames)
	}
	for _, n := range TypeNames {
		if !want[n] {
			t.Errorf("unexpected type name %q", n)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	cfg := func(hm config.HeaderMutations) *config.HeaderMutationConfig {
		return &config.HeaderMutationConfig{HeaderMutations: hm}
	}
	tests := []struct {
		name    string
		cfg     any
		wantErr string // "" means it compiles
	}{
		{"nil", nil, "config is <nil>"},
		{"wrong type", &config.HeaderMutations{}, "want *config.HeaderMutationConfig"},
		{"value not pointer", config.HeaderMutationConfig{}, "want *config.HeaderMutationConfig"},
		{"empty config", cfg(config.HeaderMutations{}), ""},
		{"valid", cfg(config.HeaderMutations{
			RequestHeadersToAdd:     []config.HeaderValueOption{hvo("x-a", "1", config.AddIfAbsent)},
			RequestHeadersToRemove:  []string{"x-b"},
			ResponseHeadersToAdd:    []config.HeaderValueOption{hvo("X-C", "", config.AppendIfExistsOrAdd)},
			ResponseHeadersToRemove: []string{"server"},
		}), ""},
		{"adding a pseudo-header is allowed", cfg(config.HeaderMutations{
			RequestHeadersToAdd: []config.HeaderValueOption{hvo(":path", "/x", config.OverwriteIfExists)},
		}), ""},
		{"empty add name", cfg(config.HeaderMutations{
			RequestHeadersToAdd: []config.HeaderValueOption{hvo("", "1", 0)},
		}), "empty header name"},
		{"space in add name", cfg(config.HeaderMutations{
			RequestHeadersToAdd: []config.HeaderValueOption{hvo("x a", "1", 0)},
		}), `invalid header name "x a"`},
		{"colon inside response add name", cfg(config.HeaderMutations{
			ResponseHeadersToAdd: []config.HeaderValueOption{hvo("x:a", "1", 0)},
		}), `invalid header name "x:a"`},
		{"control char in name", cfg(config.HeaderMutations{
			ResponseHeadersToAdd: []config.HeaderValueOption{hvo("x\na", "1", 0)},
		}), "invalid header name"},
		{"DEL in name", cfg(config.HeaderMutations{
			RequestHeadersToRemove: []string{"x\x7f"},
		}), "invalid header name"},
		{"non-ASCII name", cfg(config.HeaderMutations{
			ResponseHeadersToRemove: []string{"x-\u00e9"},
		}), "invalid header name"},
		{"empty remove name", cfg(config.HeaderMutations{
			ResponseHeadersToRemove: []string{""},
		}), "empty header name"},
		{"remove request pseudo-header", cfg(config.HeaderMutations{
			RequestHeadersToRemove: []string{":authority"},
		}), `cannot remove pseudo-header ":authority"`},
		{"remove response pseudo-header", cfg(config.HeaderMutations{
			ResponseHeadersToRemove: []string{":status"},
		}), `cannot remove pseudo-header ":status"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, which := range []string{"Compile", "CompilePerRoute"} {
				var err error
				var got any
				if which == "Compile" {
					got, err = Compiler{}.Compile(tt.cfg)
				} else {
					got, err = Compiler{}.CompilePerRoute(tt.cfg)
				}
				switch {
				case tt.wantErr == "" && err != nil:
					t.Errorf("%s: unexpected error %v", which, err)
				case tt.wantErr == "" && got == nil:
					t.Errorf("%s: nil result without error", which)
				case tt.wantErr != "" && err == nil:
					t.Errorf("%s: compiled, want error containing %q", which, tt.wantErr)
				case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
					t.Errorf("%s: error %q, want it to contain %q", which, err, tt.wantErr)
				}
			}
		})
	}
}

func TestApply(t *testing.T) {
	tests := []struct {
		name   string
		in     []string
		remove []string
		add    []config.HeaderValueOption
		want   []string
	}{
		{
			name: "append if exists or add: appends",
			in:   []string{"x", "1"},
			add:  []config.HeaderValueOption{hvo("X", "2", config.AppendIfExistsOrAdd)},
			want: []string{"x", "1", "X", "2"},
		},
		{
			name: "append if exists or add: adds",
			in:   []string{"a", "1"},
			add:  []config.HeaderValueOption{hvo("x", "2", config.AppendIfExistsOrAdd)},
			want: []string{"a", "1", "x", "2"},
		},
		{
			name: "add if absent: absent",
			in:   []string{"a", "1"},
			add:  []config.HeaderValueOption{hvo("x", "2", config.AddIfAbsent)},
			want: []string{"a", "1", "x", "2"},
		},
		{
			name: "add if absent: present in other case",
			in:   []string{"X", "1"},
			add:  []config.HeaderValueOption{hvo("x", "2", config.AddIfAbsent)},
			want: []string{"X", "1"},
		},
		{
			name: "overwrite if exists or add: overwrites all, keeps first position",
			in:   []string{"x", "1", "a", "2", "X", "3"},
			add:  []config.HeaderValueOption{hvo("x", "new", config.OverwriteIfExistsOrAdd)},
			want: []string{"x", "new", "a", "2"},
		},
		{
			name: "overwrite if exists or add: adds",
			in:   []string{"a", "1"},
			add:  []config.HeaderValueOption{hvo("x", "new", config.OverwriteIfExistsOrAdd)},
			want: []string{"a", "1", "x", "new"},
		},
		{
			name: "overwrite if exists: overwrites",
			in:   []string{"x", "1", "x", "2"},
			add:  []config.HeaderValueOption{hvo("X", "new", config.OverwriteIfExists)},
			want: []string{"x", "new"},
		},
		{
			name: "overwrite if exists: absent stays absent",
			in:   []string{"a", "1"},
			add:  []config.HeaderValueOption{hvo("x", "new", config.OverwriteIfExists)},
			want: []string{"a", "1"},
		},
		{
			name:   "remove happens before add",
			in:     []string{"x", "old", "y", "1"},
			remove: []string{"X"},
			add:    []config.HeaderValueOption{hvo("x", "fresh", config.AddIfAbsent)},
			want:   []string{"y", "1", "x", "fresh"},
		},
		{
			name:   "remove all occurrences, case-insensitive",
			in:     []string{"a", "1", "Server", "s1", "b", "2", "SERVER", "s2"},
			remove: []string{"server", "missing"},
			want:   []string{"a", "1", "b", "2"},
		},
		{
			name: "adds apply in order",
			in:   nil,
			add: []config.HeaderValueOption{
				hvo("x", "1", config.AddIfAbsent),
				hvo("x", "2", config.AddIfAbsent),
				hvo("x", "3", config.AppendIfExistsOrAdd),
				hvo("y", "a", config.OverwriteIfExists),
				hvo("y", "b", config.OverwriteIfExistsOrAdd),
			},
			want: []string{"x", "1", "x", "3", "y", "b"},
		},
		{
			name: "unknown action does nothing",
			in:   []string{"a", "1"},
			add:  []config.HeaderValueOption{hvo("x", "1", config.AppendAction(42))},
			want: []string{"a", "1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mk(tt.in...)
			Apply(h, tt.remove, tt.add)
			if got := pairs(h); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFilterWithPerRouteOverride(t *testing.T) {
	chainCfg := &config.HeaderMutationConfig{HeaderMutations: config.HeaderMutations{
		RequestHeadersToAdd:     []config.HeaderValueOption{hvo("x-chain", "req", config.OverwriteIfExistsOrAdd)},
		RequestHeadersToRemove:  []string{"x-secret"},
		ResponseHeadersToAdd:    []config.HeaderValueOption{hvo("x-chain", "resp", config.AppendIfExistsOrAdd)},
		ResponseHeadersToRemove: []string{"server"},
	}}
	routeCfg := &config.HeaderMutationConfig{HeaderMutations: config.HeaderMutations{
		RequestHeadersToAdd:  []config.HeaderValueOption{hvo("x-route", "req", config.AddIfAbsent)},
		ResponseHeadersToAdd: []config.HeaderValueOption{hvo("x-route", "resp", config.OverwriteIfExists)},
	}}
	fac, err := Compiler{}.Compile(chainCfg)
	if err != nil {
		t.Fatal(err)
	}
	perRoute, err := Compiler{}.CompilePerRoute(routeCfg)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		override any
		reqIn    []string
		reqWant  []string
		respIn   []string
		respWant []string
	}{
		{
			name:     "no override uses chain config",
			override: nil,
			reqIn:    []string{":method", "GET", "x-secret", "s", "x-chain", "client"},
			reqWant:  []string{":method", "GET", "x-chain", "req"},
			respIn:   []string{":status", "200", "Server", "up"},
			respWant: []string{":status", "200", "x-chain", "resp"},
		},
		{
			name:     "per-route override replaces chain config",
			override: perRoute,
			reqIn:    []string{":method", "GET", "x-secret", "s"},
			reqWant:  []string{":method", "GET", "x-secret", "s", "x-route", "req"},
			respIn:   []string{":status", "200", "Server", "up", "X-Route", "upstream"},
			respWant: []string{":status", "200", "Server", "up", "X-Route", "resp"},
		},
		{
			name:     "foreign override type falls back to chain config",
			override: "not a compiled config",
			reqIn:    []string{":method", "GET", "x-secret", "s"},
			reqWant:  []string{":method", "GET", "x-chain", "req"},
			respIn:   []string{":status", "204"},
			respWant: []string{":status", "204", "x-chain", "resp"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cb := &fakeCallbacks{override: tt.override}
			f := fac.NewFilter(cb)
			req := mk(tt.reqIn...)
			if st := f.OnRequestHeaders(req, true); st != stream.Continue {
				t.Errorf("OnRequestHeaders = %v", st)
			}
			if got := pairs(req); !reflect.DeepEqual(got, tt.reqWant) {
				t.Errorf("request: got %q, want %q", got, tt.reqWant)
			}
			resp := mk(tt.respIn...)
			if st := f.OnResponseHeaders(resp, false); st != stream.Continue {
				t.Errorf("OnResponseHeaders = %v", st)
			}
			if got := pairs(resp); !reflect.DeepEqual(got, tt.respWant) {
				t.Errorf("response: got %q, want %q", got, tt.respWant)
			}
			// Bodies and trailers pass through untouched.
			var b stream.Buffer
			b.SetString("body")
			tr := mk("x-secret", "t")
			if f.OnRequestBody(&b, true) != stream.Continue || f.OnResponseBody(&b, true) != stream.Continue ||
				f.OnRequestTrailers(tr) != stream.Continue || f.OnResponseTrailers(tr) != stream.Continue {
				t.Error("body/trailer callbacks do not continue")
			}
			if string(b.Bytes()) != "body" || tr.Value("x-secret") != "t" {
				t.Error("body or trailers changed")
			}
			f.OnDone()
		})
	}
}

// The override is read per callback, so a route change between the request
// and the response (ClearRouteCache) is honoured.
func TestFilterOverrideReadPerCallback(t *testing.T) {
	fac, err := Compiler{}.Compile(&config.HeaderMutationConfig{HeaderMutations: config.HeaderMutations{
		ResponseHeadersToAdd: []config.HeaderValueOption{hvo("x-from", "chain", config.AppendIfExistsOrAdd)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	pr, err := Compiler{}.CompilePerRoute(&config.HeaderMutationConfig{HeaderMutations: config.HeaderMutations{
		ResponseHeadersToAdd: []config.HeaderValueOption{hvo("x-from", "route", config.AppendIfExistsOrAdd)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cb := &fakeCallbacks{}
	f := fac.NewFilter(cb)
	f.OnRequestHeaders(mk(":path", "/"), true)
	cb.override = pr
	resp := mk(":status", "200")
	f.OnResponseHeaders(resp, true)
	if got := resp.Value("x-from"); got != "route" {
		t.Errorf("x-from = %q, want route", got)
	}
}

// Two streams share one factory; each filter keeps its own callbacks.
func TestFactorySharedAcrossStreams(t *testing.T) {
	fac, err := Compiler{}.Compile(&config.HeaderMutationConfig{HeaderMutations: config.HeaderMutations{
		RequestHeadersToAdd: []config.HeaderValueOption{hvo("x", "chain", config.AppendIfExistsOrAdd)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	pr, _ := Compiler{}.CompilePerRoute(&config.HeaderMutationConfig{HeaderMutations: config.HeaderMutations{
		RequestHeadersToAdd: []config.HeaderValueOption{hvo("x", "route", config.AppendIfExistsOrAdd)},
	}})
	f1 := fac.NewFilter(&fakeCallbacks{})
	f2 := fac.NewFilter(&fakeCallbacks{override: pr})
	h1, h2 := mk(), mk()
	f1.OnRequestHeaders(h1, true)
	f2.OnRequestHeaders(h2, true)
	if h1.Value("x") != "chain" || h2.Value("x") != "route" {
		t.Errorf("got %q / %q, want chain / route", h1.Value("x"), h2.Value("x"))
	}
}

// A typed nil config (what a translator produces from an absent message)
// must be rejected or treated as empty at config time, never panic: a panic
// in Compile takes the whole snapshot apply (and the process) down.
func TestCompileTypedNil(t *testing.T) {
	for _, which := range []string{"Compile", "CompilePerRoute"} {
		t.Run(which, func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s((*config.HeaderMutationConfig)(nil)) panicked: %v", which, r)
				}
			}()
			var nilCfg *config.HeaderMutationConfig
			if which == "Compile" {
				Compiler{}.Compile(nilCfg)
			} else {
				Compiler{}.CompilePerRoute(nilCfg)
			}
		})
	}
}

func (*fakeCallbacks) HTTPCall(context.Context, string, *header.Map, []byte, time.Duration) (*stream.HTTPResponse, error) {
	return nil, errors.New("no calls in this test")
}
func (*fakeCallbacks) DynamicMetadata() *stream.Metadata   { return &stream.Metadata{} }
func (*fakeCallbacks) FilterState() *stream.Metadata       { return &stream.Metadata{} }
func (*fakeCallbacks) RouteMetadata(string) map[string]any { return nil }
func (*fakeCallbacks) Logger() *slog.Logger                { return slog.New(slog.DiscardHandler) }
