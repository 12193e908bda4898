package expr

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/checker"
	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/sluice-proxy/sluice/dsl/internal/suggest"
	"github.com/sluice-proxy/sluice/engine/attr"
)

// Program is a compiled expression. It is immutable and safe for concurrent
// use.
type Program struct {
	src       string
	prg       cel.Program
	constant  ref.Val // non-nil when the value does not depend on the stream
	attrs     []attr.ID
	costLimit uint64
	tracked   bool // runtime cost tracking on
}

// Source returns the expression text.
func (p *Program) Source() string { return p.src }

// MarshalJSON renders the program as its expression text, so config dumps
// show what a compiled condition or value says.
func (p *Program) MarshalJSON() ([]byte, error) { return json.Marshal(p.src) }

// Constant reports the value of an expression that reads no attribute
// (after constant folding), e.g. the body of `respond 200 "ok"`.
func (p *Program) Constant() (ref.Val, bool) { return p.constant, p.constant != nil }

// Attributes returns the attributes the expression reads, in ID order. The
// slice is shared; do not modify it.
func (p *Program) Attributes() []attr.ID { return p.attrs }

// Compile parses, type-checks and plans src. want is the result type the
// slot needs (Any accepts every type; a dyn result is accepted and checked at
// run time). Errors are an ErrorList of *Error with positions relative to
// src.
func (e *Env) Compile(src string, want Type) (*Program, error) {
	parsed, iss := e.cel.Parse(src)
	if iss.Err() != nil {
		return nil, issuesError(src, iss)
	}
	return e.compileParsed(src, parsed, want)
}

// compileParsed checks and plans a parsed expression; src is its text, for
// error positions and Source.
func (e *Env) compileParsed(src string, parsed *cel.Ast, want Type) (*Program, error) {
	if errs := e.checkNames(src, parsed.NativeRep()); len(errs) > 0 {
		return nil, errs
	}
	checked, iss := e.cel.Check(parsed)
	if iss.Err() != nil {
		return nil, issuesError(src, iss)
	}
	start := exprStart(src)
	if err := checkResult(src, start, checked, want); err != nil {
		return nil, err
	}
	// cel-go's static estimate, with attribute sizes bounded by the default
	// header limits, is an upper bound of the runtime cost.
	est, err := e.cel.EstimateCost(checked, sizeEstimator{e})
	bounded := err == nil && est.Max <= e.costLimit
	final := checked
	if bounded {
		// The folder evaluates constant subexpressions without a cost
		// limit, so it only runs on what is known to stay within it.
		if folded, iss := e.folder.Optimize(e.cel, checked); iss.Err() == nil {
			final = folded
		}
	}
	// Runtime cost tracking costs about 9 allocations and 1µs per
	// evaluation. It is skipped when the bound holds and there is no
	// comprehension left: every remaining step is then at most linear in
	// the attribute values, so values larger than the assumed bounds cost
	// proportionally more but cannot run away.
	p := &Program{src: src, costLimit: e.costLimit, attrs: e.attributes(final.NativeRep())}
	p.tracked = !bounded || hasComprehension(final.NativeRep().Expr())
	opts := []cel.ProgramOption{cel.EvalOptions(cel.OptOptimize)}
	if p.tracked {
		opts = append(opts, cel.CostLimit(e.costLimit), cel.CustomDecoratorV2(e.decorate))
	} else {
		opts = append(opts, cel.CustomDecoratorV2(e.decorateUntracked))
	}
	p.prg, err = e.cel.Program(final, opts...)
	if err != nil {
		return nil, ErrorList{errorAtByte(src, start, err.Error())}
	}
	if len(p.attrs) == 0 {
		// Nothing read from the stream: CEL is deterministic, so the
		// value is known now, and so is a failure.
		out, err := p.run(&activation{})
		if err != nil {
			return nil, ErrorList{errorAtByte(src, start,
				"expression always fails: "+strings.TrimPrefix(err.Error(), "expr: "))}
		}
		p.constant = out
	}
	return p, nil
}

func hasComprehension(e ast.Expr) bool {
	found := false
	ast.PostOrderVisit(e, ast.NewExprVisitor(func(e ast.Expr) {
		found = found || e.Kind() == ast.ComprehensionKind
	}))
	return found
}

// attributes lists the attributes referenced by the nodes of the (possibly
// folded) expression.
func (e *Env) attributes(a *ast.AST) []attr.ID {
	var ids []attr.ID
	refs := a.ReferenceMap()
	ast.PostOrderVisit(a.Expr(), ast.NewExprVisitor(func(x ast.Expr) {
		r, ok := refs[x.ID()]
		if !ok || (x.Kind() != ast.IdentKind && x.Kind() != ast.SelectKind) {
			return
		}
		if id, ok := e.ids[r.Name]; ok && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}))
	slices.Sort(ids)
	return ids
}

func checkResult(src string, start int, checked *cel.Ast, want Type) error {
	if want == Any {
		return nil
	}
	out := checked.OutputType()
	if out.Kind() == types.DynKind {
		return nil
	}
	var ok bool
	switch want {
	case Bool:
		ok = out.IsExactType(cel.BoolType)
	case String:
		ok = out.IsExactType(cel.StringType)
	case Int:
		ok = out.IsExactType(cel.IntType)
	}
	if ok {
		return nil
	}
	got := typeName(out)
	msg := fmt.Sprintf("must be %s, got %s", want, got)
	if want == String {
		switch out.Kind() {
		case types.IntKind, types.UintKind, types.DoubleKind, types.BoolKind, types.TimestampKind, types.DurationKind, types.BytesKind:
			msg += " (convert it with string(...))"
		}
	}
	e := errorAtByte(src, start, msg)
	e.Want, e.Got = want, got
	return ErrorList{e}
}

func typeName(t *cel.Type) string {
	switch t.Kind() {
	case types.TimestampKind:
		return "timestamp"
	case types.DurationKind:
		return "duration"
	}
	return cel.FormatCELType(t)
}

// exprStart is the byte offset of the first character of the expression,
// after white space and comments.
func exprStart(src string) int {
	i := 0
	for i < len(src) {
		switch {
		case src[i] == ' ' || src[i] == '\t' || src[i] == '\r' || src[i] == '\n':
			i++
		case strings.HasPrefix(src[i:], "//"):
			n := strings.IndexByte(src[i:], '\n')
			if n < 0 {
				return len(src)
			}
			i += n + 1
		default:
			return i
		}
	}
	return i
}

// Size bounds of attribute values for cost estimation: the default limits
// on request headers.
const (
	maxAttrBytes    = 64 << 10
	maxHeaderFields = 100
)

// sizeEstimator bounds attribute sizes for cel-go's static cost estimate.
type sizeEstimator struct{ env *Env }

func (s sizeEstimator) EstimateSize(n checker.AstNode) *checker.SizeEstimate {
	p := n.Path()
	if len(p) == 0 {
		return nil
	}
	id, ok := s.env.ids[p[0]]
	if !ok {
		return nil
	}
	switch {
	case attr.Kinds[id] == attr.KindString && len(p) == 1,
		attr.Kinds[id] == attr.KindHeaders && len(p) == 2 && (p[1] == "@keys" || p[1] == "@values"):
		return &checker.SizeEstimate{Min: 0, Max: maxAttrBytes}
	case attr.Kinds[id] == attr.KindHeaders && len(p) == 1:
		return &checker.SizeEstimate{Min: 0, Max: maxHeaderFields}
	}
	return nil
}

func (sizeEstimator) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}

func issuesError(src string, iss *cel.Issues) error {
	var l ErrorList
	for _, ce := range iss.Errors() {
		msg := strings.Replace(ce.Message, " (in container '')", "", 1)
		l = append(l, newError(src, ce.Location.Line(), ce.Location.Column(), msg))
	}
	sort.SliceStable(l, func(i, j int) bool { return l[i].Offset < l[j].Offset })
	return l
}

// checkNames reports references under an attribute namespace (request,
// response, source, ...) that name no attribute, with a suggestion, and a few
// mistakes CEL's checker words poorly. It runs on the parsed AST, before the
// checker, which would only say "undeclared reference to 'request'".
func (e *Env) checkNames(src string, a *ast.AST) ErrorList {
	c := nameChecker{env: e, src: src, info: a.SourceInfo()}
	c.walk(a.Expr(), nil)
	sort.SliceStable(c.errs, func(i, j int) bool { return c.errs[i].Offset < c.errs[j].Offset })
	return c.errs
}

type nameChecker struct {
	env  *Env
	src  string
	info *ast.SourceInfo
	errs ErrorList
}

func (c *nameChecker) errorAt(id int64, msg string) {
	loc := c.info.GetStartLocation(id)
	c.errs = append(c.errs, newError(c.src, loc.Line(), loc.Column(), msg))
}

// chain returns the dotted name of a select chain rooted at an identifier
// (request.headers.x) and that identifier.
func chain(e ast.Expr) (ast.Expr, string, bool) {
	var parts []string
	for e.Kind() == ast.SelectKind {
		parts = append(parts, e.AsSelect().FieldName())
		e = e.AsSelect().Operand()
	}
	if e.Kind() != ast.IdentKind {
		return nil, "", false
	}
	parts = append(parts, e.AsIdent())
	slices.Reverse(parts)
	return e, strings.Join(parts, "."), true
}

// attribute returns the declared attribute that is the longest prefix of
// the dotted name.
func (c *nameChecker) attribute(name string) (string, attr.ID, bool) {
	for p := name; ; {
		if id, ok := c.env.ids[p]; ok {
			return p, id, true
		}
		i := strings.LastIndexByte(p, '.')
		if i < 0 {
			return "", attr.Invalid, false
		}
		p = p[:i]
	}
}

func (c *nameChecker) walk(e ast.Expr, locals []string) {
	switch e.Kind() {
	case ast.IdentKind, ast.SelectKind:
		root, name, ok := chain(e)
		if !ok {
			c.walk(e.AsSelect().Operand(), locals)
			return
		}
		c.checkChain(e, root, name, locals)
	case ast.CallKind:
		call := e.AsCall()
		if call.FunctionName() == operators.Subtract && c.checkDashedHeader(e, locals) {
			return
		}
		if call.IsMemberFunction() {
			c.walk(call.Target(), locals)
		}
		for _, arg := range call.Args() {
			c.walk(arg, locals)
		}
	case ast.ListKind:
		for _, el := range e.AsList().Elements() {
			c.walk(el, locals)
		}
	case ast.MapKind:
		for _, en := range e.AsMap().Entries() {
			me := en.AsMapEntry()
			c.walk(me.Key(), locals)
			c.walk(me.Value(), locals)
		}
	case ast.StructKind:
		for _, f := range e.AsStruct().Fields() {
			c.walk(f.AsStructField().Value(), locals)
		}
	case ast.ComprehensionKind:
		comp := e.AsComprehension()
		c.walk(comp.IterRange(), locals)
		c.walk(comp.AccuInit(), locals)
		inner := append(slices.Clip(locals), comp.IterVar(), comp.AccuVar())
		if comp.HasIterVar2() {
			inner = append(inner, comp.IterVar2())
		}
		c.walk(comp.LoopCondition(), inner)
		c.walk(comp.LoopStep(), inner)
		c.walk(comp.Result(), append(slices.Clip(locals), comp.AccuVar()))
	}
}

func (c *nameChecker) checkChain(e, root ast.Expr, name string, locals []string) {
	ns := namespace(name)
	if !c.env.namespaces[ns] || slices.Contains(locals, ns) {
		return
	}
	found, _, ok := c.attribute(name)
	if !ok {
		c.errorAt(root.ID(), c.unknown(name))
		return
	}
	if found == name && e.Kind() == ast.SelectKind && e.AsSelect().IsTestOnly() {
		c.errorAt(root.ID(), fmt.Sprintf("has() cannot test the attribute %s: attributes always have a value (empty or 0 when unknown); compare it instead", name))
	}
}

// checkDashedHeader catches request.headers.x-canary, which CEL parses as
// request.headers.x - canary.
func (c *nameChecker) checkDashedHeader(e ast.Expr, locals []string) bool {
	var words []string
	for e.Kind() == ast.CallKind && e.AsCall().FunctionName() == operators.Subtract {
		args := e.AsCall().Args()
		if len(args) != 2 || args[1].Kind() != ast.IdentKind || slices.Contains(locals, args[1].AsIdent()) {
			return false
		}
		words = append(words, args[1].AsIdent())
		e = args[0]
	}
	if e.Kind() != ast.SelectKind {
		return false
	}
	root, name, ok := chain(e)
	if !ok || slices.Contains(locals, namespace(name)) {
		return false
	}
	found, id, ok := c.attribute(name)
	if !ok || attr.Kinds[id] != attr.KindHeaders || strings.Count(name[len(found):], ".") != 1 {
		return false
	}
	slices.Reverse(words)
	key := name[len(found)+1:] + "-" + strings.Join(words, "-")
	c.errorAt(root.ID(), fmt.Sprintf("a header name with '-' needs an index: %s[%q]", found, key))
	return true
}

func (c *nameChecker) unknown(name string) string {
	ns := namespace(name)
	bare := ns == name
	var same []string
	best, bestD := "", 1<<30
	for n := range c.env.ids {
		if namespace(n) != ns {
			continue
		}
		same = append(same, n)
		if d := suggest.Distance(name, n); d < bestD || d == bestD && n < best {
			best, bestD = n, d
		}
	}
	if bestD <= 3 && !bare {
		return fmt.Sprintf("unknown attribute %s; did you mean %s?", name, best)
	}
	sort.Strings(same)
	if bare {
		return fmt.Sprintf("%s is not an attribute; %s attributes are %s", name, ns, strings.Join(same, ", "))
	}
	return fmt.Sprintf("unknown attribute %s; %s attributes are %s", name, ns, strings.Join(same, ", "))
}
