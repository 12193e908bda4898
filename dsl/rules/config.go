// Package rules is the CEL stream filter of the Sluice DSL: the `on
// request` and `on response` blocks of a listener and the actions of its
// routes (header changes, rewrites, local rate limits, fault injection and
// dynamic local replies), compiled by package dsl/compile into a Config and
// a per-route RouteActions.
//
// # Order
//
// On the request path the filter runs the listener's `on request` blocks
// in file order, then the actions of the route the request matched. On the
// response path it runs the other way round: the route's response actions,
// then the response actions of the `on request` blocks that ran (a
// `set response.headers[...]` inside `on request` is kept for the
// response), then the `on response` blocks in file order.
//
// The filter's own local replies (a terminal action of an `on request`
// block, a dynamic `respond` or `redirect` of a route, a 429 of a rate
// limit, an `abort`) pass through the same response actions before they are
// sent, so `on response` sees every response.
//
// # Errors
//
// A `when` whose evaluation fails because a map key is missing (a request
// header that is not there: `request.headers["x"] == "1"`) is false, like
// the route matcher the compiler lifts that comparison into. Every other
// runtime error, and a cost overrun, fails the request with a 500 and one
// log line (Config.Logger, else slog.Default()); the filter never panics.
//
// # Rewrites
//
// `rewrite path` and `rewrite host` change the request sent upstream; they
// do not pick the route again (Envoy semantics: the route is chosen before
// the filters run).
package rules

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/dsl/expr"
)

// TypeURL is the config type name of the rules filter (config.HTTPFilter
// TypeURL and config.FilterOverride TypeURL).
const TypeURL = "sluice.rules"

// FilterName is the name the DSL compiler gives the filter in a
// connection manager's chain (and the key of per-route configs).
const FilterName = "sluice.rules"

// Config is the filter config of one listener: its `on` blocks.
type Config struct {
	Request  []*Block // `on request` blocks, in file order
	Response []*Block // `on response` blocks, in file order

	// Logger receives one line per failed request; nil: slog.Default().
	Logger *slog.Logger
}

// Block is one `on request|response [when EXPR] { ... }` block.
type Block struct {
	Where   string        // "file:line:col" of the `on` keyword
	Text    string        // the block's head as written, e.g. `on request when request.headers["x-debug"] == "1"`
	When    *expr.Program // nil: always
	Actions []Action
}

// RouteActions is the per-route config: a route's actions other than its
// terminal `proxy`, `respond`, `redirect` or `deny` when that is static
// (those are compiled into the route itself). A dynamic `respond` or
// `redirect` is the last action here.
type RouteActions struct {
	Route   string
	Actions []Action
}

// Action is one action of a block or a route.
type Action interface {
	// Pos returns "file:line:col" of the action.
	Pos() string
	// String returns the action as written in the source.
	String() string
	action()
}

// Src is embedded in every action: where it is and how it was written.
type Src struct {
	Where string // "file:line:col"
	Text  string // the statement as written; String falls back to a rendering when empty
}

// Pos returns s.Where.
func (s Src) Pos() string { return s.Where }

// HeaderOp is the verb of a header action.
type HeaderOp int

const (
	Set    HeaderOp = iota // replace every value
	Add                    // append a value
	Remove                 // delete every value
)

func (op HeaderOp) String() string {
	switch op {
	case Set:
		return "set"
	case Add:
		return "add"
	case Remove:
		return "remove"
	}
	return "?"
}

// Header is `set|add|remove request|response.headers["NAME"] [= EXPR]`.
type Header struct {
	Src
	Op       HeaderOp
	Response bool          // response.headers: runs on the response path
	Name     string        // lower-case
	Value    *expr.Program // nil for Remove
}

// Rewrite is `rewrite path EXPR` or `rewrite host EXPR`.
type Rewrite struct {
	Src
	Host  bool // false: path
	Value *expr.Program
}

// RateLimit is `ratelimit N per D [by EXPR]`: a local token bucket of N
// tokens refilled at N per D, one per key of By (one bucket without By).
type RateLimit struct {
	Src
	Count int
	Per   time.Duration
	By    *expr.Program // nil: one bucket
	// MaxKeys caps the buckets kept for By keys, least recently used
	// evicted first (0: DefaultMaxKeys).
	MaxKeys int
}

// DefaultMaxKeys is the default cap on rate limit buckets per `ratelimit`.
const DefaultMaxKeys = 10_000

// Delay is `delay D [percent P]`.
type Delay struct {
	Src
	Duration time.Duration
	Percent  float64 // 0..100
}

// Abort is `abort CODE [percent P]`.
type Abort struct {
	Src
	Code    int
	Percent float64 // 0..100
}

// Respond is a local reply: `respond CODE [EXPR]` or `deny [CODE]`.
type Respond struct {
	Src
	Code    int
	Body    *expr.Program // nil: Literal
	Literal string        // the body when Body is nil
}

// Redirect is `redirect CODE EXPR`, sent as a local reply with a Location.
type Redirect struct {
	Src
	Code     int
	Location *expr.Program
}

func (*Header) action()    {}
func (*Rewrite) action()   {}
func (*RateLimit) action() {}
func (*Delay) action()     {}
func (*Abort) action()     {}
func (*Respond) action()   {}
func (*Redirect) action()  {}

func exprText(p *expr.Program) string {
	if p == nil {
		return ""
	}
	return p.Source()
}

func or(text, rendered string) string {
	if text != "" {
		return text
	}
	return rendered
}

func pct(p float64) string {
	if p >= 100 {
		return ""
	}
	return " percent " + strconv.FormatFloat(p, 'f', -1, 64)
}

func (a *Header) String() string {
	msg := "request"
	if a.Response {
		msg = "response"
	}
	s := fmt.Sprintf("%s %s.headers[%q]", a.Op, msg, a.Name)
	if a.Value != nil {
		s += " = " + exprText(a.Value)
	}
	return or(a.Text, s)
}

func (a *Rewrite) String() string {
	what := "path"
	if a.Host {
		what = "host"
	}
	return or(a.Text, "rewrite "+what+" "+exprText(a.Value))
}

func (a *RateLimit) String() string {
	s := fmt.Sprintf("ratelimit %d per %s", a.Count, a.Per)
	if a.By != nil {
		s += " by " + exprText(a.By)
	}
	return or(a.Text, s)
}

func (a *Delay) String() string {
	return or(a.Text, fmt.Sprintf("delay %s%s", a.Duration, pct(a.Percent)))
}

func (a *Abort) String() string {
	return or(a.Text, fmt.Sprintf("abort %d%s", a.Code, pct(a.Percent)))
}

func (a *Respond) String() string {
	s := fmt.Sprintf("respond %d", a.Code)
	if a.Body != nil {
		s += " " + exprText(a.Body)
	} else if a.Literal != "" {
		s += " " + strconv.Quote(a.Literal)
	}
	return or(a.Text, s)
}

func (a *Redirect) String() string {
	return or(a.Text, fmt.Sprintf("redirect %d %s", a.Code, exprText(a.Location)))
}

// validName reports whether n is a header name the filter may set: an
// RFC 9110 token, not a pseudo-header.
func validName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return true
}

// ValidHeaderValue reports whether v may be sent as a header value: no
// NUL, CR or LF.
func ValidHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == 0 || c == '\r' || c == '\n' {
			return false
		}
	}
	return true
}
