package rbac

import (
	"testing"

	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// istioShaped is what istiod makes of three AuthorizationPolicy rules:
// method and path-prefix permissions; principals by source address, by
// header, and by peer identity.
const istioShaped = `
rules:
  action: ALLOW
  policies:
    "ns[default]-policy[httpbin]-rule[0]":
      permissions:
      - and_rules:
          rules:
          - or_rules:
              rules:
              - header: {name: ":method", string_match: {exact: GET}}
              - header: {name: ":method", string_match: {exact: HEAD}}
          - or_rules:
              rules:
              - url_path: {path: {prefix: /status/}}
              - url_path: {path: {prefix: /headers}}
      principals:
      - and_ids:
          ids:
          - or_ids:
              ids:
              - authenticated: {principal_name: {exact: "spiffe://cluster.local/ns/default/sa/sleep"}}
    "ns[default]-policy[httpbin]-rule[1]":
      permissions:
      - and_rules:
          rules:
          - or_rules:
              rules:
              - header: {name: ":method", string_match: {exact: POST}}
          - or_rules:
              rules:
              - url_path: {path: {prefix: /admin/}}
      principals:
      - and_ids:
          ids:
          - or_ids:
              ids:
              - direct_remote_ip: {address_prefix: 192.168.0.0, prefix_len: 16}
              - direct_remote_ip: {address_prefix: 172.16.0.0, prefix_len: 12}
          - or_ids:
              ids:
              - header: {name: x-admin-token, string_match: {prefix: "Bearer "}}
    "ns[default]-policy[httpbin]-rule[2]":
      permissions:
      - and_rules:
          rules:
          - or_rules:
              rules:
              - header: {name: ":method", string_match: {exact: GET}}
              - header: {name: ":method", string_match: {exact: POST}}
          - or_rules:
              rules:
              - url_path: {path: {prefix: /api/v1/}}
              - url_path: {path: {prefix: /api/v2/}}
      principals:
      - and_ids:
          ids:
          - or_ids:
              ids:
              - remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}
              - header: {name: x-tenant, string_match: {exact: acme}}
`

// benchStream is a request the last policy allows, so every policy is
// tried.
func benchStream() *fakeStream {
	return newStream(":method", "POST", ":path", "/api/v2/orders?limit=10", "user-agent", "bench",
		"accept", "*/*", "content-type", "application/json", "x-request-id", "0a1b2c3d")
}

// One request through the filter, as the proxy runs it: a new filter
// instance, a fresh dynamic metadata store, evaluation, stats, results in
// metadata.
func BenchmarkIstioPolicy(b *testing.B) {
	fac, err := Compiler{Stats: observe.NewStore()}.CompileScoped(filterConfig(b, istioShaped), stream.CompileScope{StatPrefix: "inbound_0.0.0.0_8080"})
	if err != nil {
		b.Fatal(err)
	}
	s := benchStream()
	b.ReportAllocs()
	for b.Loop() {
		s.md = &stream.Metadata{}
		f := fac.NewFilter(s)
		if f.OnRequestHeaders(&s.req, true) != stream.Continue {
			b.Fatal("denied")
		}
		f.OnDone()
	}
}

// The policy evaluation alone.
func BenchmarkIstioPolicyEval(b *testing.B) {
	r, err := compileRules(filterConfig(b, istioShaped), nil)
	if err != nil {
		b.Fatal(err)
	}
	s := benchStream()
	var req request
	b.ReportAllocs()
	for b.Loop() {
		req.reset(s, &s.req)
		if ok, _ := r.enforced.allowed(&req); !ok {
			b.Fatal("denied")
		}
	}
}

// Evaluating policies allocates nothing: matchers are compiled, the
// request is read in place.
func TestEvalDoesNotAllocate(t *testing.T) {
	r, err := compileRules(filterConfig(t, istioShaped), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*fakeStream{benchStream(), newStream(":path", "/nothing"), newStream("x-tenant", "acme", ":path", "/api/v1/x")} {
		var req request
		if n := testing.AllocsPerRun(100, func() {
			req.reset(s, &s.req)
			r.enforced.allowed(&req)
		}); n != 0 {
			t.Errorf("%s: %v allocs per evaluation, want 0", s.req.Value(":path"), n)
		}
	}
}
