// Package cors is Envoy's CORS filter (envoy.filters.http.cors, what
// Istio's VirtualService corsPolicy becomes): it answers preflight requests
// (OPTIONS with Origin and Access-Control-Request-Method) itself when the
// origin is allowed, and adds access-control-allow-origin (with
// -allow-credentials and -expose-headers) to the responses of other
// requests from an allowed origin.
//
// The filter's own config (Cors) is empty: the policy is a CorsPolicy in
// typed_per_filter_config, per virtual host or per route. As Envoy, each
// field comes from the most specific policy that sets it, except
// filter_enabled and shadow_enabled, which only the most specific policy
// decides. A route without any policy is left alone. Runtime keys are
// accepted and change nothing (Sluice has no runtime): a share is its
// default_value.
//
// Stats: http.<stat_prefix>.cors.origin_valid and origin_invalid, counted
// for requests with an Origin header while the filter is enabled or in
// shadow mode.
package cors

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"

	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-proxy/sluice/engine/filters/envoymatch"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// TypeURL is the filter's config type; PolicyTypeURL its per-route config.
const (
	TypeURL       = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
	PolicyTypeURL = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
)

// DefaultStatPrefix is the connection manager stat prefix used outside a
// connection manager (Compile rather than CompileScoped).
const DefaultStatPrefix = "ingress_http"

// ResponseDetails is the response code details of a preflight answer.
const ResponseDetails = "cors_response"

// Header names the filter reads and writes.
const (
	HeaderOrigin                = "origin"
	HeaderRequestMethod         = "access-control-request-method"
	HeaderRequestHeaders        = "access-control-request-headers"
	HeaderRequestPrivateNetwork = "access-control-request-private-network"
	HeaderAllowOrigin           = "access-control-allow-origin"
	HeaderAllowCredentials      = "access-control-allow-credentials"
	HeaderAllowMethods          = "access-control-allow-methods"
	HeaderAllowHeaders          = "access-control-allow-headers"
	HeaderMaxAge                = "access-control-max-age"
	HeaderExposeHeaders         = "access-control-expose-headers"
	HeaderAllowPrivateNetwork   = "access-control-allow-private-network"
)

const (
	headerMethod  = ":method"
	methodOptions = "OPTIONS"
	valueTrue     = "true"
	allowAll      = "*"
)

var (
	corsFields   = envoymatch.KnownFields(&corsv3.Cors{})
	policyFields = envoymatch.KnownFields(&corsv3.CorsPolicy{}, "allow_origin_string_match", "allow_methods",
		"allow_headers", "expose_headers", "max_age", "allow_credentials", "filter_enabled", "shadow_enabled",
		"allow_private_network_access", "forward_not_matching_preflights")
)

// optBool is a BoolValue: unset, false or true.
type optBool uint8

const (
	unset optBool = iota
	no
	yes
)

func compileBool(v *wrapperspb.BoolValue) optBool {
	switch {
	case v == nil:
		return unset
	case v.GetValue():
		return yes
	}
	return no
}

func (b optBool) or(def bool) bool {
	if b == unset {
		return def
	}
	return b == yes
}

// Policy is one CorsPolicy compiled, or the merge of a route's policy
// over its virtual host's.
type Policy struct {
	origins []envoymatch.StringMatcher
	// anyOrigin: a matcher matches "*", which allows every origin (Envoy
	// tests "*" before the origin itself).
	anyOrigin                                         bool
	allowMethods, allowHeaders, exposeHeaders, maxAge string
	credentials, privateNetwork, forwardNotMatching   optBool
	enabled, shadow                                   envoymatch.Fraction
	enabledSet                                        bool // filter_enabled is set (else 100%)
	shadowSet                                         bool // shadow_enabled is set (else 0%)
}

// CompilePolicy compiles a CorsPolicy; errors name the field's path.
func CompilePolicy(m *corsv3.CorsPolicy) (*Policy, error) {
	if m == nil {
		return nil, errors.New("config is nil")
	}
	if err := policyFields.Check(m); err != nil {
		return nil, err
	}
	p := &Policy{
		allowMethods:       m.GetAllowMethods(),
		allowHeaders:       m.GetAllowHeaders(),
		exposeHeaders:      m.GetExposeHeaders(),
		maxAge:             m.GetMaxAge(),
		credentials:        compileBool(m.GetAllowCredentials()),
		privateNetwork:     compileBool(m.GetAllowPrivateNetworkAccess()),
		forwardNotMatching: compileBool(m.GetForwardNotMatchingPreflights()),
	}
	for i, sm := range m.GetAllowOriginStringMatch() {
		c, err := envoymatch.CompileString(sm)
		if err != nil {
			return nil, envoymatch.AtIndex("allow_origin_string_match", i, err)
		}
		p.origins = append(p.origins, c)
		p.anyOrigin = p.anyOrigin || c.Match(allowAll)
	}
	var err error
	if fe := m.GetFilterEnabled(); fe != nil {
		if p.enabled, err = envoymatch.CompileRuntimeFraction(fe); err != nil {
			return nil, envoymatch.At("filter_enabled", err)
		}
		p.enabledSet = true
	}
	if se := m.GetShadowEnabled(); se != nil {
		if p.shadow, err = envoymatch.CompileRuntimeFraction(se); err != nil {
			return nil, envoymatch.At("shadow_enabled", err)
		}
		p.shadowSet = true
	}
	return p, nil
}

// Merge returns the policy a route gets from its own (p) and its virtual
// host's (parent): each field from p when p sets it, else from parent;
// filter_enabled and shadow_enabled from p alone, as Envoy.
func (p *Policy) Merge(parent *Policy) *Policy {
	if parent == nil {
		return p
	}
	out := *p
	if len(out.origins) == 0 {
		out.origins, out.anyOrigin = parent.origins, parent.anyOrigin
	}
	for _, f := range []struct {
		dst *string
		src string
	}{
		{&out.allowMethods, parent.allowMethods}, {&out.allowHeaders, parent.allowHeaders},
		{&out.exposeHeaders, parent.exposeHeaders}, {&out.maxAge, parent.maxAge},
	} {
		if *f.dst == "" {
			*f.dst = f.src
		}
	}
	for _, f := range []struct {
		dst *optBool
		src optBool
	}{
		{&out.credentials, parent.credentials}, {&out.privateNetwork, parent.privateNetwork},
		{&out.forwardNotMatching, parent.forwardNotMatching},
	} {
		if *f.dst == unset {
			*f.dst = f.src
		}
	}
	return &out
}

// Allows reports whether the policy allows an origin.
func (p *Policy) Allows(origin string) bool {
	if p.anyOrigin {
		return true
	}
	for i := range p.origins {
		if p.origins[i].Match(origin) {
			return true
		}
	}
	return false
}

func compilePerRoute(cfg any) (*Policy, error) {
	m, ok := cfg.(*corsv3.CorsPolicy)
	if !ok || m == nil {
		return nil, fmt.Errorf("cors: per-route config is %T, want *envoy.extensions.filters.http.cors.v3.CorsPolicy", cfg)
	}
	p, err := CompilePolicy(m)
	if err != nil {
		return nil, fmt.Errorf("cors: %w", err)
	}
	return p, nil
}

// Compiler compiles the filter (*corsv3.Cors) and its per-route policies
// (*corsv3.CorsPolicy). It implements stream.ScopedCompiler (stats go under
// http.<stat_prefix>.cors.) and stream.PerRouteMerger.
type Compiler struct {
	// Stats receives the filter's stats; nil keeps them in a store of the
	// compiler's own.
	Stats *observe.Store
	// Rand returns a uniform number in [0, n); nil uses math/rand/v2,
	// whose global source is per-thread and takes no lock.
	Rand func(n uint64) uint64
}

// Compile implements stream.Compiler, with stats under DefaultStatPrefix.
func (c Compiler) Compile(cfg any) (stream.Factory, error) {
	return c.CompileScoped(cfg, stream.CompileScope{StatPrefix: DefaultStatPrefix})
}

// CompileScoped implements stream.ScopedCompiler.
func (c Compiler) CompileScoped(cfg any, scope stream.CompileScope) (stream.Factory, error) {
	m, ok := cfg.(*corsv3.Cors)
	if !ok || m == nil {
		return nil, fmt.Errorf("cors: config is %T, want *envoy.extensions.filters.http.cors.v3.Cors", cfg)
	}
	if err := corsFields.Check(m); err != nil {
		return nil, fmt.Errorf("cors: %w", err)
	}
	st := observe.OrDetached(c.Stats)
	prefix := scope.StatPrefix
	if prefix == "" {
		prefix = DefaultStatPrefix
	}
	sc := st.Scope("http."+prefix+".cors.", "http_cors_",
		observe.Label{Name: "envoy_http_conn_manager_prefix", Value: prefix})
	rnd := c.Rand
	if rnd == nil {
		rnd = rand.Uint64N
	}
	f := &factory{rand: rnd, valid: sc.Counter("origin_valid"), invalid: sc.Counter("origin_invalid")}
	f.pool.New = func() any { return &filter{f: f} }
	return f, nil
}

// CompilePerRoute implements stream.Compiler.
func (c Compiler) CompilePerRoute(cfg any) (any, error) { return compilePerRoute(cfg) }

// MergePerRoute implements stream.PerRouteMerger: a route's policy takes
// the fields it leaves unset from its virtual host's.
func (c Compiler) MergePerRoute(parent, child any) any {
	cp, ok := child.(*Policy)
	if !ok {
		return child
	}
	pp, _ := parent.(*Policy)
	return cp.Merge(pp)
}

type factory struct {
	rand           func(uint64) uint64
	valid, invalid *observe.Counter
	// Filters are pooled: a stream without a CORS policy or an Origin
	// header then costs no allocation.
	pool sync.Pool
}

func (f *factory) NewFilter(cb stream.Callbacks) stream.Filter {
	x := f.pool.Get().(*filter)
	x.cb = cb
	return x
}

type filter struct {
	stream.PassThrough
	f  *factory
	cb stream.Callbacks
	// p and origin are set for a request whose Origin the enforced policy
	// allows: its response gets the allow-origin headers.
	p      *Policy
	origin string
}

func (x *filter) OnRequestHeaders(h *header.Map, _ bool) stream.Status {
	p, _ := x.cb.FilterOverride().(*Policy)
	if p == nil {
		return stream.Continue
	}
	origin, _ := h.Get(HeaderOrigin)
	if origin == "" {
		return stream.Continue
	}
	enforce := !p.enabledSet || p.enabled.Hit(x.f.rand)
	if !enforce && !(p.shadowSet && p.shadow.Hit(x.f.rand)) {
		return stream.Continue
	}
	allowed := p.Allows(origin)
	if allowed {
		x.f.valid.Inc()
	} else {
		x.f.invalid.Inc()
	}
	if !enforce {
		// Shadow mode: counted, not enforced.
		return stream.Continue
	}
	if allowed {
		x.p, x.origin = p, origin
	}
	if h.Value(headerMethod) != methodOptions {
		return stream.Continue
	}
	reqMethod := h.Value(HeaderRequestMethod)
	if reqMethod == "" {
		return stream.Continue
	}
	if !allowed && p.forwardNotMatching.or(true) {
		return stream.Continue
	}
	x.cb.SendLocalReply(200, "", preflightHeaders(p, h, origin, allowed, reqMethod), ResponseDetails)
	x.p, x.origin = nil, ""
	return stream.LocalReply
}

// preflightHeaders are the headers of Envoy's answer to a preflight.
func preflightHeaders(p *Policy, h *header.Map, origin string, allowed bool, reqMethod string) []header.Field {
	hs := make([]header.Field, 0, 6)
	if allowed {
		hs = append(hs, header.Field{Name: HeaderAllowOrigin, Value: origin})
	}
	if p.credentials.or(false) {
		hs = append(hs, header.Field{Name: HeaderAllowCredentials, Value: valueTrue})
	}
	switch p.allowMethods {
	case "":
	case allowAll:
		hs = append(hs, header.Field{Name: HeaderAllowMethods, Value: reqMethod})
	default:
		hs = append(hs, header.Field{Name: HeaderAllowMethods, Value: p.allowMethods})
	}
	switch p.allowHeaders {
	case "":
	case allowAll:
		// Envoy echoes the requested headers; an empty header says nothing.
		if v := h.Value(HeaderRequestHeaders); v != "" {
			hs = append(hs, header.Field{Name: HeaderAllowHeaders, Value: v})
		}
	default:
		hs = append(hs, header.Field{Name: HeaderAllowHeaders, Value: p.allowHeaders})
	}
	if p.maxAge != "" {
		hs = append(hs, header.Field{Name: HeaderMaxAge, Value: p.maxAge})
	}
	if p.privateNetwork.or(false) && h.Value(HeaderRequestPrivateNetwork) == valueTrue {
		hs = append(hs, header.Field{Name: HeaderAllowPrivateNetwork, Value: valueTrue})
	}
	return hs
}

func (x *filter) OnResponseHeaders(h *header.Map, _ bool) stream.Status {
	p := x.p
	if p == nil {
		return stream.Continue
	}
	h.Set(HeaderAllowOrigin, x.origin)
	if p.credentials.or(false) {
		h.Set(HeaderAllowCredentials, valueTrue)
	}
	if p.exposeHeaders != "" {
		h.Set(HeaderExposeHeaders, p.exposeHeaders)
	}
	return stream.Continue
}

func (x *filter) OnDone() {
	*x = filter{f: x.f}
	x.f.pool.Put(x)
}
