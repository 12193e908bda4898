package compile

import (
	"fmt"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/parser"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/config"
)

// Lifted is a route condition split into what the route table matches
// natively and the CEL that remains.
type Lifted struct {
	// Match holds the lifted matchers: a path specifier (Path or Prefix)
	// and header matchers. Its Condition is not set.
	Match config.RouteMatch
	// Rest is the CEL source of the conjuncts that were not lifted, joined
	// with &&; "" when everything was lifted.
	Rest string
	// Lifted describes each lifted conjunct ("prefix /api/", "header
	// x-canary exact true", ...), in order.
	Lifted []string
}

// Lift splits a bool CEL condition (already checked by dsl/expr) into
// route matchers and a remainder. It works on cel-go's checked AST:
// the top-level conjunction (&&) is flattened, and each conjunct of one of
// these shapes, with a string literal L, becomes a matcher:
//
//	request.path == L                 path L (when L has no ? or #) and header :path exact L
//	request.url_path == L             path L (L without ? or #)
//	request.path.startsWith(L)        prefix L (L without ? or #; else header :path prefix L)
//	request.url_path.startsWith(L)    prefix L (L without ? or #)
//	request.headers["k"] == L         header k exact L
//	request.method == L               header :method exact L
//	request.host == L                 header :authority exact L
//
// (either side of == may be the literal). A second path conjunct becomes a
// :path header matcher. Every lifted matcher is exactly equivalent to its
// conjunct, including for a missing header (CEL: a "no such key" error,
// which a `when` treats as false; matcher: no match), so lifting never
// changes which route matches a request: routes keep their order and
// first-match semantics. Everything else stays CEL (Rest).
func Lift(cond string) (*Lifted, error) {
	env, err := liftEnv()
	if err != nil {
		return nil, err
	}
	checked, iss := env.Compile(cond)
	if iss.Err() != nil {
		return nil, iss.Err()
	}
	a := checked.NativeRep()
	l := &lifter{refs: a.ReferenceMap()}
	var rest []ast.Expr
	for _, c := range conjuncts(a.Expr(), nil) {
		if !l.lift(c) {
			rest = append(rest, c)
		}
	}
	out := &Lifted{Match: l.m, Lifted: l.desc}
	switch len(rest) {
	case 0:
	case 1:
		if out.Rest, err = parser.Unparse(rest[0], a.SourceInfo()); err != nil {
			return nil, err
		}
	default:
		parts := make([]string, len(rest))
		for i, r := range rest {
			s, err := parser.Unparse(r, a.SourceInfo())
			if err != nil {
				return nil, err
			}
			parts[i] = "(" + s + ")"
		}
		out.Rest = strings.Join(parts, " && ")
	}
	return out, nil
}

var (
	liftOnce sync.Once
	liftCEL  *cel.Env
	liftErr  error
)

// liftEnv declares the attributes exactly as dsl/expr does, to get the
// checked AST that dsl/expr does not expose.
func liftEnv() (*cel.Env, error) {
	liftOnce.Do(func() {
		opts := []cel.EnvOption{ext.Strings(), ext.Encoders(), cel.OptionalTypes(), cel.EnableMacroCallTracking()}
		for i, name := range attr.Names {
			if name == "" {
				continue
			}
			var t *cel.Type
			switch attr.Kinds[i] {
			case attr.KindString:
				t = cel.StringType
			case attr.KindInt:
				t = cel.IntType
			case attr.KindBool:
				t = cel.BoolType
			case attr.KindTime:
				t = cel.TimestampType
			case attr.KindHeaders:
				t = cel.MapType(cel.StringType, cel.StringType)
			default:
				liftErr = fmt.Errorf("compile: attribute %s: unknown kind", name)
				return
			}
			opts = append(opts, cel.Variable(name, t))
		}
		liftCEL, liftErr = cel.NewEnv(opts...)
	})
	return liftCEL, liftErr
}

// conjuncts flattens a tree of && into its operands, in source order.
func conjuncts(e ast.Expr, out []ast.Expr) []ast.Expr {
	if e.Kind() == ast.CallKind && e.AsCall().FunctionName() == operators.LogicalAnd {
		for _, arg := range e.AsCall().Args() {
			out = conjuncts(arg, out)
		}
		return out
	}
	return append(out, e)
}

type lifter struct {
	refs map[int64]*ast.ReferenceInfo
	m    config.RouteMatch
	desc []string
}

// attribute returns the attribute an identifier of the checked AST refers to.
func (l *lifter) attribute(e ast.Expr) string {
	if e.Kind() != ast.IdentKind {
		return ""
	}
	if r := l.refs[e.ID()]; r != nil && r.Value == nil {
		return r.Name
	}
	return ""
}

func stringLit(e ast.Expr) (string, bool) {
	if e.Kind() != ast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

// headerKey recognizes request.headers["k"].
func (l *lifter) headerKey(e ast.Expr) (string, bool) {
	if e.Kind() != ast.CallKind {
		return "", false
	}
	c := e.AsCall()
	if c.FunctionName() != operators.Index || len(c.Args()) != 2 || l.attribute(c.Args()[0]) != "request.headers" {
		return "", false
	}
	k, ok := stringLit(c.Args()[1])
	if !ok || k == "" {
		return "", false
	}
	return strings.ToLower(k), true
}

func (l *lifter) header(name string, kind config.StringMatchKind, v string) {
	l.m.Headers = append(l.m.Headers, config.HeaderMatcher{Name: name, Match: &config.StringMatcher{Kind: kind, Value: v}})
	k := "exact"
	if kind == config.MatchPrefix {
		k = "prefix"
	}
	l.desc = append(l.desc, fmt.Sprintf("header %s %s %s", name, k, v))
}

func (l *lifter) pathFree() bool { return l.m.Path == "" && l.m.Prefix == "" }

func plainPath(s string) bool { return !strings.ContainsAny(s, "?#") }

// lift turns one conjunct into matchers, or reports false.
func (l *lifter) lift(e ast.Expr) bool {
	if e.Kind() != ast.CallKind {
		return false
	}
	c := e.AsCall()
	switch {
	case c.FunctionName() == operators.Equals && len(c.Args()) == 2:
		x, y := c.Args()[0], c.Args()[1]
		lit, ok := stringLit(y)
		if !ok {
			x, y = y, x
			if lit, ok = stringLit(y); !ok {
				return false
			}
		}
		if k, ok := l.headerKey(x); ok {
			l.header(k, config.MatchExact, lit)
			return true
		}
		if lit == "" {
			return false // an absent pseudo-header reads as "" in CEL but fails a matcher
		}
		switch l.attribute(x) {
		case "request.path":
			if plainPath(lit) && l.pathFree() {
				l.m.Path = lit
				l.desc = append(l.desc, "path "+lit)
			}
			// Path ignores the query; the full :path must match too.
			l.header(":path", config.MatchExact, lit)
			return true
		case "request.url_path":
			if !plainPath(lit) || !l.pathFree() {
				return false
			}
			l.m.Path = lit
			l.desc = append(l.desc, "path "+lit)
			return true
		case "request.method":
			l.header(":method", config.MatchExact, lit)
			return true
		case "request.host":
			l.header(":authority", config.MatchExact, lit)
			return true
		}
	case c.FunctionName() == "startsWith" && c.IsMemberFunction() && len(c.Args()) == 1:
		lit, ok := stringLit(c.Args()[0])
		if !ok || lit == "" {
			return false
		}
		switch name := l.attribute(c.Target()); {
		case name != "request.path" && name != "request.url_path":
			return false
		case plainPath(lit) && l.pathFree():
			l.m.Prefix = lit
			l.desc = append(l.desc, "prefix "+lit)
			return true
		case plainPath(lit) || name == "request.path":
			// A path prefix without ? or # is the same on the full
			// :path, the URL path and the path routes match on.
			l.header(":path", config.MatchPrefix, lit)
			return true
		}
	}
	return false
}

// hashPolicy maps the key of ring_hash(EXPR) / maglev(EXPR) to a hash
// policy: request.headers["k"] or source.address.
func hashPolicy(src string) (config.HashPolicy, bool) {
	env, err := liftEnv()
	if err != nil {
		return config.HashPolicy{}, false
	}
	checked, iss := env.Compile(src)
	if iss.Err() != nil {
		return config.HashPolicy{}, false
	}
	a := checked.NativeRep()
	l := &lifter{refs: a.ReferenceMap()}
	if k, ok := l.headerKey(a.Expr()); ok {
		return config.HashPolicy{Header: k}, true
	}
	if l.attribute(a.Expr()) == "source.address" {
		return config.HashPolicy{SourceIP: true}, true
	}
	return config.HashPolicy{}, false
}
