package expr

// CEL expressions that arrive as protobuf messages rather than text: the
// `condition` (a parsed expression) and `checked_condition` of Envoy's RBAC
// policies, in the google.api.expr.v1alpha1 messages Envoy's protos use or
// the cel.expr messages that succeeded them.

import (
	"fmt"

	"github.com/google/cel-go/cel"
	celpb "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/config"
)

// CompileProto compiles an expression given as a protobuf message: an Expr,
// ParsedExpr or CheckedExpr of cel.expr or google.api.expr.v1alpha1 (the
// two are wire-compatible). A checked expression is checked again in this
// environment; its type annotations came from another one.
//
// The expression is printed back to CEL text and compiled like source, so
// its errors, Source and config dumps read as CEL; an expression that does
// not print (a comprehension without its macro call recorded) is compiled
// from the tree directly.
func (e *Env) CompileProto(m proto.Message, want Type) (*Program, error) {
	pe, err := parsedExpr(m)
	if err != nil {
		return nil, err
	}
	a := cel.ParsedExprToAst(pe)
	if src, err := cel.AstToString(a); err == nil {
		if parsed, iss := e.cel.Parse(src); iss.Err() == nil {
			p, err := e.compileParsed(src, parsed, want)
			if err != nil {
				return nil, fmt.Errorf("expr: %s: %w", src, err)
			}
			return p, nil
		}
	}
	// Not printable as CEL, or printed as text that does not parse back
	// (a call of an operator by a name the parser would not produce): the
	// checker reports on the tree itself.
	p, err := e.compileParsed("", a, want)
	if err != nil {
		return nil, fmt.Errorf("expr: %w", err)
	}
	return p, nil
}

// ProtoCondition compiles a bool expression given as a protobuf message
// (see CompileProto) into a condition for an engine filter that takes
// Envoy's protos: cmd/sluice hands it to the RBAC filter, so policy
// conditions read the same attributes as the DSL.
func (e *Env) ProtoCondition(m proto.Message) (config.Condition, error) {
	p, err := e.CompileProto(m, Bool)
	if err != nil {
		return nil, err
	}
	return protoCondition{p}, nil
}

type protoCondition struct{ p *Program }

// Eval implements config.Condition.
func (c protoCondition) Eval(src attr.Source) (bool, error) { return c.p.EvalBool(src) }

// String returns the expression as CEL text.
func (c protoCondition) String() string { return c.p.Source() }

// MarshalJSON renders the condition as its CEL text.
func (c protoCondition) MarshalJSON() ([]byte, error) { return c.p.MarshalJSON() }

// parsedExpr converts any of the accepted messages to the ParsedExpr
// cel-go loads (google.api.expr.v1alpha1), with unique node IDs.
func parsedExpr(m proto.Message) (*celpb.ParsedExpr, error) {
	if m == nil {
		return nil, fmt.Errorf("expr: no expression")
	}
	pe := &celpb.ParsedExpr{}
	var err error
	switch name := m.ProtoReflect().Descriptor().FullName(); name {
	case "cel.expr.Expr", "google.api.expr.v1alpha1.Expr":
		pe.Expr = &celpb.Expr{}
		err = convert(m, pe.Expr)
	case "cel.expr.ParsedExpr", "google.api.expr.v1alpha1.ParsedExpr":
		err = convert(m, pe)
	case "cel.expr.CheckedExpr", "google.api.expr.v1alpha1.CheckedExpr":
		ce := &celpb.CheckedExpr{}
		err = convert(m, ce)
		pe.Expr, pe.SourceInfo = ce.GetExpr(), ce.GetSourceInfo()
	default:
		return nil, fmt.Errorf("expr: %s is not a CEL expression message", name)
	}
	if err != nil {
		return nil, fmt.Errorf("expr: decoding %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	if pe.Expr == nil || pe.Expr.ExprKind == nil {
		return nil, fmt.Errorf("expr: empty expression")
	}
	if pe.SourceInfo == nil {
		pe.SourceInfo = &celpb.SourceInfo{}
	}
	unique, err := uniqueIDs(pe.Expr, map[int64]bool{}, 0)
	if err != nil {
		return nil, err
	}
	if !unique {
		// Hand-written configs often leave every id at 0. The checker keys
		// types by id, and macro calls and positions recorded against the
		// old ids would now point at the wrong nodes: number the nodes
		// afresh and drop them.
		next := int64(0)
		renumber(pe.Expr, &next)
		pe.SourceInfo = &celpb.SourceInfo{}
	}
	return pe, nil
}

// convert copies a message into a wire-compatible one of another package.
func convert(from, to proto.Message) error {
	b, err := proto.Marshal(from)
	if err != nil {
		return err
	}
	return proto.Unmarshal(b, to)
}

// children returns the sub-expressions of x (map and struct entries' keys
// and values included).
func children(x *celpb.Expr) []*celpb.Expr {
	switch k := x.GetExprKind().(type) {
	case *celpb.Expr_SelectExpr:
		return []*celpb.Expr{k.SelectExpr.GetOperand()}
	case *celpb.Expr_CallExpr:
		return append([]*celpb.Expr{k.CallExpr.GetTarget()}, k.CallExpr.GetArgs()...)
	case *celpb.Expr_ListExpr:
		return k.ListExpr.GetElements()
	case *celpb.Expr_StructExpr:
		var out []*celpb.Expr
		for _, en := range k.StructExpr.GetEntries() {
			out = append(out, en.GetMapKey(), en.GetValue())
		}
		return out
	case *celpb.Expr_ComprehensionExpr:
		c := k.ComprehensionExpr
		return []*celpb.Expr{c.GetIterRange(), c.GetAccuInit(), c.GetLoopCondition(), c.GetLoopStep(), c.GetResult()}
	}
	return nil
}

// maxProtoDepth bounds the nesting of an expression tree from a config,
// as the CEL parser bounds source text.
const maxProtoDepth = 250

// uniqueIDs reports whether the nodes of x have distinct IDs, and fails on
// a tree nested deeper than maxProtoDepth.
func uniqueIDs(x *celpb.Expr, seen map[int64]bool, depth int) (bool, error) {
	if x == nil {
		return true, nil
	}
	if depth > maxProtoDepth {
		return false, fmt.Errorf("expr: expression nested deeper than %d", maxProtoDepth)
	}
	unique := !seen[x.Id]
	seen[x.Id] = true
	if s, ok := x.GetExprKind().(*celpb.Expr_StructExpr); ok {
		for _, en := range s.StructExpr.GetEntries() {
			unique = unique && !seen[en.Id]
			seen[en.Id] = true
		}
	}
	for _, c := range children(x) {
		u, err := uniqueIDs(c, seen, depth+1)
		if err != nil {
			return false, err
		}
		unique = unique && u
	}
	return unique, nil
}

func renumber(x *celpb.Expr, next *int64) {
	if x == nil {
		return
	}
	*next++
	x.Id = *next
	if s, ok := x.GetExprKind().(*celpb.Expr_StructExpr); ok {
		for _, en := range s.StructExpr.GetEntries() {
			*next++
			en.Id = *next
		}
	}
	for _, c := range children(x) {
		renumber(c, next)
	}
}
