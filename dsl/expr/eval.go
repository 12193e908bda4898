package expr

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/cel-go/common/overloads"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/interpreter"

	"github.com/sluice-proxy/sluice/engine/attr"
)

// activation is the CEL activation of one evaluation: the stream, nothing
// else. Attribute nodes find it and call value with their precomputed ID.
type activation struct {
	src attr.Source
}

var activations = sync.Pool{New: func() any { return new(activation) }}

// ResolveName implements interpreter.Activation. The planned attribute nodes
// do not call it; it serves code paths that resolve by name.
func (a *activation) ResolveName(name string) (any, bool) {
	id, err := attr.Parse(name)
	if err != nil {
		return nil, false
	}
	return a.value(id), true
}

// Parent implements interpreter.Activation.
func (a *activation) Parent() interpreter.Activation { return nil }

// value reads one attribute from the stream as a CEL value.
func (a *activation) value(id attr.ID) ref.Val {
	v := attr.Resolve(a.src, id)
	switch v.Kind {
	case attr.KindString:
		return types.String(v.Str)
	case attr.KindInt:
		return types.Int(v.Int)
	case attr.KindBool:
		return types.Bool(v.Bool)
	case attr.KindTime:
		return types.Timestamp{Time: v.Time}
	case attr.KindHeaders:
		return headerMap{m: v.Headers}
	}
	return types.NewErr("attribute %d has no CEL value", id)
}

// findActivation walks from the frame or comprehension scope the
// interpreter passes down to the evaluation's activation.
func findActivation(vars interpreter.Activation) *activation {
	for vars != nil {
		switch v := vars.(type) {
		case *activation:
			return v
		case *interpreter.ExecutionFrame:
			vars = v.Activation
		default:
			vars = vars.Parent()
		}
	}
	return nil
}

// attrNode is the planned form of a reference to a declared attribute,
// with any map keys applied to it (`request.headers["x"]`). It replaces
// cel-go's absolute attribute, which resolves by name, so that reading an
// attribute is attr.Resolve with the ID fixed at compile time.
type attrNode struct {
	id      int64 // expression id of the reference
	aid     attr.ID
	name    string
	quals   []interpreter.Qualifier
	adapter types.Adapter
	fac     interpreter.AttributeFactory
}

var _ interpreter.InterpretableAttribute = (*attrNode)(nil)

// decorate is the planner hook that swaps attribute references for
// attrNodes.
func (e *Env) decorate(i interpreter.InterpretableV2) (interpreter.InterpretableV2, error) {
	ia, ok := i.(interpreter.InterpretableAttribute)
	if !ok {
		return i, nil
	}
	na, ok := ia.Attr().(interpreter.NamespacedAttribute)
	if !ok || len(na.Qualifiers()) != 0 {
		return i, nil
	}
	names := na.CandidateVariableNames()
	if len(names) != 1 {
		return i, nil
	}
	id, ok := e.ids[names[0]]
	if !ok {
		return i, nil
	}
	return &attrNode{id: ia.ID(), aid: id, name: names[0], adapter: ia.Adapter(), fac: e.fac}, nil
}

// decorateUntracked adds, for programs without runtime cost tracking (which
// would not see through it), the fusion of string concatenations.
func (e *Env) decorateUntracked(i interpreter.InterpretableV2) (interpreter.InterpretableV2, error) {
	if c, ok := i.(interpreter.InterpretableCall); ok && c.OverloadID() == overloads.AddString && len(c.Args()) == 2 {
		n := &concatNode{id: c.ID()}
		for _, a := range c.Args() {
			if inner, ok := a.(*concatNode); ok {
				n.args = append(n.args, inner.args...)
			} else {
				n.args = append(n.args, a)
			}
		}
		return n, nil
	}
	return e.decorate(i)
}

// concatNode evaluates a + b + c + ... on strings with one allocation for
// the result instead of two per +.
type concatNode struct {
	id   int64
	args []interpreter.InterpretableV2
}

func (n *concatNode) ID() int64                             { return n.id }
func (n *concatNode) Eval(a interpreter.Activation) ref.Val { return n.Exec(interpreter.AsFrame(a)) }
func (n *concatNode) Exec(f *interpreter.ExecutionFrame) ref.Val {
	var small [8]string
	parts := small[:0]
	size := 0
	var fail ref.Val
	for _, a := range n.args {
		v := a.Exec(f)
		s, ok := v.(types.String)
		if !ok {
			if fail == nil {
				fail = v
				if !types.IsUnknownOrError(v) {
					fail = types.MaybeNoSuchOverloadErr(v)
				}
			}
			continue
		}
		parts = append(parts, string(s))
		size += len(s)
	}
	if fail != nil {
		return fail
	}
	var b strings.Builder
	b.Grow(size)
	for _, s := range parts {
		b.WriteString(s)
	}
	return types.String(b.String())
}

func (n *attrNode) ID() int64 {
	if k := len(n.quals); k > 0 {
		return n.quals[k-1].ID()
	}
	return n.id
}

func (n *attrNode) IsOptional() bool                           { return false }
func (n *attrNode) Attr() interpreter.Attribute                { return n }
func (n *attrNode) Adapter() types.Adapter                     { return n.adapter }
func (n *attrNode) Exec(f *interpreter.ExecutionFrame) ref.Val { return n.eval(f) }
func (n *attrNode) Eval(a interpreter.Activation) ref.Val      { return n.eval(a) }

func (n *attrNode) AddQualifier(q interpreter.Qualifier) (interpreter.Attribute, error) {
	n.quals = append(n.quals, q)
	return n, nil
}

func (n *attrNode) eval(vars interpreter.Activation) ref.Val {
	if len(n.quals) == 0 {
		if a := findActivation(vars); a != nil {
			return a.value(n.aid)
		}
	}
	v, err := n.Resolve(vars)
	if err != nil {
		return types.LabelErrNode(n.ID(), types.WrapErr(err))
	}
	return n.adapter.NativeToValue(v)
}

func (n *attrNode) root(vars interpreter.Activation) (any, error) {
	if a := findActivation(vars); a != nil {
		return a.value(n.aid), nil
	}
	// Evaluated with some other activation (tests, tools): by name.
	v, ok := vars.ResolveName(n.name)
	if !ok {
		return nil, fmt.Errorf("no such attribute(s): %s", n.name)
	}
	if e, ok := v.(*types.Err); ok {
		return nil, e
	}
	return v, nil
}

// Resolve implements interpreter.Attribute, with the semantics of cel-go's
// absolute attribute (qualifiers in order, optional qualifiers yielding
// optional values).
func (n *attrNode) Resolve(vars interpreter.Activation) (any, error) {
	obj, err := n.root(vars)
	if err != nil || len(n.quals) == 0 {
		return obj, err
	}
	obj, isOpt, err := applyQualifiers(vars, obj, n.quals)
	if err != nil {
		return nil, err
	}
	if isOpt {
		val := n.adapter.NativeToValue(obj)
		if types.IsUnknown(val) {
			return val, nil
		}
		return types.OptionalOf(val), nil
	}
	return obj, nil
}

// Qualify implements interpreter.Qualifier: the attribute used as a map key
// or index of another value (`m[request.method]`).
func (n *attrNode) Qualify(vars interpreter.Activation, obj any) (any, error) {
	val, err := n.Resolve(vars)
	if err != nil {
		return nil, err
	}
	q, err := n.fac.NewQualifier(nil, n.ID(), val, false)
	if err != nil {
		return nil, err
	}
	return q.Qualify(vars, obj)
}

// QualifyIfPresent implements interpreter.Qualifier.
func (n *attrNode) QualifyIfPresent(vars interpreter.Activation, obj any, presenceOnly bool) (any, bool, error) {
	val, err := n.Resolve(vars)
	if err != nil {
		return nil, false, err
	}
	q, err := n.fac.NewQualifier(nil, n.ID(), val, false)
	if err != nil {
		return nil, false, err
	}
	return q.QualifyIfPresent(vars, obj, presenceOnly)
}

// applyQualifiers is cel-go's (unexported) qualifier loop.
func applyQualifiers(vars interpreter.Activation, obj any, quals []interpreter.Qualifier) (any, bool, error) {
	optObj, isOpt := obj.(*types.Optional)
	if isOpt {
		if !optObj.HasValue() {
			return optObj, false, nil
		}
		obj = optObj.GetValue()
	}
	for _, q := range quals {
		isOpt = isOpt || q.IsOptional()
		if isOpt {
			v, present, err := q.QualifyIfPresent(vars, obj, false)
			if err != nil {
				return nil, false, err
			}
			if !present {
				return types.OptionalNone, false, nil
			}
			obj = v
			continue
		}
		v, err := q.Qualify(vars, obj)
		if err != nil {
			return nil, false, err
		}
		obj = v
	}
	return obj, isOpt, nil
}

// Eval evaluates the expression against a stream. A runtime error (a
// missing map key, a failed conversion, ...) or a cost overrun is returned
// as an error, never as a panic; errors.Is(err, ErrCostLimit) tells the
// latter.
func (p *Program) Eval(src attr.Source) (ref.Val, error) {
	if p.constant != nil {
		return p.constant, nil
	}
	a := activations.Get().(*activation)
	a.src = src
	out, err := p.run(a)
	a.src = nil
	activations.Put(a)
	return out, err
}

func (p *Program) run(a interpreter.Activation) (out ref.Val, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("expr: evaluation panicked: %v", r)
		}
	}()
	out, _, err = p.prg.Eval(a)
	if err != nil {
		return nil, p.runtimeError(err)
	}
	return out, nil
}

func (p *Program) runtimeError(err error) error {
	var ce interpreter.EvalCancelledError
	if errors.As(err, &ce) && ce.Cause == interpreter.CostLimitExceeded {
		return fmt.Errorf("%w (limit %d)", ErrCostLimit, p.costLimit)
	}
	return fmt.Errorf("expr: %w", err)
}

// EvalBool evaluates a bool expression.
func (p *Program) EvalBool(src attr.Source) (bool, error) {
	out, err := p.Eval(src)
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("expr: result is %s, want bool", out.Type().TypeName())
	}
	return bool(b), nil
}

// EvalString evaluates a string expression.
func (p *Program) EvalString(src attr.Source) (string, error) {
	out, err := p.Eval(src)
	if err != nil {
		return "", err
	}
	s, ok := out.(types.String)
	if !ok {
		return "", fmt.Errorf("expr: result is %s, want string", out.Type().TypeName())
	}
	return string(s), nil
}
