package cors

import (
	"errors"
	"slices"
	"strings"
	"testing"

	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/sluice-proxy/sluice/engine/filters/envoymatch"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeStream implements the callbacks the filter uses; the embedded nil
// interface panics on anything else.
type fakeStream struct {
	stream.Callbacks
	override any

	replied bool
	status  int
	body    string
	headers []header.Field
	details string
}

func (f *fakeStream) FilterOverride() any { return f.override }
func (f *fakeStream) SendLocalReply(status int, body string, h []header.Field, details string) {
	f.replied, f.status, f.body, f.headers, f.details = true, status, body, h, details
}

func parse(t testing.TB, src string) *corsv3.CorsPolicy {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	m := &corsv3.CorsPolicy{}
	if err := protojson.Unmarshal(js, m); err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	return m
}

func headers(kv ...string) *header.Map {
	h := &header.Map{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// get is a GET from https://a.example; kv sets more headers (or replaces).
func get(kv ...string) *header.Map {
	return set(headers(":method", "GET", ":path", "/", "origin", "https://a.example"), kv)
}

// preflight is a preflight from https://a.example for a PUT.
func preflight(kv ...string) *header.Map {
	return set(headers(":method", "OPTIONS", ":path", "/", "origin", "https://a.example", HeaderRequestMethod, "PUT"), kv)
}

func set(h *header.Map, kv []string) *header.Map {
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// fields renders the access-control-* headers of hs, in order.
func fields(hs []header.Field) string {
	var out []string
	for _, f := range hs {
		if strings.HasPrefix(f.Name, "access-control-") {
			out = append(out, f.Name+"="+f.Value)
		}
	}
	return strings.Join(out, " ")
}

// fixedRand returns v % n: a share is hit when v%n < its numerator.
func fixedRand(v uint64) func(uint64) uint64 { return func(n uint64) uint64 { return v % n } }

type outcome struct {
	status   stream.Status
	reply    string // access-control-* headers of the preflight answer
	response string // access-control-* headers added to the upstream's response
}

func run(t *testing.T, rnd uint64, vhost, route string, req *header.Map) (outcome, string) {
	t.Helper()
	st := observe.NewStore()
	c := Compiler{Stats: st, Rand: fixedRand(rnd)}
	f, err := c.CompileScoped(&corsv3.Cors{}, stream.CompileScope{StatPrefix: "inbound"})
	if err != nil {
		t.Fatal(err)
	}
	fs := &fakeStream{}
	var parent any
	if vhost != "" {
		if parent, err = c.CompilePerRoute(parse(t, vhost)); err != nil {
			t.Fatal(err)
		}
		fs.override = parent
	}
	if route != "" {
		if fs.override, err = c.CompilePerRoute(parse(t, route)); err != nil {
			t.Fatal(err)
		}
		if parent != nil {
			fs.override = c.MergePerRoute(parent, fs.override)
		}
	}
	flt := f.NewFilter(fs)
	var o outcome
	o.status = flt.OnRequestHeaders(req, true)
	if fs.replied {
		if fs.status != 200 || fs.body != "" || fs.details != ResponseDetails {
			t.Errorf("preflight reply %d %q %q", fs.status, fs.body, fs.details)
		}
		o.reply = fields(fs.headers)
	} else {
		resp := headers(":status", "200", "content-type", "text/plain")
		flt.OnResponseHeaders(resp, false)
		o.response = fields(resp.Fields())
	}
	flt.OnDone()
	var b strings.Builder
	observe.WriteText(&b, st, nil, false)
	var stats []string
	for _, name := range []string{"origin_valid", "origin_invalid"} {
		for _, line := range strings.Split(b.String(), "\n") {
			if v, ok := strings.CutPrefix(line, "http.inbound.cors."+name+": "); ok {
				stats = append(stats, name+"="+v)
			}
		}
	}
	return o, strings.Join(stats, " ")
}

func TestCORS(t *testing.T) {
	const (
		exact = "allow_origin_string_match: [{ exact: https://a.example }]\n"
		full  = exact + "allow_methods: GET,PUT\nallow_headers: x-a,x-b\nexpose_headers: x-exposed\nmax_age: '600'\n"
		valid = "origin_valid=1 origin_invalid=0"
		bad   = "origin_valid=0 origin_invalid=1"
		none  = "origin_valid=0 origin_invalid=0"
	)
	tests := []struct {
		name         string
		rand         uint64
		vhost, route string
		req          *header.Map
		want         outcome
		stats        string
	}{
		{name: "preflight allowed", route: full, req: preflight(),
			want:  outcome{status: stream.LocalReply, reply: "access-control-allow-origin=https://a.example access-control-allow-methods=GET,PUT access-control-allow-headers=x-a,x-b access-control-max-age=600"},
			stats: valid},
		{name: "preflight origin mismatch forwarded", route: full, req: preflight("origin", "https://b.example"),
			want: outcome{status: stream.Continue}, stats: "origin_valid=0 origin_invalid=1"},
		{name: "preflight origin mismatch answered", route: full + "forward_not_matching_preflights: false",
			req:   headers(":method", "OPTIONS", "origin", "https://evil.example", HeaderRequestMethod, "PUT"),
			want:  outcome{status: stream.LocalReply, reply: "access-control-allow-methods=GET,PUT access-control-allow-headers=x-a,x-b access-control-max-age=600"},
			stats: bad},
		{name: "preflight with credentials", route: exact + "allow_credentials: true", req: preflight(),
			want:  outcome{status: stream.LocalReply, reply: "access-control-allow-origin=https://a.example access-control-allow-credentials=true"},
			stats: valid},
		{name: "preflight max-age alone", route: exact + "max_age: '86400'", req: preflight(),
			want:  outcome{status: stream.LocalReply, reply: "access-control-allow-origin=https://a.example access-control-max-age=86400"},
			stats: valid},
		{name: "preflight wildcards echo the request", route: exact + "allow_methods: '*'\nallow_headers: '*'",
			req:   preflight(HeaderRequestHeaders, "x-custom"),
			want:  outcome{status: stream.LocalReply, reply: "access-control-allow-origin=https://a.example access-control-allow-methods=PUT access-control-allow-headers=x-custom"},
			stats: valid},
		{name: "preflight private network", route: exact + "allow_private_network_access: true",
			req:   preflight(HeaderRequestPrivateNetwork, "true"),
			want:  outcome{status: stream.LocalReply, reply: "access-control-allow-origin=https://a.example access-control-allow-private-network=true"},
			stats: valid},
		{name: "private network not requested", route: exact + "allow_private_network_access: true", req: preflight(),
			want: outcome{status: stream.LocalReply, reply: "access-control-allow-origin=https://a.example"}, stats: valid},
		{name: "OPTIONS without request method is no preflight", route: full,
			req:   headers(":method", "OPTIONS", "origin", "https://a.example"),
			want:  outcome{status: stream.Continue, response: "access-control-allow-origin=https://a.example access-control-expose-headers=x-exposed"},
			stats: valid},
		{name: "simple request", route: full, req: get(),
			want:  outcome{status: stream.Continue, response: "access-control-allow-origin=https://a.example access-control-expose-headers=x-exposed"},
			stats: valid},
		{name: "simple request with credentials", route: exact + "allow_credentials: true", req: get(),
			want:  outcome{status: stream.Continue, response: "access-control-allow-origin=https://a.example access-control-allow-credentials=true"},
			stats: valid},
		{name: "simple request origin mismatch", route: full, req: get("origin", "https://b.example"),
			want: outcome{status: stream.Continue}, stats: "origin_valid=0 origin_invalid=1"},
		{name: "regex origin", route: "allow_origin_string_match: [{ safe_regex: { regex: 'https://[a-z]+\\.example' } }]",
			req: get(), want: outcome{status: stream.Continue, response: "access-control-allow-origin=https://a.example"}, stats: valid},
		{name: "regex matches the whole origin", route: "allow_origin_string_match: [{ safe_regex: { regex: 'https://a' } }]",
			req: get(), want: outcome{status: stream.Continue}, stats: bad},
		{name: "second matcher", route: "allow_origin_string_match: [{ exact: https://z.example }, { suffix: .EXAMPLE, ignore_case: true }]",
			req: get(), want: outcome{status: stream.Continue, response: "access-control-allow-origin=https://a.example"}, stats: valid},
		{name: "exact is case sensitive", route: "allow_origin_string_match: [{ exact: https://A.example }]",
			req: get(), want: outcome{status: stream.Continue}, stats: bad},
		{name: "a matcher of * allows every origin", route: "allow_origin_string_match: [{ exact: '*' }]",
			req: get("origin", "https://any.example"), want: outcome{status: stream.Continue, response: "access-control-allow-origin=https://any.example"}, stats: valid},
		{name: "no matcher allows nothing", route: "allow_methods: GET", req: get(),
			want: outcome{status: stream.Continue}, stats: bad},
		{name: "no Origin header is untouched", route: full, req: headers(":method", "OPTIONS", HeaderRequestMethod, "PUT"),
			want: outcome{status: stream.Continue}, stats: none},
		{name: "empty Origin header is untouched", route: full, req: get("origin", ""),
			want: outcome{status: stream.Continue}, stats: none},
		{name: "no policy is untouched", req: preflight(), want: outcome{status: stream.Continue}, stats: none},
		{name: "filter_enabled 0", route: full + "filter_enabled: { default_value: { numerator: 0 } }", req: preflight(),
			want: outcome{status: stream.Continue}, stats: none},
		{name: "filter_enabled 50 hit", rand: 49, route: full + "filter_enabled: { default_value: { numerator: 50 } }", req: get(),
			want: outcome{status: stream.Continue, response: "access-control-allow-origin=https://a.example access-control-expose-headers=x-exposed"}, stats: valid},
		{name: "filter_enabled 50 miss", rand: 50, route: full + "filter_enabled: { default_value: { numerator: 50 } }", req: get(),
			want: outcome{status: stream.Continue}, stats: none},
		{name: "filter_enabled runtime key is its default", route: full + "filter_enabled: { default_value: { numerator: 100 }, runtime_key: cors.on }",
			req: get(), want: outcome{status: stream.Continue, response: "access-control-allow-origin=https://a.example access-control-expose-headers=x-exposed"}, stats: valid},
		{name: "shadow counts, enforces nothing", route: full + "filter_enabled: { default_value: { numerator: 0 } }\nshadow_enabled: { default_value: { numerator: 100 } }",
			req: preflight(), want: outcome{status: stream.Continue}, stats: valid},
		{name: "shadow counts invalid origins", route: full + "filter_enabled: { default_value: { numerator: 0 } }\nshadow_enabled: { default_value: { numerator: 100 } }",
			req: get("origin", "https://b.example"), want: outcome{status: stream.Continue}, stats: bad},
		{name: "enabled wins over shadow", route: full + "shadow_enabled: { default_value: { numerator: 100 } }",
			req: preflight(), want: outcome{status: stream.LocalReply, reply: "access-control-allow-origin=https://a.example access-control-allow-methods=GET,PUT access-control-allow-headers=x-a,x-b access-control-max-age=600"}, stats: valid},
		{name: "virtual host policy alone", vhost: full, req: get(),
			want: outcome{status: stream.Continue, response: "access-control-allow-origin=https://a.example access-control-expose-headers=x-exposed"}, stats: valid},
		{name: "route fields over virtual host fields", vhost: full + "allow_credentials: true",
			route: "expose_headers: x-route\nallow_credentials: false", req: get(),
			want: outcome{status: stream.Continue, response: "access-control-allow-origin=https://a.example access-control-expose-headers=x-route"}, stats: valid},
		{name: "route origins replace virtual host origins", vhost: full, route: "allow_origin_string_match: [{ exact: https://b.example }]",
			req: get(), want: outcome{status: stream.Continue}, stats: bad},
		{name: "filter_enabled is the route's alone", vhost: full + "filter_enabled: { default_value: { numerator: 0 } }",
			route: "max_age: '5'", req: preflight(),
			want: outcome{status: stream.LocalReply, reply: "access-control-allow-origin=https://a.example access-control-allow-methods=GET,PUT access-control-allow-headers=x-a,x-b access-control-max-age=5"}, stats: valid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, stats := run(t, tt.rand, tt.vhost, tt.route, tt.req)
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if stats != tt.stats {
				t.Errorf("stats %q, want %q", stats, tt.stats)
			}
		})
	}
}

// The response of an allowed request gets the policy's values even when
// the upstream set its own.
func TestResponseHeadersReplaced(t *testing.T) {
	c := Compiler{Stats: observe.NewStore()}
	f, err := c.Compile(&corsv3.Cors{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.CompilePerRoute(parse(t, "allow_origin_string_match: [{ prefix: 'https://' }]"))
	if err != nil {
		t.Fatal(err)
	}
	flt := f.NewFilter(&fakeStream{override: p})
	flt.OnRequestHeaders(get(), true)
	resp := headers(":status", "200", HeaderAllowOrigin, "*", HeaderAllowOrigin, "https://x.example")
	flt.OnResponseHeaders(resp, true)
	flt.OnDone()
	if got := resp.Values(nil, HeaderAllowOrigin); !slices.Equal(got, []string{"https://a.example"}) {
		t.Errorf("allow-origin %q", got)
	}
	// A pooled filter starts clean.
	flt = f.NewFilter(&fakeStream{})
	resp = headers(":status", "200")
	flt.OnRequestHeaders(get(), true)
	flt.OnResponseHeaders(resp, true)
	flt.OnDone()
	if resp.Has(HeaderAllowOrigin) {
		t.Errorf("reused filter added %v", resp.Fields())
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tt := range []struct{ cfg, want string }{
		{"allow_origin_string_match: [{ exact: a }, { safe_regex: { regex: '(' } }]", "cors: allow_origin_string_match[1].safe_regex.regex: invalid regex"},
		{"allow_origin_string_match: [{ ignore_case: true }]", "cors: allow_origin_string_match[0]: a match pattern"},
		{"filter_enabled: { runtime_key: k }", "cors: filter_enabled.default_value: a value is required"},
		{"shadow_enabled: { default_value: { numerator: 1, denominator: 7 } }", "cors: shadow_enabled.default_value.denominator: unknown denominator 7"},
		{"allow_origin_string_match: [{ custom: { name: acme } }]", "cors: allow_origin_string_match[0].custom: field not supported"},
	} {
		_, err := Compiler{}.CompilePerRoute(parse(t, tt.cfg))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want prefix %q", tt.cfg, err, tt.want)
		}
		if err != nil && strings.HasSuffix(tt.want, "not supported") && !errors.Is(err, envoymatch.ErrUnsupported) {
			t.Errorf("%q: %v does not wrap envoymatch.ErrUnsupported", tt.cfg, err)
		}
	}
	if _, err := (Compiler{}).CompilePerRoute(&corsv3.Cors{}); err == nil || !strings.HasPrefix(err.Error(), "cors: per-route config is *corsv3.Cors") {
		t.Errorf("filter config as per-route config: %v", err)
	}
	if _, err := (Compiler{}).Compile(&corsv3.CorsPolicy{}); err == nil || !strings.HasPrefix(err.Error(), "cors: config is *corsv3.CorsPolicy") {
		t.Errorf("policy as filter config: %v", err)
	}
}
