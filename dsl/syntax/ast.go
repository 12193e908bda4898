package syntax

import (
	"strings"
	"time"
	"unicode/utf8"
)

// Node is any node of the syntax tree.
type Node interface {
	// Start is the position of the node's first byte.
	Start() Pos
}

// Stmt is a statement: a declaration, a block item, an action or a test
// statement. Every statement carries its comments in a StmtInfo.
type Stmt interface {
	Node
	Info() *StmtInfo
}

// StmtInfo is embedded in every statement node.
type StmtInfo struct {
	Pos Pos // the statement's first token (its keyword)
	End Pos // just after its last token (the `}` of a block)

	Doc         []*Comment // comments on their own lines just before the statement
	Comment     *Comment   // the comment after the statement's last token, on the same line
	BlankBefore bool       // a blank line separates the statement from what precedes it (its Doc, or the previous statement)
}

// Start returns the statement's position.
func (s *StmtInfo) Start() Pos { return s.Pos }

// Info returns s.
func (s *StmtInfo) Info() *StmtInfo { return s }

// Comment is a "# ..." comment.
type Comment struct {
	Pos         Pos
	Text        string // "# ...", without the line break and trailing blanks
	BlankBefore bool   // a blank line separates it from what precedes it

	alone bool // nothing but blanks precedes it on its line
}

// Start returns c.Pos.
func (c *Comment) Start() Pos { return c.Pos }

// Block holds the braces of a block statement and the comments that belong
// to the braces rather than to a statement inside.
type Block struct {
	Lbrace, Rbrace Pos
	OpenComment    *Comment   // a comment after `{` on the same line
	Tail           []*Comment // comments after the last statement, before `}`
}

// File is one parsed *.sluice file.
type File struct {
	Path     string
	Src      []byte
	Decls    []Decl     // top-level statements, in source order
	Tail     []*Comment // comments after the last declaration
	Comments []*Comment // every comment of the file, in source order
}

// Start returns the position of the file's first byte.
func (f *File) Start() Pos { return Pos{File: f.Path, Line: 1, Col: 1} }

// Decl is a top-level statement: *Admin, *Import, *Upstream, *Listener or *Test.
type Decl interface {
	Stmt
	declNode()
}

// UpstreamStmt is a statement inside an upstream block: *Endpoint, *LB,
// *ConnectTimeout, *Protocol, *HealthCheck, *TLS or *HTTP2.
type UpstreamStmt interface {
	Stmt
	upstreamStmt()
}

// ListenerItem is a statement inside a listener block: *Protocol,
// *AccessLog, *TLS, *HTTP2, *On, *Lua, *Wasm or *Route.
type ListenerItem interface {
	Stmt
	listenerItem()
}

// Action is a statement inside an `on` block or a route: *HeaderAction,
// *Rewrite, *RateLimit, *Delay, *Abort, *Respond, *Redirect, *Deny, *Proxy,
// *Lua or *Wasm.
type Action interface {
	Stmt
	action()
}

// TestStmt is a statement inside a test block: *Request, *ExpectRoute,
// *ExpectUpstream, *ExpectRespond or *ExpectHeader.
type TestStmt interface {
	Stmt
	testStmt()
}

// ---- leaves ----

// Ident is a name or keyword.
type Ident struct {
	Pos  Pos
	Name string
}

// String is a string literal: "..." with Go escapes, or a raw `...` string.
type String struct {
	Pos   Pos
	Value string // decoded
	Raw   string // as written, quotes included
}

// IsRaw reports whether the string was written in backticks.
func (s *String) IsRaw() bool { return strings.HasPrefix(s.Raw, "`") }

// Number is an integer or decimal number. The parser checks that numbers
// which must be integers (codes, weights, counts) are.
type Number struct {
	Pos   Pos
	Text  string // as written
	Value float64
}

// Int returns the number as an int.
func (n *Number) Int() int { return int(n.Value) }

// Duration is a Go-style duration: 1s, 250ms, 1m30s.
type Duration struct {
	Pos   Pos
	Text  string // as written
	Value time.Duration
}

// Addr is a HOST:PORT address; an IPv6 host is written in brackets.
type Addr struct {
	Pos  Pos
	Text string // as written
	Host string // without brackets; may be empty (":8080")
	Port string // decimal, 1-65535
}

// Expr is a CEL expression, kept as raw source text for the CEL compiler.
// Text has no leading or trailing blanks; it may span lines (inside
// brackets or strings).
type Expr struct {
	Pos  Pos // of Text's first byte
	End  Pos // just after Text's last byte
	Text string
}

// PosAt returns the file position of the byte at offset off within Text.
func (e *Expr) PosAt(off int) Pos {
	off = max(0, min(off, len(e.Text)))
	return e.Pos.advance(e.Text[:off])
}

// PosAtLineCol returns the file position of a position reported by cel-go
// on Text: line is 1-based, col is 0-based and counts code points (the
// convention of cel-go's common.Location).
func (e *Expr) PosAtLineCol(line, col int) Pos {
	off := 0
	for l := 1; l < line; l++ {
		i := strings.IndexByte(e.Text[off:], '\n')
		if i < 0 {
			break
		}
		off += i + 1
	}
	for ; col > 0 && off < len(e.Text) && e.Text[off] != '\n'; col-- {
		_, size := utf8.DecodeRuneInString(e.Text[off:])
		off += size
	}
	return e.PosAt(off)
}

// Start returns the leaf's position.
func (n *Ident) Start() Pos    { return n.Pos }
func (n *String) Start() Pos   { return n.Pos }
func (n *Number) Start() Pos   { return n.Pos }
func (n *Duration) Start() Pos { return n.Pos }
func (n *Addr) Start() Pos     { return n.Pos }
func (n *Expr) Start() Pos     { return n.Pos }

// ---- top level ----

// Admin is `admin ADDRESS`.
type Admin struct {
	StmtInfo
	Addr *Addr
}

// Import is `import "path"`; the path is relative to the importing file.
type Import struct {
	StmtInfo
	Path *String
}

// Upstream is `upstream NAME { ... }`.
type Upstream struct {
	StmtInfo
	Name  *Ident
	Stmts []UpstreamStmt // in source order
	Body  Block
}

// Listener is `listener NAME ADDRESS { ... }`.
type Listener struct {
	StmtInfo
	Name  *Ident
	Addr  *Addr
	Items []ListenerItem // filters and routes in source order, interleaved as written
	Body  Block
}

// Test is `test "NAME" { ... }`.
type Test struct {
	StmtInfo
	Name  *String
	Stmts []TestStmt
	Body  Block
}

// ---- upstream statements ----

// Endpoint is `endpoint HOST:PORT [weight N]`.
type Endpoint struct {
	StmtInfo
	Addr   *Addr
	Weight *Number // nil: not given
}

// LB is `lb POLICY` or `lb ring_hash(EXPR)` / `lb maglev(EXPR)`.
type LB struct {
	StmtInfo
	Policy *Ident // round_robin, least_request, random, ring_hash or maglev
	Hash   *Expr  // the hash key of ring_hash and maglev; nil for the others
}

// ConnectTimeout is `connect_timeout D`.
type ConnectTimeout struct {
	StmtInfo
	Timeout *Duration
}

// Protocol is `protocol NAME`: http1 or http2 in an upstream, also auto in
// a listener.
type Protocol struct {
	StmtInfo
	Name *Ident
}

// HealthCheck is `health_check http "PATH" [interval D]`.
type HealthCheck struct {
	StmtInfo
	Kind     *Ident // http
	Path     *String
	Interval *Duration // nil: not given
}

// ---- tls and http2 blocks (listeners and upstreams) ----

// TLS is `tls { ... }`: in a listener it terminates TLS, in an upstream it
// originates TLS to the endpoints. Which statements a block may hold
// depends on where it is; the parser checks.
type TLS struct {
	StmtInfo
	Stmts []TLSStmt
	Body  Block
}

// TLSStmt is a statement inside a tls block: *TLSCert or *TLSOption.
type TLSStmt interface {
	Stmt
	tlsStmt()
}

// TLSCert is `cert "FILE" key "FILE"`: a PEM certificate chain and its
// private key, paths relative to the .sluice file.
type TLSCert struct {
	StmtInfo
	Cert *String
	Key  *String
}

// TLSOption is `NAME STRING` in a tls block (alpn, cipher_suites,
// min_version, max_version; client_ca in a listener; sni, ca and san in an
// upstream) or the flag require_client_cert (Value nil).
type TLSOption struct {
	StmtInfo
	Name  *Ident
	Value *String // nil for a flag
}

// HTTP2 is `http2 { ... }`: HTTP/2 settings of a listener or an upstream.
type HTTP2 struct {
	StmtInfo
	Stmts []HTTP2Stmt
	Body  Block
}

// HTTP2Stmt is a statement inside an http2 block: *HTTP2Setting or
// *Keepalive.
type HTTP2Stmt interface {
	Stmt
	http2Stmt()
}

// HTTP2Setting is `max_concurrent_streams N`, `initial_stream_window N` or
// `initial_connection_window N` (window sizes in bytes).
type HTTP2Setting struct {
	StmtInfo
	Name  *Ident
	Value *Number
}

// Keepalive is `keepalive D [timeout D]` in an http2 block: a PING every
// D on an idle connection, closed when one is not answered in time.
type Keepalive struct {
	StmtInfo
	Interval *Duration
	Timeout  *Duration // nil: not given
}

// ---- listener items ----

// On is `on request|response [when EXPR] { ACTIONS }`, a CEL stream filter.
type On struct {
	StmtInfo
	Phase   *Ident // request or response
	When    *Expr  // nil: always
	Actions []Action
	Body    Block
}

// Route is `route NAME [when EXPR] { ACTIONS }`.
type Route struct {
	StmtInfo
	Name    *Ident
	When    *Expr // nil: matches everything
	Actions []Action
	Body    Block
}

// Lua is a Lua filter: lua "FILE" (File set) or lua `CODE` (Code set),
// for the listener or, inside a route, for that route only.
type Lua struct {
	StmtInfo
	File *String // a "..." string: a file path, relative to the .sluice file
	Code *String // a `...` string: inline Lua source
}

// Wasm is `wasm "FILE" [config STRING] [root_id STRING]`.
type Wasm struct {
	StmtInfo
	File   *String
	Config *String // nil: not given
	RootID *String // nil: not given
}

// AccessLog is `access_log "PATH" [format STRING]` in a listener: one line
// per request in Envoy's %COMMAND% format ("/dev/stdout" for the terminal).
type AccessLog struct {
	StmtInfo
	Path   *String
	Format *String // nil: Envoy's default format
}

// ---- actions ----

// HeaderOp is the verb of a header action.
type HeaderOp int

const (
	HeaderSet    HeaderOp = iota // set H = EXPR: replace
	HeaderAdd                    // add H = EXPR: append a value
	HeaderRemove                 // remove H
)

func (op HeaderOp) String() string {
	switch op {
	case HeaderSet:
		return "set"
	case HeaderAdd:
		return "add"
	case HeaderRemove:
		return "remove"
	}
	return "?"
}

// HeaderRef is `request.headers["K"]` or `response.headers["K"]`.
type HeaderRef struct {
	Pos Pos
	Msg *Ident  // request or response
	Key *String // the header name as written
}

// Start returns r.Pos.
func (r *HeaderRef) Start() Pos { return r.Pos }

// HeaderAction is `set H = EXPR`, `add H = EXPR` or `remove H`.
type HeaderAction struct {
	StmtInfo
	Op     HeaderOp
	Target *HeaderRef
	Value  *Expr // nil for remove
}

// Rewrite is `rewrite path EXPR` or `rewrite host EXPR`.
type Rewrite struct {
	StmtInfo
	What  *Ident // path or host
	Value *Expr
}

// RateLimit is `ratelimit N per DURATION [by EXPR]`.
type RateLimit struct {
	StmtInfo
	Count *Number // integer > 0
	Per   *Duration
	By    *Expr // nil: one bucket
}

// Delay is `delay DURATION [percent P]`.
type Delay struct {
	StmtInfo
	Duration *Duration
	Percent  *Number // 0-100; nil: always
}

// Abort is `abort CODE [percent P]`.
type Abort struct {
	StmtInfo
	Code    *Number
	Percent *Number // 0-100; nil: always
}

// Respond is the terminal `respond CODE [EXPR]`.
type Respond struct {
	StmtInfo
	Code *Number
	Body *Expr // nil: empty body
}

// Redirect is the terminal `redirect CODE EXPR`.
type Redirect struct {
	StmtInfo
	Code     *Number // 301, 302, 303, 307 or 308
	Location *Expr
}

// Deny is the terminal `deny [CODE]`.
type Deny struct {
	StmtInfo
	Code *Number // nil: the compiler's default (403)
}

// Proxy is the terminal `proxy UPSTREAM [OPTIONS]` or
// `proxy split(NAME: WEIGHT, ...) [OPTIONS]`. Exactly one of Upstream and
// Split is set.
type Proxy struct {
	StmtInfo
	Upstream *Ident
	Split    []*SplitTarget

	Timeout       *Duration
	Retries       *Number
	RetryOn       *String
	Mirror        *Ident
	MirrorPercent *Number
}

// SplitTarget is `NAME: WEIGHT` in `proxy split(...)`.
type SplitTarget struct {
	Upstream *Ident
	Weight   *Number // integer >= 0
}

// Start returns the position of the upstream name.
func (t *SplitTarget) Start() Pos { return t.Upstream.Pos }

// ---- tests ----

// Request is `request METHOD "URL" [header "K" "V"]... [source "IP"] [body STRING]`.
type Request struct {
	StmtInfo
	Method  *Ident
	URL     *String
	Headers []*TestHeader
	Source  *String // nil: not given
	Body    *String // nil: not given
}

// TestHeader is `header "K" "V"` in a test request.
type TestHeader struct {
	Name, Value *String
}

// Start returns the position of the header name.
func (h *TestHeader) Start() Pos { return h.Name.Pos }

// ExpectRoute is `expect route NAME`.
type ExpectRoute struct {
	StmtInfo
	Route *Ident
}

// ExpectUpstream is `expect upstream NAME`.
type ExpectUpstream struct {
	StmtInfo
	Upstream *Ident
}

// ExpectRespond is `expect respond CODE [STRING]`.
type ExpectRespond struct {
	StmtInfo
	Code *Number
	Body *String // nil: any body
}

// ExpectHeader is `expect header "K" "V"`.
type ExpectHeader struct {
	StmtInfo
	Name, Value *String
}

// ---- interface membership ----

func (*Admin) declNode()    {}
func (*Import) declNode()   {}
func (*Upstream) declNode() {}
func (*Listener) declNode() {}
func (*Test) declNode()     {}

func (*Endpoint) upstreamStmt()       {}
func (*LB) upstreamStmt()             {}
func (*ConnectTimeout) upstreamStmt() {}
func (*Protocol) upstreamStmt()       {}
func (*HealthCheck) upstreamStmt()    {}
func (*TLS) upstreamStmt()            {}
func (*HTTP2) upstreamStmt()          {}

func (*TLSCert) tlsStmt()   {}
func (*TLSOption) tlsStmt() {}

func (*HTTP2Setting) http2Stmt() {}
func (*Keepalive) http2Stmt()    {}

func (*Protocol) listenerItem()  {}
func (*AccessLog) listenerItem() {}
func (*TLS) listenerItem()       {}
func (*HTTP2) listenerItem()     {}
func (*On) listenerItem()        {}
func (*Lua) listenerItem()       {}
func (*Wasm) listenerItem()      {}
func (*Route) listenerItem()     {}

func (*HeaderAction) action() {}
func (*Rewrite) action()      {}
func (*RateLimit) action()    {}
func (*Delay) action()        {}
func (*Abort) action()        {}
func (*Respond) action()      {}
func (*Redirect) action()     {}
func (*Deny) action()         {}
func (*Proxy) action()        {}
func (*Lua) action()          {}
func (*Wasm) action()         {}

func (*Request) testStmt()        {}
func (*ExpectRoute) testStmt()    {}
func (*ExpectUpstream) testStmt() {}
func (*ExpectRespond) testStmt()  {}
func (*ExpectHeader) testStmt()   {}

// IsTerminal reports whether a ends a request: respond, redirect, deny or proxy.
func IsTerminal(a Action) bool {
	switch a.(type) {
	case *Respond, *Redirect, *Deny, *Proxy:
		return true
	}
	return false
}

// ---- accessors for the compiler ----

// Endpoints returns the endpoint statements of u in order.
func (u *Upstream) Endpoints() []*Endpoint { return stmtsOf[*Endpoint](u.Stmts) }

// LB returns the first lb statement of u, or nil.
func (u *Upstream) LB() *LB { return first[*LB](u.Stmts) }

// ConnectTimeout returns the first connect_timeout statement of u, or nil.
func (u *Upstream) ConnectTimeout() *ConnectTimeout { return first[*ConnectTimeout](u.Stmts) }

// Protocol returns the first protocol statement of u, or nil.
func (u *Upstream) Protocol() *Protocol { return first[*Protocol](u.Stmts) }

// HealthCheck returns the first health_check statement of u, or nil.
func (u *Upstream) HealthCheck() *HealthCheck { return first[*HealthCheck](u.Stmts) }

// TLS returns the first tls block of u, or nil.
func (u *Upstream) TLS() *TLS { return first[*TLS](u.Stmts) }

// HTTP2 returns the first http2 block of u, or nil.
func (u *Upstream) HTTP2() *HTTP2 { return first[*HTTP2](u.Stmts) }

// TLS returns the first tls block of l, or nil.
func (l *Listener) TLS() *TLS { return first[*TLS](l.Items) }

// HTTP2 returns the first http2 block of l, or nil.
func (l *Listener) HTTP2() *HTTP2 { return first[*HTTP2](l.Items) }

// Routes returns the routes of l in order.
func (l *Listener) Routes() []*Route { return stmtsOf[*Route](l.Items) }

// Protocol returns the first protocol statement of l, or nil.
func (l *Listener) Protocol() *Protocol { return first[*Protocol](l.Items) }

// Request returns the first request statement of t, or nil.
func (t *Test) Request() *Request { return first[*Request](t.Stmts) }

func stmtsOf[T Stmt, S Stmt](list []S) []T {
	var out []T
	for _, s := range list {
		if t, ok := any(s).(T); ok {
			out = append(out, t)
		}
	}
	return out
}

func first[T Stmt, S Stmt](list []S) T {
	for _, s := range list {
		if t, ok := any(s).(T); ok {
			return t
		}
	}
	var zero T
	return zero
}
