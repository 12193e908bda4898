package rules

import (
	"strings"

	"github.com/sluice-proxy/sluice/dsl/expr"
	"github.com/sluice-proxy/sluice/engine/attr"
)

// Tracer makes a filter run dry and tell what it does: when the
// stream.Callbacks given to a rules filter also implement Tracer (as
// `sluice explain` and `sluice test` do), the filter reports every block
// and action, decides percentages with Roll, and does not sleep for
// `delay`. Rate limit buckets are those of the compiled config, so a fresh
// compile starts full.
type Tracer interface {
	Trace(Event)
	// Roll decides whether an action gated by `percent P` fires.
	Roll(percent float64) bool
}

// EventKind says what an Event reports.
type EventKind int

const (
	BlockSkipped  EventKind = iota // an `on` block whose `when` is false
	BlockEntered                   // an `on` block whose `when` holds (or has none)
	ActionRan                      // an action ran (Note: its effect)
	ActionSkipped                  // a percent-gated action did not fire
	Failed                         // an evaluation failed: the request gets a 500
)

// Event is one step of a traced run.
type Event struct {
	Kind  EventKind
	Where string // "file:line:col" of the block or action
	Text  string // the block head or action as written
	Note  string // e.g. `= "api"`, "429 (bucket empty)", the error
	// Response is set for steps run on the response path.
	Response bool
}

// Condition is a compiled `when` as a config.Condition (route tables
// evaluate it after the cheap matchers), with the filter's error policy: a
// missing map key makes it false; other errors fail the request.
type Condition struct {
	Program *expr.Program
}

// Eval implements config.Condition.
func (c *Condition) Eval(src attr.Source) (bool, error) { return EvalWhen(c.Program, src) }

// String returns the expression.
func (c *Condition) String() string { return c.Program.Source() }

// EvalWhen evaluates a `when` condition (nil: true). A missing map key
// (`request.headers["x"]` on a request without x) makes it false, as the
// lifted route matchers do; any other error is returned.
func EvalWhen(p *expr.Program, src attr.Source) (bool, error) {
	if p == nil {
		return true, nil
	}
	ok, err := p.EvalBool(src)
	if err != nil {
		if isMissingKey(err) {
			return false, nil
		}
		return false, err
	}
	return ok, nil
}

// isMissingKey recognizes CEL's "no such key" runtime error.
// TODO(expr): match a typed error once dsl/expr exports one.
func isMissingKey(err error) bool {
	return strings.Contains(err.Error(), "no such key")
}
