package cors

import (
	"testing"

	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
)

// benchStream is a stream as the filter sees it through its whole life:
// created, request headers, response headers, done.
func benchStream(b *testing.B, policy string, req *header.Map) {
	c := Compiler{Stats: observe.NewStore()}
	f, err := c.Compile(&corsv3.Cors{})
	if err != nil {
		b.Fatal(err)
	}
	p, err := c.CompilePerRoute(parse(b, policy))
	if err != nil {
		b.Fatal(err)
	}
	fs := &fakeStream{override: p}
	resp := headers(":status", "200", "content-type", "text/plain", "content-length", "5")
	n := resp.Len()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		flt := f.NewFilter(fs)
		flt.OnRequestHeaders(req, true)
		flt.OnResponseHeaders(resp, false)
		flt.OnDone()
		resp.DelFunc(func(hf header.Field) bool { return len(hf.Name) > 15 && hf.Name[:15] == "access-control-" })
		if resp.Len() != n {
			b.Fatal("response headers not restored")
		}
	}
}

const benchPolicy = "allow_origin_string_match: [{ exact: https://z.example }, { safe_regex: { regex: 'https://[a-z]+\\\\.example' } }]\n" +
	"allow_methods: GET,PUT\nexpose_headers: x-exposed\nallow_credentials: true"

// A request without an Origin header on a route with a policy.
func BenchmarkNoOrigin(b *testing.B) {
	benchStream(b, benchPolicy, headers(":method", "GET", ":path", "/", ":authority", "a", "user-agent", "bench", "accept", "*/*"))
}

// A simple CORS request whose origin the policy allows (by its regex).
func BenchmarkSimpleRequest(b *testing.B) {
	benchStream(b, benchPolicy, headers(":method", "GET", ":path", "/", ":authority", "a", "user-agent", "bench", "accept", "*/*",
		"origin", "https://a.example"))
}
