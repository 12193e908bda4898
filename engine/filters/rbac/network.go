package rbac

// Envoy's network RBAC filter (envoy.filters.network.rbac), which Istio
// puts before tcp_proxy for TCP AuthorizationPolicies: the HTTP filter's
// compiled policies, evaluated once per connection on its attributes.

import (
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/engine/filters/envoymatch"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// NetworkTypeURL is the network filter's config type URL.
const NetworkTypeURL = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"

// NetworkMetadataNamespace is the dynamic metadata namespace of the
// network filter's results (Envoy's filter name).
const NetworkMetadataNamespace = "envoy.filters.network.rbac"

var networkFields = envoymatch.KnownFields(&netrbacv3.RBAC{}, "rules", "shadow_rules", "shadow_rules_stat_prefix",
	"stat_prefix", "enforcement_type")

// emptyHeaders is the request a connection presents to policies: none of
// its headers exist, as the empty header map Envoy's network filter
// passes. It is never written.
var emptyHeaders header.Map

// networkRules is a compiled network RBAC config.
type networkRules struct {
	enforced, shadow                 *engine
	shadowPolicyKey, shadowResultKey string
	allowed, denied                  *observe.Counter
	shadowAllowed, shadowDenied      *observe.Counter
}

// CompileNetworkFilter implements stream.NetworkCompiler for
// *netrbacv3.RBAC. The decision is made once per connection, when it is
// accepted (before the upstream connection is opened and before any byte
// is forwarded), on its attributes: addresses, ports, TLS peer and SNI.
// Stats are <stat_prefix>rbac.allowed, .denied, and
// <stat_prefix>rbac.<shadow_rules_stat_prefix>shadow_allowed,
// .shadow_denied.
func (c Compiler) CompileNetworkFilter(cfg any) (stream.NetworkFactory, error) {
	m, ok := cfg.(*netrbacv3.RBAC)
	if !ok || m == nil {
		return nil, fmt.Errorf("rbac: network config is %T, want *%s", cfg, (&netrbacv3.RBAC{}).ProtoReflect().Descriptor().FullName())
	}
	if err := networkFields.Check(m); err != nil {
		return nil, fmt.Errorf("rbac: %w", err)
	}
	switch m.GetEnforcementType() {
	case netrbacv3.RBAC_ONE_TIME_ON_FIRST_BYTE:
	case netrbacv3.RBAC_CONTINUOUS:
		return nil, fmt.Errorf("rbac: %w", envoymatch.At("enforcement_type",
			fmt.Errorf("CONTINUOUS %w: connections are authorized once, when accepted (use ONE_TIME_ON_FIRST_BYTE)", envoymatch.ErrUnsupported)))
	default:
		return nil, fmt.Errorf("rbac: %w", envoymatch.At("enforcement_type", fmt.Errorf("%v %w", m.GetEnforcementType(), envoymatch.ErrUnsupported)))
	}
	if m.GetStatPrefix() == "" {
		return nil, fmt.Errorf("rbac: %w", envoymatch.At("stat_prefix", errors.New("must not be empty")))
	}
	r := &networkRules{}
	var err error
	if m.GetRules() != nil {
		if r.enforced, err = compileEngine(m.GetRules(), c.Conditions, false); err != nil {
			return nil, fmt.Errorf("rbac: %w", envoymatch.At("rules", err))
		}
	}
	if m.GetShadowRules() != nil {
		if r.shadow, err = compileEngine(m.GetShadowRules(), c.Conditions, true); err != nil {
			return nil, fmt.Errorf("rbac: %w", envoymatch.At("shadow_rules", err))
		}
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("rbac: invalid config: %w", err)
	}
	sp := m.GetShadowRulesStatPrefix()
	r.shadowPolicyKey, r.shadowResultKey = sp+KeyShadowPolicy, sp+KeyShadowResult
	st := observe.OrDetached(c.Stats)
	// Envoy has no tag extraction for this filter's prefix: the
	// Prometheus name is the whole stat name.
	base := m.GetStatPrefix() + "rbac."
	rs := st.Scope(base, promName(base))
	ss := st.Scope(base+sp, promName(base+sp))
	r.allowed, r.denied = rs.Counter("allowed"), rs.Counter("denied")
	r.shadowAllowed, r.shadowDenied = ss.Counter("shadow_allowed"), ss.Counter("shadow_denied")
	return r, nil
}

// promName is a stat name prefix as a Prometheus name prefix.
func promName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// NewNetworkFilter implements stream.NetworkFactory.
func (r *networkRules) NewNetworkFilter(cb stream.NetworkCallbacks) stream.NetworkFilter {
	return &networkFilter{r: r, cb: cb}
}

// networkFilter is the filter of one connection.
type networkFilter struct {
	stream.NetworkPassThrough
	r  *networkRules
	cb stream.NetworkCallbacks
}

// OnNewConnection implements stream.NetworkFilter: shadow rules are
// evaluated and recorded, then the rules decide; a denied connection is
// closed before anything is read from it or sent upstream.
func (f *networkFilter) OnNewConnection() stream.NetworkStatus {
	r := f.r
	if r.enforced == nil && r.shadow == nil {
		return stream.NetworkContinue
	}
	var req request
	req.reset(f.cb, &emptyHeaders)
	md := f.cb.DynamicMetadata()
	if e := r.shadow; e != nil {
		ok, p := e.allowed(&req)
		result := "allowed"
		if ok {
			r.shadowAllowed.Inc()
		} else {
			r.shadowDenied.Inc()
			result = "denied"
		}
		if p != nil {
			md.Set(NetworkMetadataNamespace, r.shadowPolicyKey, p.nameValue)
		}
		md.Set(NetworkMetadataNamespace, r.shadowResultKey, result)
	}
	e := r.enforced
	if e == nil {
		return stream.NetworkContinue
	}
	ok, p := e.allowed(&req)
	if e.action == rbacv3.RBAC_LOG {
		md.Set(CommonNamespace, KeyAccessLogHint, p != nil)
	}
	if p != nil {
		md.Set(NetworkMetadataNamespace, KeyEnforcedPolicy, p.nameValue)
	}
	if ok {
		r.allowed.Inc()
		md.Set(NetworkMetadataNamespace, KeyEnforcedResult, "allowed")
		return stream.NetworkContinue
	}
	r.denied.Inc()
	md.Set(NetworkMetadataNamespace, KeyEnforcedResult, "denied")
	details := detailsNone
	if p != nil {
		details = p.details
	}
	if log := f.cb.Logger(); log != nil {
		log.Debug("rbac: connection denied", "conn", f.cb.ConnectionID(), "details", details)
	}
	f.cb.Close()
	return stream.NetworkStopIteration
}
