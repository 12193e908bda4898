// Package expr is the CEL side of the Sluice DSL: the environment that
// declares Envoy's attributes (engine/attr), compilation of the expressions
// after `when`, `=` and in `respond`/`redirect`, and their evaluation on the
// request path.
//
// Attributes are declared as qualified variable names ("request.path",
// "request.headers", ...), so the checker resolves `request.path` to one
// declared variable with its exact type and `request.nope` is a compile
// error. At run time each attribute reference is planned into a node that
// carries the attribute's attr.ID and reads the live stream through
// attr.Resolve: no map is built and no name is looked up per request.
package expr

import (
	"fmt"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"

	"github.com/sluice-proxy/sluice/engine/attr"
)

// DefaultCostLimit is the CEL runtime cost allowed per evaluation. One unit
// is roughly one operation (a comparison, a field access, one step of a
// comprehension); string functions cost about one unit per ten bytes. An
// ordinary routing condition costs under 20; the limit only stops
// comprehensions and string building that run away.
const DefaultCostLimit = 100_000

// Type is the result type a caller wants from an expression.
type Type int

const (
	Any    Type = iota // any result type
	Bool               // `when` conditions
	String             // header values, bodies, redirect targets
	Int                // status codes and other numbers
)

func (t Type) String() string {
	switch t {
	case Bool:
		return "bool"
	case String:
		return "string"
	case Int:
		return "int"
	}
	return "any"
}

// Env is a compiled CEL environment. It is safe for concurrent use.
type Env struct {
	cel       *cel.Env
	costLimit uint64
	folder    *cel.StaticOptimizer
	fac       interpreter.AttributeFactory

	// Config time only: attribute names to IDs, and the namespaces
	// (first name segments) for error messages.
	ids        map[string]attr.ID
	namespaces map[string]bool
}

// Option configures NewEnv.
type Option func(*Env)

// WithCostLimit sets the runtime cost limit per evaluation (default
// DefaultCostLimit).
func WithCostLimit(limit uint64) Option {
	return func(e *Env) { e.costLimit = limit }
}

// NewEnv returns the environment of the DSL: every attribute of engine/attr
// with its Envoy name and type, CEL's string extensions and encoders, and
// optional types (`request.headers[?"x"].orValue("")`).
func NewEnv(opts ...Option) (*Env, error) {
	e := &Env{
		costLimit:  DefaultCostLimit,
		ids:        make(map[string]attr.ID, len(attr.Names)),
		namespaces: make(map[string]bool),
	}
	for _, o := range opts {
		o(e)
	}
	celOpts := []cel.EnvOption{
		ext.Strings(),
		ext.Encoders(),
		cel.OptionalTypes(),
		cel.DefaultUTCTimeZone(true),
	}
	for i, name := range attr.Names {
		if name == "" {
			continue
		}
		id := attr.ID(i)
		t, err := celType(attr.Kinds[id])
		if err != nil {
			return nil, fmt.Errorf("expr: attribute %s: %w", name, err)
		}
		celOpts = append(celOpts, cel.Variable(name, t))
		e.ids[name] = id
		e.namespaces[namespace(name)] = true
	}
	env, err := cel.NewEnv(celOpts...)
	if err != nil {
		return nil, fmt.Errorf("expr: %w", err)
	}
	e.cel = env
	folding, err := cel.NewConstantFoldingOptimizer()
	if err != nil {
		return nil, fmt.Errorf("expr: %w", err)
	}
	e.folder, err = cel.NewStaticOptimizer(folding)
	if err != nil {
		return nil, fmt.Errorf("expr: %w", err)
	}
	// Used only when an attribute serves as a dynamic map key or index
	// (`m[request.method]`), to build the qualifier from its value.
	e.fac = interpreter.NewAttributeFactory(env.Container, env.CELTypeAdapter(), env.CELTypeProvider())
	return e, nil
}

// CostLimit reports the runtime cost limit per evaluation.
func (e *Env) CostLimit() uint64 { return e.costLimit }

func celType(k attr.Kind) (*cel.Type, error) {
	switch k {
	case attr.KindString:
		return cel.StringType, nil
	case attr.KindInt:
		return cel.IntType, nil
	case attr.KindBool:
		return cel.BoolType, nil
	case attr.KindTime:
		return cel.TimestampType, nil
	case attr.KindHeaders:
		return cel.MapType(cel.StringType, cel.StringType), nil
	}
	return nil, fmt.Errorf("no CEL type for attr.Kind %d", k)
}

func namespace(name string) string {
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			return name[:i]
		}
	}
	return name
}
