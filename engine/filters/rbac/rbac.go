// Package rbac is Envoy's HTTP role-based access control filter
// (envoy.filters.http.rbac, the filter Istio's AuthorizationPolicy becomes):
// it allows or denies a request by policies of permissions (what is asked:
// path, method, headers, destination) and principals (who asks: source
// address, peer certificate, headers), with an optional CEL condition per
// policy. Rules are enforced (a denied request gets Envoy's 403 "RBAC:
// access denied"); shadow rules are only evaluated, their result going to
// stats and dynamic metadata. RBACPerRoute replaces or disables the rules
// for a route.
//
// Everything is compiled when the config is applied: matchers, regular
// expressions, CIDR ranges, CEL programs (through a ConditionCompiler, so
// the engine does not depend on a CEL implementation), stat counters.
// Evaluating a request reads the stream in place and builds nothing.
package rbac

import (
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/engine/filters/envoymatch"
	"strings"
	"sync"
	"sync/atomic"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Config type URLs this filter compiles.
const (
	TypeURL         = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
	TypeURLPerRoute = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
)

// TypeURLs are the type URLs to register the compiler under.
var TypeURLs = []string{TypeURL, TypeURLPerRoute}

// MetadataNamespace is the dynamic metadata namespace of the filter's
// results (Envoy's filter name).
const MetadataNamespace = "envoy.filters.http.rbac"

// Dynamic metadata keys, as Envoy's. The policy and result keys are
// prefixed with rules_stat_prefix (enforced) or shadow_rules_stat_prefix
// (shadow).
const (
	KeyShadowPolicy   = "shadow_effective_policy_id"
	KeyShadowResult   = "shadow_engine_result"
	KeyEnforcedPolicy = "enforced_effective_policy_id"
	KeyEnforcedResult = "enforced_engine_result"
	// The LOG action tells access loggers whether a policy matched with
	// KeyAccessLogHint in namespace CommonNamespace.
	CommonNamespace  = "envoy.common"
	KeyAccessLogHint = "access_log_hint"
)

// DefaultStatPrefix is the connection manager stat prefix used when the
// filter is compiled outside a connection manager (Compile, not
// CompileScoped): the one an HCM without stat_prefix gets.
const DefaultStatPrefix = "ingress_http"

// Denied is the body of the local reply to a denied request.
const Denied = "RBAC: access denied"

var (
	httpFields = envoymatch.KnownFields(&httprbacv3.RBAC{}, "rules", "rules_stat_prefix", "shadow_rules",
		"shadow_rules_stat_prefix", "track_per_rule_stats")
	perRouteFields = envoymatch.KnownFields(&httprbacv3.RBACPerRoute{}, "rbac")
)

// Compiler compiles *httprbacv3.RBAC (the filter) and
// *httprbacv3.RBACPerRoute (per-route overrides). It implements
// stream.ScopedCompiler: stats go under the owning connection manager's
// prefix, http.<stat_prefix>.rbac.
type Compiler struct {
	// Stats receives the filter's counters; nil keeps them in a store of
	// the compiler's own.
	Stats *observe.Store
	// Conditions compiles policy conditions; nil rejects configs that
	// have any.
	Conditions ConditionCompiler
}

// rules is a compiled RBAC filter config or per-route override: its
// engines (nil when absent) and the prefixes of its stats and metadata
// keys.
type rules struct {
	enforced, shadow                     *engine
	rulesPrefix, shadowPrefix            string
	perRuleStats                         bool
	enforcedPolicyKey, enforcedResultKey string
	shadowPolicyKey, shadowResultKey     string
	merged                               atomic.Pointer[mergedKeys] // see keysOver
}

type mergedKeys struct{ base, keys *rules }

func compileRules(m *httprbacv3.RBAC, conds ConditionCompiler) (*rules, error) {
	if m == nil {
		return nil, errors.New("rbac: no config")
	}
	if err := httpFields.Check(m); err != nil {
		return nil, fmt.Errorf("rbac: %w", err)
	}
	r := &rules{rulesPrefix: m.GetRulesStatPrefix(), shadowPrefix: m.GetShadowRulesStatPrefix(), perRuleStats: m.GetTrackPerRuleStats()}
	r.enforcedPolicyKey, r.enforcedResultKey = r.rulesPrefix+KeyEnforcedPolicy, r.rulesPrefix+KeyEnforcedResult
	r.shadowPolicyKey, r.shadowResultKey = r.shadowPrefix+KeyShadowPolicy, r.shadowPrefix+KeyShadowResult
	var err error
	if m.GetRules() != nil {
		if r.enforced, err = compileEngine(m.GetRules(), conds, false); err != nil {
			return nil, fmt.Errorf("rbac: %w", envoymatch.At("rules", err))
		}
	}
	if m.GetShadowRules() != nil {
		if r.shadow, err = compileEngine(m.GetShadowRules(), conds, true); err != nil {
			return nil, fmt.Errorf("rbac: %w", envoymatch.At("shadow_rules", err))
		}
	}
	// Envoy's own validation rules, for what the compile does not check
	// (xDS front-ends ran it already).
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("rbac: invalid config: %w", err)
	}
	return r, nil
}

// Compile implements stream.Compiler, with stats under DefaultStatPrefix.
func (c Compiler) Compile(cfg any) (stream.Factory, error) {
	return c.CompileScoped(cfg, stream.CompileScope{StatPrefix: DefaultStatPrefix})
}

// CompileScoped implements stream.ScopedCompiler.
func (c Compiler) CompileScoped(cfg any, scope stream.CompileScope) (stream.Factory, error) {
	m, ok := cfg.(*httprbacv3.RBAC)
	if !ok || m == nil {
		return nil, fmt.Errorf("rbac: config is %T, want *%s", cfg, (&httprbacv3.RBAC{}).ProtoReflect().Descriptor().FullName())
	}
	r, err := compileRules(m, c.Conditions)
	if err != nil {
		return nil, err
	}
	st := observe.OrDetached(c.Stats)
	prefix := scope.StatPrefix
	if prefix == "" {
		prefix = DefaultStatPrefix
	}
	return &factory{rules: r, stats: newFilterStats(st, prefix, r.rulesPrefix, r.shadowPrefix)}, nil
}

// CompilePerRoute implements stream.Compiler: an RBACPerRoute with rbac
// replaces the filter's rules (enforced and shadow) on the route; one
// without disables the filter there.
func (c Compiler) CompilePerRoute(cfg any) (any, error) {
	m, ok := cfg.(*httprbacv3.RBACPerRoute)
	if !ok || m == nil {
		return nil, fmt.Errorf("rbac: per-route config is %T, want *%s", cfg, (&httprbacv3.RBACPerRoute{}).ProtoReflect().Descriptor().FullName())
	}
	if err := perRouteFields.Check(m); err != nil {
		return nil, fmt.Errorf("rbac: %w", err)
	}
	if m.GetRbac() == nil {
		return &routeRules{rules: &rules{}}, nil
	}
	r, err := compileRules(m.GetRbac(), c.Conditions)
	if err != nil {
		return nil, err
	}
	return &routeRules{rules: r}, nil
}

// routeRules is a compiled per-route override; without engines it turns
// the filter off on its route.
type routeRules struct{ *rules }

// filterStats are Envoy's RBAC filter counters for one filter.
type filterStats struct {
	allowed, denied, shadowAllowed, shadowDenied *observe.Counter

	store                     *observe.Store
	hcm                       string
	rulesBase, shadowBase     string // "http.<hcm>.rbac.<prefix>." with Envoy's joins
	rulesLabels, shadowLabels []observe.Label
	mu                        sync.Mutex
	policies                  map[string]*policyStats // "e/"+name or "s/"+name
}

// joinPrefix is Envoy's statPrefixJoin: a dot between, unless a already
// ends with one.
func joinPrefix(a, b string) string {
	if b == "" {
		return a
	}
	if strings.HasSuffix(a, ".") {
		return a + b
	}
	return a + "." + b
}

func withDot(s string) string {
	if strings.HasSuffix(s, ".") {
		return s
	}
	return s + "."
}

func newFilterStats(st *observe.Store, hcm, rulesPrefix, shadowPrefix string) *filterStats {
	base := "http." + hcm + ".rbac."
	hcmLabel := observe.Label{Name: "envoy_http_conn_manager_prefix", Value: hcm}
	labels := func(prefix string) []observe.Label {
		if prefix == "" {
			return []observe.Label{hcmLabel}
		}
		return []observe.Label{hcmLabel, {Name: "envoy_rbac_http_prefix", Value: strings.TrimSuffix(prefix, ".")}}
	}
	fs := &filterStats{
		store:        st,
		hcm:          hcm,
		rulesBase:    withDot(joinPrefix(base, rulesPrefix)),
		shadowBase:   withDot(joinPrefix(base, shadowPrefix)),
		rulesLabels:  labels(rulesPrefix),
		shadowLabels: labels(shadowPrefix),
		policies:     map[string]*policyStats{},
	}
	rs := st.Scope(fs.rulesBase, "http_rbac_", fs.rulesLabels...)
	ss := st.Scope(fs.shadowBase, "http_rbac_", fs.shadowLabels...)
	fs.allowed, fs.denied = rs.Counter("allowed"), rs.Counter("denied")
	fs.shadowAllowed, fs.shadowDenied = ss.Counter("shadow_allowed"), ss.Counter("shadow_denied")
	return fs
}

// policy returns a policy's counters (track_per_rule_stats):
// http.<hcm>.rbac.<prefix>.policy.<name>.allowed, .denied, .shadow_allowed
// or .shadow_denied.
func (fs *filterStats) policy(name string, shadow bool) *policyStats {
	key := "e/" + name
	if shadow {
		key = "s/" + name
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if ps := fs.policies[key]; ps != nil {
		return ps
	}
	base, labels, a, d := fs.rulesBase, fs.rulesLabels, "allowed", "denied"
	if shadow {
		base, labels, a, d = fs.shadowBase, fs.shadowLabels, "shadow_allowed", "shadow_denied"
	}
	labels = append(labels[:len(labels):len(labels)], observe.Label{Name: "envoy_rbac_policy_name", Value: name})
	sc := fs.store.Scope(base+"policy."+name+".", "http_rbac_policy_", labels...)
	ps := &policyStats{owner: fs, allowed: sc.Counter(a), denied: sc.Counter(d)}
	fs.policies[key] = ps
	return ps
}

// factory is a compiled filter.
type factory struct {
	rules *rules
	stats *filterStats
}

// NewFilter implements stream.Factory.
func (f *factory) NewFilter(cb stream.Callbacks) stream.Filter {
	return &filter{f: f, cb: cb}
}

// filter is the filter of one stream. It acts on the request headers only.
type filter struct {
	stream.PassThrough
	f   *factory
	cb  stream.Callbacks
	req request
}

// OnRequestHeaders implements stream.Filter.
func (f *filter) OnRequestHeaders(h *header.Map, _ bool) stream.Status {
	r := f.f.rules
	keys := r
	if o, ok := f.cb.FilterOverride().(*routeRules); ok && o != nil {
		r = o.rules
		// Metadata keys follow the route's prefixes where it sets them;
		// stats stay the filter's, as in Envoy.
		keys = mergeKeys(f.f.rules, o.rules)
	}
	if r.enforced == nil && r.shadow == nil {
		return stream.Continue
	}
	st := f.f.stats
	f.req.reset(f.cb, h)
	var md *stream.Metadata
	if e := r.shadow; e != nil {
		ok, p := e.allowed(&f.req)
		result := "allowed"
		if ok {
			st.shadowAllowed.Inc()
		} else {
			st.shadowDenied.Inc()
			result = "denied"
		}
		if p != nil && r.perRuleStats {
			ps := p.counters(st, e.shadow)
			if ok {
				ps.allowed.Inc()
			} else {
				ps.denied.Inc()
			}
		}
		md = f.cb.DynamicMetadata()
		if p != nil {
			md.Set(MetadataNamespace, keys.shadowPolicyKey, p.nameValue)
		}
		md.Set(MetadataNamespace, keys.shadowResultKey, result)
	}
	e := r.enforced
	if e == nil {
		return stream.Continue
	}
	ok, p := e.allowed(&f.req)
	if md == nil {
		md = f.cb.DynamicMetadata()
	}
	if e.action == rbacv3.RBAC_LOG {
		md.Set(CommonNamespace, KeyAccessLogHint, p != nil)
	}
	if p != nil {
		md.Set(MetadataNamespace, keys.enforcedPolicyKey, p.nameValue)
		if r.perRuleStats {
			ps := p.counters(st, e.shadow)
			if ok {
				ps.allowed.Inc()
			} else {
				ps.denied.Inc()
			}
		}
	}
	if ok {
		st.allowed.Inc()
		md.Set(MetadataNamespace, keys.enforcedResultKey, "allowed")
		return stream.Continue
	}
	st.denied.Inc()
	md.Set(MetadataNamespace, keys.enforcedResultKey, "denied")
	details := detailsNone
	if p != nil {
		details = p.details
	}
	f.cb.SendLocalReply(403, Denied, nil, details)
	return stream.LocalReply
}

// OnDone implements stream.Filter.
func (f *filter) OnDone() { f.req = request{} }

// mergeKeys returns the metadata keys for a route override: the route's
// where its prefix is set, the filter's otherwise. Both are compiled, so
// this picks; it builds no string.
func mergeKeys(filter, route *rules) *rules {
	if route.rulesPrefix == "" && route.shadowPrefix == "" {
		return filter
	}
	if route.rulesPrefix != "" && route.shadowPrefix != "" {
		return route
	}
	return route.keysOver(filter)
}

// keysOver is mergeKeys for a route that sets only one prefix. The merged
// key set is made once per (route, filter) pair and kept.
func (r *rules) keysOver(filter *rules) *rules {
	if k := r.merged.Load(); k != nil && k.base == filter {
		return k.keys
	}
	k := &rules{
		enforcedPolicyKey: filter.enforcedPolicyKey, enforcedResultKey: filter.enforcedResultKey,
		shadowPolicyKey: filter.shadowPolicyKey, shadowResultKey: filter.shadowResultKey,
	}
	if r.rulesPrefix != "" {
		k.enforcedPolicyKey, k.enforcedResultKey = r.enforcedPolicyKey, r.enforcedResultKey
	}
	if r.shadowPrefix != "" {
		k.shadowPolicyKey, k.shadowResultKey = r.shadowPolicyKey, r.shadowResultKey
	}
	r.merged.Store(&mergedKeys{base: filter, keys: k})
	return k
}
