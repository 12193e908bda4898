package rbac

import (
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/engine/filters/envoymatch"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"unicode"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
)

// ConditionCompiler compiles a policy's CEL condition, given as Envoy's
// `condition` (a google.api.expr.v1alpha1.Expr) or `checked_condition` (a
// CheckedExpr), into a condition evaluated against the stream. It runs at
// config time; cmd/sluice wires one built on the DSL's CEL environment, so
// this package does not depend on a CEL implementation.
type ConditionCompiler func(expr proto.Message) (config.Condition, error)

var (
	rbacFields = envoymatch.KnownFields(&rbacv3.RBAC{}, "action", "policies")
	// cel_config only enables CEL extensions (string conversion,
	// concatenation, functions) that the DSL's environment always has.
	policyFields = envoymatch.KnownFields(&rbacv3.Policy{}, "permissions", "principals", "condition", "checked_condition",
		"cel_config")
)

// engine is one compiled RBAC: an action and its policies in name order
// (Envoy keeps them in a sorted map; the first that matches is the
// effective policy).
type engine struct {
	action   rbacv3.RBAC_Action
	policies []*policy
	shadow   bool // a shadow engine (its policies count shadow_* stats)
}

// policy is one compiled policy. It matches when a permission, a
// principal and the condition (if any) all match.
type policy struct {
	name        string
	nameValue   any    // name as an `any`, boxed once for dynamic metadata
	details     string // the response details of a deny it causes
	permissions matcher
	principals  matcher
	cond        config.Condition
	// stats are the policy's own counters (track_per_rule_stats), made on
	// first use for the filter that evaluates it.
	stats atomic.Pointer[policyStats]
}

func compileEngine(m *rbacv3.RBAC, conds ConditionCompiler, shadow bool) (*engine, error) {
	if err := rbacFields.Check(m); err != nil {
		return nil, err
	}
	e := &engine{action: m.GetAction(), shadow: shadow}
	switch e.action {
	case rbacv3.RBAC_ALLOW, rbacv3.RBAC_DENY, rbacv3.RBAC_LOG:
	default:
		return nil, envoymatch.At("action", fmt.Errorf("%v %w", e.action, envoymatch.ErrUnsupported))
	}
	names := make([]string, 0, len(m.GetPolicies()))
	for n := range m.GetPolicies() {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p, err := compilePolicy(n, m.GetPolicies()[n], conds)
		if err != nil {
			return nil, envoymatch.At(fmt.Sprintf("policies[%s]", n), err)
		}
		e.policies = append(e.policies, p)
	}
	return e, nil
}

func compilePolicy(name string, m *rbacv3.Policy, conds ConditionCompiler) (*policy, error) {
	if m == nil {
		return nil, errors.New("a policy is required")
	}
	if err := policyFields.Check(m); err != nil {
		return nil, err
	}
	p := &policy{name: name, nameValue: name, details: responseDetails(name)}
	perms, err := compileSet(m.GetPermissions(), compilePermission, "permissions")
	if err != nil {
		return nil, err
	}
	p.permissions = simplify(orMatcher(perms))
	ids, err := compileSet(m.GetPrincipals(), compilePrincipal, "principals")
	if err != nil {
		return nil, err
	}
	p.principals = simplify(orMatcher(ids))

	var expr proto.Message
	field := ""
	switch {
	case m.GetCondition() != nil && m.GetCheckedCondition() != nil:
		return nil, errors.New("only one of condition and checked_condition may be set")
	case m.GetCondition() != nil:
		expr, field = m.GetCondition(), "condition"
	case m.GetCheckedCondition() != nil:
		expr, field = m.GetCheckedCondition(), "checked_condition"
	}
	if expr != nil {
		if conds == nil {
			return nil, envoymatch.At(field, errors.New("CEL conditions are not available in this build"))
		}
		if p.cond, err = conds(expr); err != nil {
			return nil, envoymatch.At(field, err)
		}
	}
	return p, nil
}

// responseDetails is Envoy's rbac_access_denied_matched_policy[NAME], with
// white space in the name replaced so access logs keep their fields.
func responseDetails(name string) string {
	return "rbac_access_denied_matched_policy[" + strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return '_'
		}
		return r
	}, name) + "]"
}

const detailsNone = "rbac_access_denied_matched_policy[none]"

// match returns the first policy that matches, or nil.
func (e *engine) match(r *request) *policy {
	for _, p := range e.policies {
		if p.match(r) {
			return p
		}
	}
	return nil
}

// allowed applies the engine's action: ALLOW allows when a policy matched,
// DENY when none did, LOG always.
func (e *engine) allowed(r *request) (bool, *policy) {
	p := e.match(r)
	switch e.action {
	case rbacv3.RBAC_ALLOW:
		return p != nil, p
	case rbacv3.RBAC_DENY:
		return p == nil, p
	}
	return true, p
}

type logged interface{ Logger() *slog.Logger }

func (p *policy) match(r *request) bool {
	if !p.permissions.match(r) || !p.principals.match(r) {
		return false
	}
	if p.cond == nil {
		return true
	}
	ok, err := p.cond.Eval(r.src)
	if err != nil {
		// As Envoy: a condition that fails to evaluate does not match.
		// Under ALLOW that denies (unless another policy allows); under
		// DENY it lets the request through.
		if l, isLogged := r.src.(logged); isLogged {
			if log := l.Logger(); log != nil {
				log.Debug("rbac: policy condition failed; the policy does not match", "policy", p.name, "error", err)
			}
		}
		return false
	}
	return ok
}

// policyStats are one policy's counters under one filter's stats.
type policyStats struct {
	owner           *filterStats
	allowed, denied *observe.Counter
}

func (p *policy) counters(fs *filterStats, shadow bool) *policyStats {
	if ps := p.stats.Load(); ps != nil && ps.owner == fs {
		return ps
	}
	ps := fs.policy(p.name, shadow)
	p.stats.Store(ps)
	return ps
}
