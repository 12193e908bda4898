package rbac

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	v1alpha1 "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeConditions stands in for the CEL compiler cmd/sluice wires: it
// understands a constant bool, `hdr("name")` (the header is present), the
// identifier `boom` (fails at run time) and rejects the identifier
// `bad`.
func fakeConditions(m proto.Message) (config.Condition, error) {
	var e *v1alpha1.Expr
	switch x := m.(type) {
	case *v1alpha1.Expr:
		e = x
	case *v1alpha1.CheckedExpr:
		e = x.GetExpr()
	default:
		return nil, fmt.Errorf("unexpected %T", m)
	}
	switch k := e.GetExprKind().(type) {
	case *v1alpha1.Expr_ConstExpr:
		b := k.ConstExpr.GetBoolValue()
		return condFunc(func(attr.Source) (bool, error) { return b, nil }), nil
	case *v1alpha1.Expr_IdentExpr:
		switch k.IdentExpr.GetName() {
		case "boom":
			return condFunc(func(attr.Source) (bool, error) { return false, errors.New("no such key") }), nil
		case "bad":
			return nil, errors.New("undeclared reference to 'bad'")
		}
	case *v1alpha1.Expr_CallExpr:
		if k.CallExpr.GetFunction() == "hdr" && len(k.CallExpr.GetArgs()) == 1 {
			name := k.CallExpr.GetArgs()[0].GetConstExpr().GetStringValue()
			return condFunc(func(s attr.Source) (bool, error) { return s.RequestHeaders().Has(name), nil }), nil
		}
	}
	return nil, fmt.Errorf("fake: unsupported expression %v", e)
}

type condFunc func(attr.Source) (bool, error)

func (f condFunc) Eval(s attr.Source) (bool, error) { return f(s) }

type harness struct {
	t     *testing.T
	stats *observe.Store
	fac   stream.Factory
	c     Compiler
}

func newHarness(t *testing.T, yaml string) *harness {
	t.Helper()
	h := &harness{t: t, stats: observe.NewStore()}
	h.c = Compiler{Stats: h.stats, Conditions: fakeConditions}
	fac, err := h.c.CompileScoped(filterConfig(t, yaml), stream.CompileScope{StatPrefix: "hcm", FilterName: "envoy.filters.http.rbac"})
	if err != nil {
		t.Fatal(err)
	}
	h.fac = fac
	return h
}

// run sends one request through a new filter instance.
func (h *harness) run(s *fakeStream) stream.Status {
	f := h.fac.NewFilter(s)
	st := f.OnRequestHeaders(&s.req, true)
	f.OnDone()
	if (st == stream.LocalReply) != s.replied {
		h.t.Fatalf("status %v but replied=%v", st, s.replied)
	}
	return st
}

func (h *harness) counter(name string) uint64 {
	for _, m := range h.stats.Metrics() {
		if m.Name == name {
			return uint64(m.Value)
		}
	}
	h.t.Fatalf("no stat %q", name)
	return 0
}

func (h *harness) counters(names ...string) string {
	var out []string
	for _, n := range names {
		out = append(out, fmt.Sprintf("%s=%d", n, h.counter(n)))
	}
	return strings.Join(out, " ")
}

func md(s *fakeStream, ns, key string) any {
	v, _ := s.md.Get(ns, key)
	return v
}

const twoPolicies = `
rules:
  action: %s
  policies:
    "b-admin":
      permissions: [{url_path: {path: {prefix: /admin}}}]
      principals: [{header: {name: x-role, exact_match: admin}}]
    "a-reader":
      permissions: [{header: {name: ":method", exact_match: GET}}]
      principals: [{source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]
`

func TestActions(t *testing.T) {
	type req struct {
		name    string
		mod     func(*fakeStream)
		allowed bool
		policy  any // the effective policy, nil for none
	}
	getInternal := none
	postAdmin := withHeaders(":method", "POST", ":path", "/admin/x", "x-role", "admin")
	postExternal := func(s *fakeStream) { withRemote("8.8.8.8:1")(s); withHeaders(":method", "POST")(s) }
	tests := []struct {
		action string
		reqs   []req
	}{
		{"ALLOW", []req{
			{"reader", getInternal, true, "a-reader"},
			{"admin", postAdmin, true, "b-admin"},
			{"nobody", postExternal, false, nil},
		}},
		{"DENY", []req{
			{"reader", getInternal, false, "a-reader"},
			{"admin", postAdmin, false, "b-admin"},
			{"nobody", postExternal, true, nil},
		}},
		{"LOG", []req{
			{"reader", getInternal, true, "a-reader"},
			{"nobody", postExternal, true, nil},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.action, func(t *testing.T) {
			h := newHarness(t, fmt.Sprintf(twoPolicies, tt.action))
			var allowed, denied uint64
			for _, r := range tt.reqs {
				s := newStream()
				r.mod(s)
				st := h.run(s)
				if got := st == stream.Continue; got != r.allowed {
					t.Fatalf("%s: allowed = %v, want %v", r.name, got, r.allowed)
				}
				if got := md(s, MetadataNamespace, KeyEnforcedPolicy); got != r.policy {
					t.Errorf("%s: effective policy %v, want %v", r.name, got, r.policy)
				}
				wantResult := "allowed"
				if r.allowed {
					allowed++
				} else {
					denied++
					wantResult = "denied"
					wantDetails := "rbac_access_denied_matched_policy[none]"
					if r.policy != nil {
						wantDetails = fmt.Sprintf("rbac_access_denied_matched_policy[%s]", r.policy)
					}
					if s.status != 403 || s.body != "RBAC: access denied" || s.details != wantDetails {
						t.Errorf("%s: reply %d %q %q, want 403 %q %q", r.name, s.status, s.body, s.details, Denied, wantDetails)
					}
				}
				if got := md(s, MetadataNamespace, KeyEnforcedResult); got != wantResult {
					t.Errorf("%s: engine result %v, want %s", r.name, got, wantResult)
				}
				hint, ok := s.md.Get(CommonNamespace, KeyAccessLogHint)
				if tt.action == "LOG" {
					if !ok || hint != (r.policy != nil) {
						t.Errorf("%s: access_log_hint = %v (set %v), want %v", r.name, hint, ok, r.policy != nil)
					}
				} else if ok {
					t.Errorf("%s: access_log_hint set by %s", r.name, tt.action)
				}
			}
			if a, d := h.counter("http.hcm.rbac.allowed"), h.counter("http.hcm.rbac.denied"); a != allowed || d != denied {
				t.Errorf("allowed/denied = %d/%d, want %d/%d", a, d, allowed, denied)
			}
		})
	}
}

func TestEmptyPolicies(t *testing.T) {
	for _, c := range []struct {
		yaml    string
		allowed bool
	}{
		{`rules: {action: ALLOW}`, false},
		{`rules: {action: DENY}`, true},
		{`rules: {action: LOG}`, true},
		{`{}`, true},                            // no rules: nothing enforced
		{`shadow_rules: {action: ALLOW}`, true}, // shadow only
	} {
		h := newHarness(t, c.yaml)
		s := newStream()
		if got := h.run(s) == stream.Continue; got != c.allowed {
			t.Errorf("%s: allowed = %v, want %v", c.yaml, got, c.allowed)
		}
		if !c.allowed && s.details != detailsNone {
			t.Errorf("%s: details %q", c.yaml, s.details)
		}
	}
}

// A policy needs a permission, a principal and its condition.
func TestConditions(t *testing.T) {
	const cfg = `
rules:
  action: %s
  policies:
    p:
      permissions: [{any: true}]
      principals: [{any: true}]
      condition: %s
`
	tests := []struct {
		cond             string
		mod              func(*fakeStream)
		allowAllowed     bool // under ALLOW
		denyAllowed      bool // under DENY
		wantPolicyMatchd bool
	}{
		{`{const_expr: {bool_value: true}}`, none, true, false, true},
		{`{const_expr: {bool_value: false}}`, none, false, true, false},
		{`{call_expr: {function: hdr, args: [{const_expr: {string_value: x-ok}}]}}`, withHeaders("x-ok", "1"), true, false, true},
		{`{call_expr: {function: hdr, args: [{const_expr: {string_value: x-ok}}]}}`, none, false, true, false},
		// A runtime error is no match, as in Envoy: ALLOW denies, DENY
		// lets the request through.
		{`{ident_expr: {name: boom}}`, none, false, true, false},
	}
	for _, tt := range tests {
		for _, action := range []string{"ALLOW", "DENY"} {
			h := newHarness(t, fmt.Sprintf(cfg, action, tt.cond))
			s := newStream()
			tt.mod(s)
			got := h.run(s) == stream.Continue
			want := tt.allowAllowed
			if action == "DENY" {
				want = tt.denyAllowed
			}
			if got != want {
				t.Errorf("%s %s: allowed = %v, want %v", action, tt.cond, got, want)
			}
			if matched := md(s, MetadataNamespace, KeyEnforcedPolicy) != nil; matched != tt.wantPolicyMatchd {
				t.Errorf("%s %s: policy matched = %v", action, tt.cond, matched)
			}
		}
	}
	// checked_condition goes through the same compiler.
	h := newHarness(t, `
rules:
  policies:
    p:
      permissions: [{any: true}]
      principals: [{any: true}]
      checked_condition: {expr: {const_expr: {bool_value: true}}}
`)
	if h.run(newStream()) != stream.Continue {
		t.Error("checked_condition true denied")
	}
}

func TestShadowRules(t *testing.T) {
	h := newHarness(t, `
rules:
  action: DENY
  policies:
    block-evil:
      permissions: [{header: {name: x-evil, present_match: true}}]
      principals: [{any: true}]
shadow_rules:
  action: ALLOW
  policies:
    internal:
      permissions: [{any: true}]
      principals: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]
shadow_rules_stat_prefix: canary_
`)
	// Internal: shadow allows; enforced allows.
	s := newStream()
	if h.run(s) != stream.Continue {
		t.Fatal("denied")
	}
	if v := md(s, MetadataNamespace, "canary_shadow_engine_result"); v != "allowed" {
		t.Errorf("shadow result %v", v)
	}
	if v := md(s, MetadataNamespace, "canary_shadow_effective_policy_id"); v != "internal" {
		t.Errorf("shadow policy %v", v)
	}
	// External: the shadow engine would deny; the request still passes.
	s = newStream()
	s.remote = netipAddrPort("192.0.2.1:5")
	if h.run(s) != stream.Continue {
		t.Fatal("shadow rules denied a request")
	}
	if v := md(s, MetadataNamespace, "canary_shadow_engine_result"); v != "denied" {
		t.Errorf("shadow result %v", v)
	}
	if _, ok := s.md.Get(MetadataNamespace, "canary_shadow_effective_policy_id"); ok {
		t.Error("shadow policy id set though no policy matched")
	}
	// Evil: enforced denies; the shadow result is recorded too.
	s = newStream("x-evil", "1")
	if h.run(s) != stream.LocalReply || s.details != "rbac_access_denied_matched_policy[block-evil]" {
		t.Fatalf("evil: replied %v %q", s.replied, s.details)
	}
	if v := md(s, MetadataNamespace, "canary_shadow_engine_result"); v != "allowed" {
		t.Errorf("shadow result %v", v)
	}
	const want = "http.hcm.rbac.allowed=2 http.hcm.rbac.denied=1 http.hcm.rbac.canary_.shadow_allowed=2 http.hcm.rbac.canary_.shadow_denied=1"
	if got := h.counters("http.hcm.rbac.allowed", "http.hcm.rbac.denied", "http.hcm.rbac.canary_.shadow_allowed", "http.hcm.rbac.canary_.shadow_denied"); got != want {
		t.Errorf("stats %s, want %s", got, want)
	}
	// Prometheus: Envoy's tag extraction, the prefix as a label.
	for _, m := range h.stats.Metrics() {
		if m.Name == "http.hcm.rbac.canary_.shadow_denied" {
			if m.PromName != "envoy_http_rbac_shadow_denied" || fmt.Sprint(m.Labels) != "[{envoy_http_conn_manager_prefix hcm} {envoy_rbac_http_prefix canary_}]" {
				t.Errorf("prometheus %s %v", m.PromName, m.Labels)
			}
		}
	}
}

func TestPerRoute(t *testing.T) {
	h := newHarness(t, `
rules:
  action: ALLOW
  policies:
    internal:
      permissions: [{any: true}]
      principals: [{source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]
rules_stat_prefix: main.
`)
	external := func() *fakeStream {
		s := newStream()
		s.remote = netipAddrPort("192.0.2.1:5")
		return s
	}
	if h.run(external()) != stream.LocalReply {
		t.Fatal("external allowed without an override")
	}

	// RBACPerRoute without rbac disables the filter on the route.
	off, err := h.c.CompilePerRoute(perRoute(t, `{}`))
	if err != nil {
		t.Fatal(err)
	}
	s := external()
	s.override = off
	if h.run(s) != stream.Continue {
		t.Fatal("disabled per route, still denied")
	}
	if _, ok := s.md.Get(MetadataNamespace, "main.enforced_engine_result"); ok {
		t.Error("a disabled filter wrote metadata")
	}

	// With rbac it replaces the rules; metadata keys take the route's
	// prefix when it has one, stats stay the filter's.
	override, err := h.c.CompilePerRoute(perRoute(t, `
rbac:
  rules:
    action: ALLOW
    policies:
      "with key":
        permissions: [{any: true}]
        principals: [{header: {name: x-key, exact_match: k}}]
  rules_stat_prefix: route_
`))
	if err != nil {
		t.Fatal(err)
	}
	s = external()
	s.override = override
	if h.run(s) != stream.LocalReply || s.details != "rbac_access_denied_matched_policy[none]" {
		t.Fatalf("override: replied %v %q", s.replied, s.details)
	}
	if v := md(s, MetadataNamespace, "route_enforced_engine_result"); v != "denied" {
		t.Errorf("route key: %v", v)
	}
	s = newStream("x-key", "k")
	s.remote = netipAddrPort("192.0.2.1:5")
	s.override = override
	if h.run(s) != stream.Continue {
		t.Fatal("override did not allow x-key")
	}
	if v := md(s, MetadataNamespace, "route_enforced_effective_policy_id"); v != "with key" {
		t.Errorf("route policy: %v", v)
	}
	// Policy names with spaces are sanitised in the details.
	s = external()
	s.override, _ = h.c.CompilePerRoute(perRoute(t, `
rbac:
  rules:
    action: DENY
    policies:
      "no external":
        permissions: [{any: true}]
        principals: [{not_id: {source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}}]
`))
	if h.run(s) != stream.LocalReply || s.details != "rbac_access_denied_matched_policy[no_external]" {
		t.Fatalf("deny override: %v %q", s.replied, s.details)
	}
	if v := md(s, MetadataNamespace, "main.enforced_effective_policy_id"); v != "no external" {
		t.Errorf("filter prefix key for a route without one: %v", v)
	}
	const want = "http.hcm.rbac.main.allowed=1 http.hcm.rbac.main.denied=3"
	if got := h.counters("http.hcm.rbac.main.allowed", "http.hcm.rbac.main.denied"); got != want {
		t.Errorf("stats %s, want %s", got, want)
	}
}

func TestPerRuleStats(t *testing.T) {
	h := newHarness(t, `
rules:
  action: ALLOW
  policies:
    internal:
      permissions: [{any: true}]
      principals: [{source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]
shadow_rules:
  action: DENY
  policies:
    internal:
      permissions: [{any: true}]
      principals: [{source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]
track_per_rule_stats: true
`)
	for range 2 {
		h.run(newStream())
	}
	const want = "http.hcm.rbac.policy.internal.allowed=2 http.hcm.rbac.policy.internal.shadow_denied=2"
	if got := h.counters("http.hcm.rbac.policy.internal.allowed", "http.hcm.rbac.policy.internal.shadow_denied"); got != want {
		t.Errorf("stats %s, want %s", got, want)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{`rules: {audit_logging_options: {audit_condition: ON_DENY}}`, "rbac: rules.audit_logging_options: field not supported"},
		{`matcher: {on_no_match: {action: {name: a}}}`, "rbac: matcher: field not supported"},
		{`shadow_rules: {policies: {p: {permissions: [{any: true}], principals: [{filter_state: {key: k}}]}}}`,
			"rbac: shadow_rules.policies[p].principals[0].filter_state: field not supported"},
		{`rules: {policies: {p: {permissions: [{any: true}], principals: [{any: true}], condition: {ident_expr: {name: bad}}}}}`,
			"rbac: rules.policies[p].condition: undeclared reference to 'bad'"},
		{`rules: {policies: {p: {permissions: [{any: true}], principals: [{any: true}], condition: {const_expr: {bool_value: true}}, checked_condition: {expr: {const_expr: {bool_value: true}}}}}}`,
			"only one of condition and checked_condition may be set"},
		{`rules: {policies: {p: {permissions: [{any: true}]}}}`, "rbac: rules.policies[p].principals: at least one is required"},
		// Envoy's validation rules apply too.
		{`rules: {policies: {p: {permissions: [{url_path: {path: {prefix: ""}}}], principals: [{any: true}]}}}`, "rbac: invalid config"},
		{`rules: {policies: {p: {permissions: [{url_path: {path: {safe_regex: {regex: "a(b"}}}}], principals: [{any: true}]}}}`,
			"rbac: rules.policies[p].permissions[0].url_path.path.safe_regex.regex: invalid regex"},
	}
	for _, tt := range tests {
		_, err := Compiler{Conditions: fakeConditions}.Compile(filterConfig(t, tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s:\nerror %v\nwant  %q", tt.yaml, err, tt.want)
		}
	}
	// Without a condition compiler, a condition is an error, not ignored.
	_, err := Compiler{}.Compile(filterConfig(t, `rules: {policies: {p: {permissions: [{any: true}], principals: [{any: true}], condition: {const_expr: {bool_value: true}}}}}`))
	if err == nil || !strings.Contains(err.Error(), "rbac: rules.policies[p].condition: CEL conditions are not available") {
		t.Errorf("no compiler: %v", err)
	}
	if _, err := (Compiler{}).Compile(&config.HeaderMutationConfig{}); err == nil || !strings.HasPrefix(err.Error(), "rbac: config is") {
		t.Errorf("wrong type: %v", err)
	}
	if _, err := (Compiler{}).CompilePerRoute(filterConfig(t, `{}`)); err == nil || !strings.HasPrefix(err.Error(), "rbac: per-route config is") {
		t.Errorf("wrong per-route type: %v", err)
	}
	_, err = Compiler{}.CompilePerRoute(perRoute(t, `rbac: {rules: {policies: {p: {permissions: [{metadata: {filter: f}}], principals: [{any: true}]}}}}`))
	if err == nil || !errors.Is(err, err) || !strings.Contains(err.Error(), "rbac: rules.policies[p].permissions[0].metadata") {
		t.Errorf("per-route error: %v", err)
	}
}

// The unscoped Compile counts under the default connection manager prefix.
func TestCompileDefaultPrefix(t *testing.T) {
	st := observe.NewStore()
	fac, err := Compiler{Stats: st}.Compile(filterConfig(t, `rules: {action: DENY}`))
	if err != nil {
		t.Fatal(err)
	}
	s := newStream()
	fac.NewFilter(s).OnRequestHeaders(&s.req, true)
	found := false
	for _, m := range st.Metrics() {
		found = found || m.Name == "http.ingress_http.rbac.allowed" && m.Value == 1
	}
	if !found {
		t.Errorf("no http.ingress_http.rbac.allowed = 1 in %v", st.Metrics())
	}
}
