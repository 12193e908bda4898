// Package compile turns a parsed Sluice program (dsl/syntax) into the
// engine's one config model (engine/config): upstreams become clusters,
// listeners become listeners with one HTTP connection manager whose route
// table holds the routes in order, and the CEL parts become either native
// route matchers (see Lift) or programs run by the rules filter (dsl/rules).
// It also runs what `sluice explain` and `sluice test` need, through the
// real route table and the real rules filter, without sending anything.
//
// # Mapping
//
//   - `admin ADDR` → Snapshot.Admin.
//   - `upstream NAME {...}` → a Cluster: STATIC (every endpoint an IP) or
//     STRICT_DNS, healthy endpoints with weights, lb policy (round_robin by
//     default), connect_timeout (5s), protocol (http1; auto needs tls),
//     Envoy's default circuit breakers. The key of
//     ring_hash(EXPR)/maglev(EXPR) becomes the HashPolicy of every route
//     that proxies to the upstream; it must be request.headers["NAME"] or
//     source.address. `tls {...}` → Cluster.TLS (an UpstreamTLS), `http2
//     {...}` → Cluster.HTTP2.
//   - `listener NAME ADDR {...}` → a Listener with one FilterChain and an
//     HTTPConnectionManager (stat prefix NAME, codec from `protocol`, auto
//     by default, UseRemoteAddress like an edge proxy, xDS's defaults for
//     timeouts and limits) with an inline RouteConfiguration NAME holding one
//     VirtualHost NAME for "*" with the routes in file order. `tls {...}`
//     → the chain's TLS (a DownstreamTLS: the one chain then serves TLS
//     only), `http2 {...}` → the connection manager's HTTP2.
//   - Files named in tls blocks are relative to the naming file and become
//     DataSource filenames, which the engine reads when it applies the
//     config; they are watched (Result.Watch) so renewed certificates
//     reload.
//   - `route NAME [when EXPR] {...}` → a Route. The `when` is lifted into
//     path/prefix/header matchers where it has a common shape (Lift); what
//     remains is a RouteMatch.Condition (a *rules.Condition). The terminal
//     action becomes the route's action: `proxy` a RouteAction (timeout 15s
//     unless given, retries, mirror, split as WeightedClusters), `deny` and
//     a constant `respond` a DirectResponse, a constant absolute or
//     /-relative `redirect` a Redirect. A `respond` or `redirect` whose value
//     reads the request is sent by the rules filter: the route then holds a
//     placeholder DirectResponse with the same status and an empty body,
//     which the filter pre-empts. Every other action of the route is
//     per-route config of the rules filter
//     (Route.TypedPerFilterConfig["sluice.rules"], a *rules.RouteActions).
//   - `on request|response` blocks → one rules filter "sluice.rules"
//     (config *rules.Config) in the connection manager's chain. The filter
//     is in the chain whenever a block or a route action needs it; without
//     `on` blocks it is Disabled in the chain and the per-route configs of
//     the routes with actions turn it on, so other routes do not pay for it.
//   - `test "NAME" {...}` → a Test in the Result, run by RunTests.
//
// # Semantics worth knowing
//
//   - request.path is the whole :path, query included: `request.path ==
//     "/healthz"` does not match "/healthz?probe=1" (request.url_path
//     does). Lifting keeps this exactly.
//   - A `when` that reads a missing header (`request.headers["x"] == "1"`
//     without x) is false, not an error, both as lifted matchers and as CEL.
//   - A route or `on request` condition cannot read response attributes.
//   - `rewrite path` and `rewrite host` do not pick the route again.
//   - Rate limit buckets live in the applied config: a reload starts them
//     full.
//   - `retries N` without `retry_on` retries on DefaultRetryOn.
//
// # Errors
//
// Compile reports every error it finds as a syntax.Diagnostics, in file
// order, each with file:line:col, the source line, a caret and what was
// expected. A program with errors yields no Result.
package compile

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	wasmextv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-proxy/sluice/dsl/expr"
	"github.com/sluice-proxy/sluice/dsl/internal/suggest"
	"github.com/sluice-proxy/sluice/dsl/rules"
	"github.com/sluice-proxy/sluice/dsl/syntax"
	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
)

// Defaults, as the xDS translator uses for an Envoy bootstrap.
const (
	DefaultConnectTimeout         = 5 * time.Second
	DefaultRouteTimeout           = 15 * time.Second
	DefaultRequestHeadersTimeout  = 10 * time.Second
	DefaultIdleTimeout            = time.Hour
	DefaultStreamIdleTimeout      = 5 * time.Minute
	DefaultUpstreamIdleTimeout    = time.Hour
	DefaultMaxRequestHeadersBytes = 60 << 10
	DefaultMaxHeadersCount        = 100
	// DenyBody is the body of `deny`.
	DenyBody = "forbidden\n"
)

// DefaultRetryOn is what `retries N` retries on without `retry_on`.
var DefaultRetryOn = []string{"gateway-error", "connect-failure", "reset"}

// RetryOn lists the retry conditions the proxy implements.
var RetryOn = []string{"5xx", "gateway-error", "connect-failure", "reset", "reset-before-request", "retriable-4xx", "refused-stream",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}

// Result is a compiled program.
type Result struct {
	Snapshot *config.Snapshot
	Tests    []*Test
	// Watch lists the files a running proxy should watch: every .sluice
	// file of the program and the Lua and wasm files it names.
	Watch []string

	listeners []*listenerInfo
}

// SetLogger makes the rules filters of the result log failed requests to
// l (by default they use slog.Default() at the time of the failure).
func (res *Result) SetLogger(l *slog.Logger) {
	for _, li := range res.listeners {
		if li.rules != nil {
			li.rules.Logger = l
		}
	}
}

// listenerInfo keeps what Explain needs about one listener.
type listenerInfo struct {
	routeLua  int                  // route-level Lua filters needed: the most any route has
	routeWasm []*config.HTTPFilter // route-level Wasm filters, one per statement
	name      string
	pos       syntax.Pos
	port      string
	cfg       *config.Listener
	hcm       *config.HTTPConnectionManager
	rules     *rules.Config // nil: no rules filter
	routes    map[string]*routeInfo
}

type routeInfo struct {
	pos       syntax.Pos
	cfg       *config.Route
	when      string   // the condition as written; "" for none
	lifted    []string // what was lifted into matchers
	rest      string   // the CEL left as a condition
	constTrue bool     // `when` is the constant true
	actions   *rules.RouteActions
	lua       []*luav3.LuaPerRoute // the route's own Lua filters, in order
	wasm      []*syntax.Wasm       // the route's own Wasm filters, in order
}

// Test is a compiled `test` block.
type Test struct {
	Name     string
	Pos      syntax.Pos
	Listener string // the listener the request goes to
	Method   string
	URL      string
	Headers  []header.Field
	Source   string // the client address; "" when not given
	Body     string // the request body, if any
	Expects  []*Expect
}

// ExpectKind says what an Expect checks.
type ExpectKind int

const (
	ExpectRoute    ExpectKind = iota // the matched route is Name
	ExpectUpstream                   // the request is proxied to the upstream Name
	ExpectRespond                    // the reply has status Code (and Body when HasBody)
	ExpectHeader                     // the request sent upstream has header Name: Value
)

// Expect is one `expect` line.
type Expect struct {
	Pos     syntax.Pos
	Text    string // as written
	Kind    ExpectKind
	Name    string
	Value   string
	Code    int
	Body    string
	HasBody bool
}

// Load parses the file root with its imports and compiles it: the usual
// entry point of the CLI. Syntax and compile errors come together in one
// syntax.Diagnostics, in file order; compile errors of a top-level block
// that has a syntax error are left out (they would follow from it). A root
// file that cannot be read gives read's error.
func Load(root string, read func(string) ([]byte, error), env *expr.Env) (*Result, error) {
	if read == nil {
		read = os.ReadFile
	}
	prog, err := syntax.ParseFiles(root, read)
	if prog == nil {
		return nil, err
	}
	var synDiags syntax.Diagnostics
	if err != nil && !errors.As(err, &synDiags) {
		return nil, err
	}
	res, cerr := Compile(prog, env)
	if len(synDiags) == 0 {
		return res, cerr
	}
	all := slices.Clone(synDiags)
	var compDiags syntax.Diagnostics
	if errors.As(cerr, &compDiags) {
		for _, d := range compDiags {
			if !inBrokenDecl(prog, synDiags, d.Pos) {
				all = append(all, d)
			}
		}
	}
	all.Sort()
	return nil, all
}

// WatchPaths returns the files to watch for the program rooted at root
// even when it does not compile (a broken import must stay watched to
// notice its fix): every .sluice file that could be read and the Lua and
// wasm files they name; at least root.
func WatchPaths(root string, read func(string) ([]byte, error)) []string {
	if read == nil {
		read = os.ReadFile
	}
	prog, _ := syntax.ParseFiles(root, read)
	if prog == nil {
		return []string{filepath.Clean(root)}
	}
	return prog.WatchPaths()
}

// inBrokenDecl reports whether pos lies in a top-level statement that has
// a syntax error.
func inBrokenDecl(prog *syntax.Program, syn syntax.Diagnostics, pos syntax.Pos) bool {
	f := prog.File(pos.File)
	if f == nil {
		return true
	}
	for _, d := range f.Decls {
		info := d.Info()
		if pos.Offset < info.Pos.Offset || pos.Offset >= max(info.End.Offset, info.Pos.Offset+1) {
			continue
		}
		for _, s := range syn {
			if s.Pos.File == pos.File && s.Pos.Offset >= info.Pos.Offset && s.Pos.Offset < max(info.End.Offset, info.Pos.Offset+1) {
				return true
			}
		}
	}
	return false
}

// Compile compiles a parsed program. env is the CEL environment (nil:
// expr.NewEnv()). Errors are a syntax.Diagnostics.
func Compile(prog *syntax.Program, env *expr.Env) (*Result, error) {
	if prog == nil || prog.Root == nil {
		return nil, errors.New("compile: no program")
	}
	if env == nil {
		var err error
		if env, err = expr.NewEnv(); err != nil {
			return nil, err
		}
	}
	c := &compiler{
		prog:      prog,
		env:       env,
		upstreams: map[string]*upstreamInfo{},
		snap:      &config.Snapshot{Source: prog.Root.Path},
	}
	c.compile(prog.Decls())
	if len(c.diags) > 0 {
		c.diags.Sort()
		return nil, c.diags
	}
	h := sha256.New()
	for _, f := range prog.Files {
		fmt.Fprintf(h, "%s\x00%d\x00", f.Path, len(f.Src))
		h.Write(f.Src)
	}
	c.snap.Version = "sluice-" + hex.EncodeToString(h.Sum(nil))[:16]
	return &Result{Snapshot: c.snap, Tests: c.tests, Watch: prog.WatchPaths(), listeners: c.listeners}, nil
}

type compiler struct {
	prog  *syntax.Program
	env   *expr.Env
	diags syntax.Diagnostics

	snap      *config.Snapshot
	upstreams map[string]*upstreamInfo
	upOrder   []string
	listeners []*listenerInfo
	tests     []*Test
}

type upstreamInfo struct {
	pos  syntax.Pos
	cfg  *config.Cluster
	hash *config.HashPolicy
}

func (c *compiler) errorf(pos syntax.Pos, hint, format string, args ...any) {
	c.diags = append(c.diags, c.prog.Errorf(pos, hint, format, args...))
}

// text returns a statement as written, on one line.
func (c *compiler) text(from, to syntax.Pos) string {
	f := c.prog.File(from.File)
	if f == nil || from.Offset > to.Offset || to.Offset > len(f.Src) {
		return ""
	}
	return strings.Join(strings.Fields(string(f.Src[from.Offset:to.Offset])), " ")
}

func (c *compiler) stmtText(s syntax.Stmt) string {
	info := s.Info()
	return c.text(info.Pos, info.End)
}

func (c *compiler) compile(decls []syntax.Decl) {
	var admin *syntax.Admin
	// Names first, so references may come before declarations.
	for _, d := range decls {
		if u, ok := d.(*syntax.Upstream); ok {
			if prev, dup := c.upstreams[u.Name.Name]; dup {
				c.errorf(u.Name.Pos, "", "duplicate upstream %q (first declared at %s)", u.Name.Name, prev.pos)
				continue
			}
			c.upstreams[u.Name.Name] = &upstreamInfo{pos: u.Name.Pos}
			c.upOrder = append(c.upOrder, u.Name.Name)
		}
	}
	for _, d := range decls {
		switch d := d.(type) {
		case *syntax.Admin:
			if admin != nil {
				c.errorf(d.Pos, "", "duplicate admin statement (first at %s)", admin.Pos)
				continue
			}
			admin = d
			if c.checkBindAddr(d.Addr, "the admin server") {
				c.snap.Admin = &config.Admin{Address: joinAddr(d.Addr)}
			}
		case *syntax.Upstream:
			if u := c.upstreams[d.Name.Name]; u != nil && u.pos == d.Name.Pos {
				c.upstream(d, u)
			}
		}
	}
	for _, name := range c.upOrder {
		if u := c.upstreams[name]; u.cfg != nil {
			c.snap.Clusters = append(c.snap.Clusters, u.cfg)
		}
	}
	addrs := map[string]*syntax.Listener{}
	names := map[string]*syntax.Listener{}
	for _, d := range decls {
		l, ok := d.(*syntax.Listener)
		if !ok {
			continue
		}
		if prev := names[l.Name.Name]; prev != nil {
			c.errorf(l.Name.Pos, "", "duplicate listener %q (first declared at %s)", l.Name.Name, prev.Name.Pos)
			continue
		}
		names[l.Name.Name] = l
		key := joinAddr(l.Addr)
		if prev := addrs[key]; prev != nil && l.Addr.Port != "0" {
			c.errorf(l.Addr.Pos, "", "listeners %q and %q both use address %s", prev.Name.Name, l.Name.Name, key)
		}
		addrs[key] = l
		if li := c.listener(l); li != nil {
			c.listeners = append(c.listeners, li)
			c.snap.Listeners = append(c.snap.Listeners, li.cfg)
		}
	}
	tests := map[string]*syntax.Test{}
	for _, d := range decls {
		t, ok := d.(*syntax.Test)
		if !ok {
			continue
		}
		if prev := tests[t.Name.Value]; prev != nil {
			c.errorf(t.Name.Pos, "", "duplicate test %q (first declared at %s)", t.Name.Value, prev.Name.Pos)
			continue
		}
		tests[t.Name.Value] = t
		if tt := c.test(t); tt != nil {
			c.tests = append(c.tests, tt)
		}
	}
}

func joinAddr(a *syntax.Addr) string {
	if strings.Contains(a.Host, ":") {
		return "[" + a.Host + "]:" + a.Port
	}
	return a.Host + ":" + a.Port
}

// checkBindAddr checks an address to listen on: an IP (or localhost, or
// no host for every interface).
func (c *compiler) checkBindAddr(a *syntax.Addr, what string) bool {
	if a.Host == "" || a.Host == "localhost" {
		return true
	}
	if _, err := netip.ParseAddr(a.Host); err != nil {
		c.errorf(a.Pos, "write an IP address such as 127.0.0.1:8080, [::1]:8080 or :8080 for every interface",
			"bad address %s for %s: a host name cannot be bound, expected an IP address", a.Text, what)
		return false
	}
	return true
}

// ---- CEL ----

// cel compiles an expression of the program for a slot ("a `when`
// condition", "a header value", ...), reporting its errors at their
// positions in the file.
func (c *compiler) cel(e *syntax.Expr, want expr.Type, slot string) *expr.Program {
	if e == nil {
		return nil
	}
	p, err := c.env.Compile(e.Text, want)
	if err == nil {
		return p
	}
	var list expr.ErrorList
	if !errors.As(err, &list) {
		c.errorf(e.Pos, "", "%s: %v", slot, err)
		return nil
	}
	for _, ee := range list {
		pos := e.PosAt(ee.Offset)
		if ee.Got != "" {
			hint := ""
			if i := strings.Index(ee.Message, "(convert it with"); i >= 0 {
				hint = strings.TrimSuffix(ee.Message[i+1:], ")")
			}
			c.errorf(pos, hint, "%s must be a %s, got %s", slot, ee.Want, ee.Got)
			continue
		}
		c.errorf(pos, "", "%s", ee.Message)
	}
	return nil
}

// requestOnly reports an expression evaluated before there is a response
// that reads response attributes.
func (c *compiler) requestOnly(e *syntax.Expr, p *expr.Program, what string) *expr.Program {
	if p == nil {
		return nil
	}
	for _, id := range p.Attributes() {
		switch id {
		case attr.ResponseCode, attr.ResponseHeaders, attr.ResponseTrailers, attr.ResponseSize:
			c.errorf(e.Pos, "test the response in an `on response` block",
				"%s is evaluated before there is a response: it cannot read %s", what, attr.Names[id])
			return nil
		}
	}
	return p
}

// constString returns the value of a constant string program.
func constString(p *expr.Program) (string, bool) {
	if p == nil {
		return "", false
	}
	v, ok := p.Constant()
	if !ok {
		return "", false
	}
	s, ok := v.Value().(string)
	return s, ok
}

// ---- upstreams ----

var lbPolicies = map[string]config.LBPolicy{
	"round_robin":   config.LBRoundRobin,
	"least_request": config.LBLeastRequest,
	"random":        config.LBRandom,
	"ring_hash":     config.LBRingHash,
	"maglev":        config.LBMaglev,
}

func (c *compiler) upstream(u *syntax.Upstream, info *upstreamInfo) {
	cl := &config.Cluster{
		Name:            u.Name.Name,
		Type:            "STATIC",
		ConnectTimeout:  DefaultConnectTimeout,
		LBPolicy:        config.LBRoundRobin,
		CircuitBreakers: config.DefaultCircuitBreakers(),
		Protocol:        config.ProtocolHTTP1,
		IdleTimeout:     DefaultUpstreamIdleTimeout,
	}
	var (
		protocol *syntax.Protocol
		h2       *syntax.HTTP2
	)
	seen := map[string]syntax.Pos{}
	once := func(s syntax.Stmt, kw string) bool {
		if prev, dup := seen[kw]; dup {
			c.errorf(s.Info().Pos, "", "duplicate %s in upstream %q (first at %s)", kw, u.Name.Name, prev)
			return false
		}
		seen[kw] = s.Info().Pos
		return true
	}
	ok := true
	for _, s := range u.Stmts {
		switch s := s.(type) {
		case *syntax.Endpoint:
			ep := &config.Endpoint{Address: joinAddr(s.Addr), Weight: 1, Healthy: true}
			if s.Weight != nil {
				ep.Weight = uint32(s.Weight.Int())
			}
			if s.Addr.Host == "" {
				c.errorf(s.Addr.Pos, "as in endpoint 127.0.0.1:9001 or endpoint backend.internal:80", "endpoint %s has no host", s.Addr.Text)
				ok = false
			} else if _, err := netip.ParseAddr(s.Addr.Host); err != nil {
				cl.Type = "STRICT_DNS"
			}
			cl.Endpoints = append(cl.Endpoints, ep)
		case *syntax.LB:
			if !once(s, "lb") {
				continue
			}
			p, known := lbPolicies[s.Policy.Name]
			if !known {
				c.errorf(s.Policy.Pos, "expected one of round_robin, least_request, random, ring_hash(EXPR), maglev(EXPR)", "unknown load balancing policy %q", s.Policy.Name)
				ok = false
				continue
			}
			cl.LBPolicy = p
			if s.Hash != nil {
				if prog := c.cel(s.Hash, expr.String, "a hash key"); prog != nil {
					if hp, lifted := hashPolicy(s.Hash.Text); lifted {
						info.hash = &hp
					} else {
						c.errorf(s.Hash.Pos, `use request.headers["NAME"] or source.address`,
							"this %s hash key is not supported yet: only a request header or the client address can be hashed", s.Policy.Name)
						ok = false
					}
				} else {
					ok = false
				}
			}
		case *syntax.ConnectTimeout:
			if !once(s, "connect_timeout") {
				continue
			}
			if s.Timeout.Value <= 0 {
				c.errorf(s.Timeout.Pos, "", "connect_timeout must be greater than 0")
				ok = false
			}
			cl.ConnectTimeout = s.Timeout.Value
		case *syntax.Protocol:
			if !once(s, "protocol") {
				continue
			}
			protocol = s
			cl.Protocol = s.Name.Name
		case *syntax.TLS:
			if !once(s, "tls") {
				continue
			}
			if cl.TLS = c.upstreamTLS(s, u.Name.Name); cl.TLS == nil {
				ok = false
			}
		case *syntax.HTTP2:
			if !once(s, "http2") {
				continue
			}
			h2 = s
			var good bool
			if cl.HTTP2, good = c.http2(s, "upstream "+strconv.Quote(u.Name.Name)); !good {
				ok = false
			}
		case *syntax.HealthCheck:
			c.errorf(s.Pos, "remove it for now; unhealthy endpoints are detected by failed requests only", "health_check is not supported yet")
			ok = false
		}
	}
	switch {
	case cl.Protocol == config.ProtocolAuto && u.TLS() == nil:
		c.errorf(protocol.Name.Pos, "add a tls block to the upstream, or say protocol http1 or http2",
			"protocol auto needs tls: it picks HTTP/2 or HTTP/1.1 by ALPN in the TLS handshake")
		ok = false
	case h2 != nil && cl.Protocol == config.ProtocolHTTP1:
		c.errorf(h2.Pos, "add protocol http2 (or auto with tls, or downstream)",
			"http2 settings have no effect: upstream %q speaks HTTP/1.1", u.Name.Name)
		ok = false
	}
	if len(cl.Endpoints) == 0 {
		c.errorf(u.Name.Pos, "add a line such as: endpoint 127.0.0.1:9001", "upstream %q has no endpoint", u.Name.Name)
		ok = false
	}
	if ok {
		info.cfg = cl
	}
}

// upstreamRef checks a reference to an upstream.
func (c *compiler) upstreamRef(id *syntax.Ident) bool {
	if _, ok := c.upstreams[id.Name]; ok {
		return true
	}
	hint := ""
	if len(c.upOrder) == 0 {
		hint = "declare it with: upstream " + id.Name + " { endpoint HOST:PORT }"
	} else {
		hint = "upstreams are: " + strings.Join(c.upOrder, ", ")
		if s := suggest.Closest(id.Name, c.upOrder); s != "" {
			hint = "did you mean " + s + "? " + hint
		}
	}
	c.errorf(id.Pos, hint, "unknown upstream %q", id.Name)
	return false
}

// ---- listeners ----

func (c *compiler) listener(l *syntax.Listener) *listenerInfo {
	c.checkBindAddr(l.Addr, "listener "+strconv.Quote(l.Name.Name))
	name := l.Name.Name
	hcm := &config.HTTPConnectionManager{
		StatPrefix:             name,
		Codec:                  config.CodecAuto,
		RequestHeadersTimeout:  DefaultRequestHeadersTimeout,
		IdleTimeout:            DefaultIdleTimeout,
		StreamIdleTimeout:      DefaultStreamIdleTimeout,
		MaxRequestHeadersBytes: DefaultMaxRequestHeadersBytes,
		MaxHeadersCount:        DefaultMaxHeadersCount,
		UseRemoteAddress:       true,
		GenerateRequestID:      true,
	}
	vh := &config.VirtualHost{Name: name, Domains: []string{"*"}}
	hcm.RouteConfig = &config.RouteConfiguration{Name: name, VirtualHosts: []*config.VirtualHost{vh}}
	li := &listenerInfo{
		name:   name,
		pos:    l.Name.Pos,
		port:   l.Addr.Port,
		hcm:    hcm,
		routes: map[string]*routeInfo{},
		cfg: &config.Listener{
			Name:         name,
			Address:      joinAddr(l.Addr),
			FilterChains: []*config.FilterChain{{Name: name, HTTP: hcm}},
		},
	}
	rc := &rules.Config{} // every `on` block, for explain and tests
	needRules := false
	// Listener filters run in file order: each run of `on` blocks is one
	// rules filter, with Lua (and later Wasm) filters between them.
	var chain []*config.HTTPFilter
	var seg *rules.Config // the rules filter `on` blocks go to now
	var (
		protocol *syntax.Protocol
		tls      *syntax.TLS
		h2       *syntax.HTTP2
	)
	var catchAll *syntax.Route
	reportedUnreachable := false
	for _, item := range l.Items {
		switch it := item.(type) {
		case *syntax.Protocol:
			if protocol != nil {
				c.errorf(it.Pos, "", "duplicate protocol in listener %q (first at %s)", name, protocol.Pos)
				continue
			}
			protocol = it
			hcm.Codec = config.Codec(it.Name.Name)
		case *syntax.TLS:
			if tls != nil {
				c.errorf(it.Pos, "", "duplicate tls in listener %q (first at %s)", name, tls.Pos)
				continue
			}
			tls = it
			li.cfg.FilterChains[0].TLS = c.listenerTLS(it, name)
		case *syntax.HTTP2:
			if h2 != nil {
				c.errorf(it.Pos, "", "duplicate http2 in listener %q (first at %s)", name, h2.Pos)
				continue
			}
			h2 = it
			hcm.HTTP2, _ = c.http2(it, "listener "+strconv.Quote(name))
		case *syntax.AccessLog:
			al := &config.AccessLog{Path: it.Path.Value}
			if it.Format != nil {
				al.Format = it.Format.Value
				if _, err := observe.CompileFormat(al.Format); err != nil {
					c.errorf(it.Format.Pos, "", "%v", err)
					continue
				}
			}
			hcm.AccessLogs = append(hcm.AccessLogs, al)
		case *syntax.On:
			b := c.onBlock(it)
			if b == nil {
				continue
			}
			needRules = true
			if seg == nil {
				seg = &rules.Config{}
				chain = append(chain, &config.HTTPFilter{TypeURL: rules.TypeURL, Config: seg})
			}
			if it.Phase.Name == "request" {
				rc.Request = append(rc.Request, b)
				seg.Request = append(seg.Request, b)
			} else {
				rc.Response = append(rc.Response, b)
				seg.Response = append(seg.Response, b)
			}
		case *syntax.Lua:
			if f := c.luaFilter(it, fmt.Sprintf("sluice.lua.%d", c.countType(chain, TypeLua))); f != nil {
				chain = append(chain, f)
				seg = nil
			}
		case *syntax.Wasm:
			if f := c.wasmFilter(it, fmt.Sprintf("sluice.wasm.%d", c.countType(chain, TypeWasm))); f != nil {
				chain = append(chain, f)
				seg = nil
			}
		case *syntax.Route:
			if prev := li.routes[it.Name.Name]; prev != nil {
				c.errorf(it.Name.Pos, "", "duplicate route %q in listener %q (first declared at %s)", it.Name.Name, name, prev.pos)
				continue
			}
			if catchAll != nil && !reportedUnreachable {
				reportedUnreachable = true
				c.errorf(it.Pos, "move the catch-all route last, or give it a `when`",
					"route %q is unreachable: route %q before it (%s) has no `when` and matches every request",
					it.Name.Name, catchAll.Name.Name, catchAll.Pos)
			}
			ri := c.route(it)
			if ri == nil {
				li.routes[it.Name.Name] = &routeInfo{pos: it.Name.Pos}
				continue
			}
			if it.When == nil || ri.constTrue {
				if catchAll == nil {
					catchAll = it
				}
			}
			li.routes[it.Name.Name] = ri
			li.routeLua = max(li.routeLua, len(ri.lua))
			for _, w := range ri.wasm {
				f := c.wasmFilter(w, fmt.Sprintf("sluice.wasm.route.%d", len(li.routeWasm)))
				if f == nil {
					continue
				}
				f.Disabled = true
				li.routeWasm = append(li.routeWasm, f)
				if ri.cfg.TypedPerFilterConfig == nil {
					ri.cfg.TypedPerFilterConfig = map[string]*config.FilterOverride{}
				}
				ri.cfg.TypedPerFilterConfig[f.Name] = &config.FilterOverride{} // on for this route
			}
			vh.Routes = append(vh.Routes, ri.cfg)
			if ri.actions != nil {
				needRules = true
			}
		}
	}
	if h2 != nil && hcm.Codec == config.CodecHTTP1 {
		c.errorf(h2.Pos, "remove the protocol line (auto serves both) or say protocol http2",
			"http2 settings have no effect: listener %q speaks HTTP/1.1", name)
	}
	if needRules {
		li.rules = rc
		// Route actions are the per-route config of the last rules filter
		// (named rules.FilterName), which runs after every listener
		// filter; without a trailing run of `on` blocks it is one of its
		// own, off in the chain so that only routes with actions pay.
		last := len(chain) - 1
		if last < 0 || chain[last].TypeURL != rules.TypeURL {
			chain = append(chain, &config.HTTPFilter{TypeURL: rules.TypeURL, Config: &rules.Config{}, Disabled: true})
			last = len(chain) - 1
		}
		n := 0
		for i, f := range chain {
			if f.TypeURL != rules.TypeURL {
				continue
			}
			if i == last {
				f.Name = rules.FilterName
			} else {
				f.Name = fmt.Sprintf("%s.%d", rules.FilterName, n)
				n++
			}
		}
	}
	// Route-level Lua filters run last, each off unless its route turns
	// it on with its script.
	for i := 0; i < li.routeLua; i++ {
		chain = append(chain, &config.HTTPFilter{Name: routeLuaName(i), TypeURL: TypeLua, Config: &luav3.Lua{}, Disabled: true})
	}
	// Route-level Wasm filters: Envoy's Wasm filter has no per-route
	// config, so each is a filter of its own, off in the chain and turned
	// on by its route.
	chain = append(chain, li.routeWasm...)
	hcm.HTTPFilters = chain
	return li
}

// TypeLua and TypeLuaPerRoute are Envoy's Lua filter config types: the
// DSL produces the same configs an Envoy bootstrap or xDS would, so one
// compiler serves all three.
const (
	TypeLua         = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
	TypeLuaPerRoute = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
)

func routeLuaName(i int) string { return fmt.Sprintf("sluice.lua.route.%d", i) }

func (c *compiler) countType(chain []*config.HTTPFilter, typeURL string) int {
	n := 0
	for _, f := range chain {
		if f.TypeURL == typeURL {
			n++
		}
	}
	return n
}

// TypeWasm is Envoy's Wasm HTTP filter config type.
const TypeWasm = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"

// wasmFilter is a `wasm "FILE" [config S] [root_id S]` statement as
// Envoy's Wasm filter config (the module file relative to the .sluice
// file, read and compiled when the config is applied).
func (c *compiler) wasmFilter(w *syntax.Wasm, name string) *config.HTTPFilter {
	path := syntax.ResolvePath(w.File.Pos.File, w.File.Value)
	if _, err := os.Stat(path); err != nil {
		c.errorf(w.File.Pos, "", "wasm file: %v", err)
		return nil
	}
	pc := &wasmextv3.PluginConfig{
		Name: name,
		Vm: &wasmextv3.PluginConfig_VmConfig{VmConfig: &wasmextv3.VmConfig{
			VmId:    name,
			Runtime: "envoy.wasm.runtime.v8",
			Code: &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{
				Local: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path}},
			}},
		}},
	}
	if w.RootID != nil {
		pc.RootId = w.RootID.Value
	}
	if w.Config != nil {
		cfg, err := anypb.New(wrapperspb.String(w.Config.Value))
		if err != nil {
			c.errorf(w.Config.Pos, "", "wasm config: %v", err)
			return nil
		}
		pc.Configuration = cfg
	}
	return &config.HTTPFilter{Name: name, TypeURL: TypeWasm, Config: &wasmv3.Wasm{Config: pc}}
}

// luaSource is a `lua` statement's code as Envoy's DataSource: a file
// (relative to the .sluice file, read when the config is compiled) or
// inline source.
func (c *compiler) luaSource(l *syntax.Lua) *corev3.DataSource {
	if l.File != nil {
		path := syntax.ResolvePath(l.File.Pos.File, l.File.Value)
		if _, err := os.Stat(path); err != nil {
			c.errorf(l.File.Pos, "", "lua file: %v", err)
			return nil
		}
		return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path}}
	}
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: l.Code.Value}}
}

// luaFilter is a listener's `lua` statement as an Envoy Lua filter.
func (c *compiler) luaFilter(l *syntax.Lua, name string) *config.HTTPFilter {
	src := c.luaSource(l)
	if src == nil {
		return nil
	}
	return &config.HTTPFilter{Name: name, TypeURL: TypeLua, Config: &luav3.Lua{DefaultSourceCode: src}}
}

func (c *compiler) luaWasm(s syntax.Stmt) {
	switch s.(type) {
	case *syntax.Lua:
		c.errorf(s.Info().Pos, "put it in the listener (every request) or in a route (that route's requests)",
			"a lua filter is a statement of a listener or a route, not an action of an `on` block")
	case *syntax.Wasm:
		c.errorf(s.Info().Pos, "put it in the listener (every request) or in a route (that route's requests)",
			"a wasm filter is a statement of a listener or a route, not an action of an `on` block")
	}
}

// onBlock compiles an `on request|response` block.
func (c *compiler) onBlock(on *syntax.On) *rules.Block {
	ok := true
	b := &rules.Block{Where: on.Pos.String(), Text: c.text(on.Pos, on.Body.Lbrace)}
	if on.When != nil {
		b.When = c.cel(on.When, expr.Bool, "a `when` condition")
		if on.Phase.Name == "request" {
			b.When = c.requestOnly(on.When, b.When, "the condition of an `on request` block")
		}
		if b.When == nil {
			ok = false
		}
	}
	response := on.Phase.Name == "response"
	where := "an `on " + on.Phase.Name + "` block"
	var terminal syntax.Action
	for _, a := range on.Actions {
		if terminal != nil {
			c.errorf(a.Info().Pos, "remove it, or move it before the terminal action",
				"`%s` after the terminal action `%s` (%s) would never run", keyword(a), keyword(terminal), terminal.Info().Pos)
			ok = false
			continue
		}
		if syntax.IsTerminal(a) {
			terminal = a
		}
		act := c.action(a, where, response, nil)
		if act == nil {
			ok = false
			continue
		}
		b.Actions = append(b.Actions, act...)
	}
	if !ok {
		return nil
	}
	return b
}

// keyword returns an action's keyword.
func keyword(a syntax.Action) string {
	switch a := a.(type) {
	case *syntax.HeaderAction:
		return a.Op.String()
	case *syntax.Rewrite:
		return "rewrite"
	case *syntax.RateLimit:
		return "ratelimit"
	case *syntax.Delay:
		return "delay"
	case *syntax.Abort:
		return "abort"
	case *syntax.Respond:
		return "respond"
	case *syntax.Redirect:
		return "redirect"
	case *syntax.Deny:
		return "deny"
	case *syntax.Proxy:
		return "proxy"
	case *syntax.Lua:
		return "lua"
	case *syntax.Wasm:
		return "wasm"
	}
	return "?"
}

// reservedHeaders are headers actions may not touch, and why.
var reservedHeaders = map[string]string{
	"host":              "use `rewrite host EXPR` to change the host",
	"content-length":    "the proxy frames bodies itself",
	"transfer-encoding": "the proxy frames bodies itself",
	"connection":        "hop-by-hop headers are managed by the proxy",
	"upgrade":           "hop-by-hop headers are managed by the proxy",
}

func validHeaderName(n string) bool {
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

// action compiles one non-proxy action of a block or route into rules
// actions. response: the block is `on response`. For a route, rt receives
// the terminal actions that compile into the route itself.
func (c *compiler) action(a syntax.Action, where string, response bool, rt *config.Route) []rules.Action {
	src := rules.Src{Where: a.Info().Pos.String(), Text: c.stmtText(a)}
	requestOnly := func() bool {
		if response {
			c.errorf(a.Info().Pos, "use it in an `on request` block or a route", "`%s` is not allowed in an `on response` block: it acts on requests", keyword(a))
			return false
		}
		return true
	}
	switch a := a.(type) {
	case *syntax.HeaderAction:
		name := strings.ToLower(a.Target.Key.Value)
		isResp := a.Target.Msg.Name == "response"
		bad := false
		switch {
		case strings.HasPrefix(name, ":"):
			hint := "pseudo-headers are set by the proxy"
			switch name {
			case ":path":
				hint = "use `rewrite path EXPR`"
			case ":authority":
				hint = "use `rewrite host EXPR`"
			}
			c.errorf(a.Target.Key.Pos, hint, "cannot %s the pseudo-header %s", a.Op, name)
			bad = true
		case !validHeaderName(name):
			c.errorf(a.Target.Key.Pos, "a header name is a token: letters, digits and !#$%&'*+-.^_`|~", "invalid header name %q", a.Target.Key.Value)
			bad = true
		case reservedHeaders[name] != "":
			c.errorf(a.Target.Key.Pos, reservedHeaders[name], "cannot %s the header %s", a.Op, name)
			bad = true
		case response && !isResp:
			c.errorf(a.Target.Pos, "change request headers in an `on request` block or a route",
				"request headers cannot change in an `on response` block: the request was already sent")
			bad = true
		}
		h := &rules.Header{Src: src, Op: rules.HeaderOp(a.Op), Response: isResp, Name: name}
		if a.Op != syntax.HeaderRemove {
			h.Value = c.cel(a.Value, expr.String, "a header value")
			if h.Value == nil {
				return nil
			}
			if v, ok := constString(h.Value); ok && !rules.ValidHeaderValue(v) {
				c.errorf(a.Value.Pos, "", "a header value cannot contain a line break")
				return nil
			}
		}
		if bad {
			return nil
		}
		return []rules.Action{h}
	case *syntax.Rewrite:
		if !requestOnly() {
			return nil
		}
		p := c.cel(a.Value, expr.String, "a rewrite "+a.What.Name)
		if p == nil {
			return nil
		}
		if v, ok := constString(p); ok {
			switch {
			case !rules.ValidHeaderValue(v) || v == "":
				c.errorf(a.Value.Pos, "", "invalid %s %q", a.What.Name, v)
				return nil
			case a.What.Name == "path" && !strings.HasPrefix(v, "/"):
				c.errorf(a.Value.Pos, "", "a rewritten path must start with /, got %q", v)
				return nil
			}
		}
		return []rules.Action{&rules.Rewrite{Src: src, Host: a.What.Name == "host", Value: p}}
	case *syntax.RateLimit:
		if !requestOnly() {
			return nil
		}
		rl := &rules.RateLimit{Src: src, Count: a.Count.Int(), Per: a.Per.Value}
		ok := true
		if a.Count.Int() < 1 {
			c.errorf(a.Count.Pos, "", "a rate limit needs at least 1 request per period")
			ok = false
		}
		if a.Per.Value <= 0 {
			c.errorf(a.Per.Pos, "", "a rate limit period must be greater than 0")
			ok = false
		}
		if a.By != nil {
			rl.By = c.cel(a.By, expr.String, "a rate limit key")
			ok = ok && rl.By != nil
		}
		if !ok {
			return nil
		}
		return []rules.Action{rl}
	case *syntax.Delay:
		return []rules.Action{&rules.Delay{Src: src, Duration: a.Duration.Value, Percent: percent(a.Percent)}}
	case *syntax.Abort:
		if a.Code.Int() < 200 {
			c.errorf(a.Code.Pos, "", "abort needs a final status code from 200 to 599")
			return nil
		}
		return []rules.Action{&rules.Abort{Src: src, Code: a.Code.Int(), Percent: percent(a.Percent)}}
	case *syntax.Respond:
		if a.Code.Int() < 200 {
			c.errorf(a.Code.Pos, "", "respond needs a final status code from 200 to 599")
			return nil
		}
		r := &rules.Respond{Src: src, Code: a.Code.Int()}
		if a.Body != nil {
			if r.Body = c.cel(a.Body, expr.String, "a response body"); r.Body == nil {
				return nil
			}
			if s, ok := constString(r.Body); ok {
				r.Body, r.Literal = nil, s
			}
		}
		if rt != nil && r.Body == nil {
			rt.DirectResponse = &config.DirectResponse{Status: r.Code, Body: r.Literal}
			return []rules.Action{}
		}
		if rt != nil {
			rt.DirectResponse = &config.DirectResponse{Status: r.Code} // placeholder: the filter replies first
		}
		return []rules.Action{r}
	case *syntax.Deny:
		code := 403
		if a.Code != nil {
			code = a.Code.Int()
			if code < 200 {
				c.errorf(a.Code.Pos, "", "deny needs a final status code from 200 to 599")
				return nil
			}
		}
		if rt != nil {
			rt.DirectResponse = &config.DirectResponse{Status: code, Body: DenyBody}
			return []rules.Action{}
		}
		return []rules.Action{&rules.Respond{Src: src, Code: code, Literal: DenyBody}}
	case *syntax.Redirect:
		p := c.cel(a.Location, expr.String, "a redirect location")
		if p == nil {
			return nil
		}
		if v, ok := constString(p); ok {
			if !rules.ValidHeaderValue(v) || v == "" {
				c.errorf(a.Location.Pos, "", "invalid redirect location %q", v)
				return nil
			}
			if rt != nil {
				if rd, ok := staticRedirect(v, a.Code.Int()); ok {
					rt.Redirect = rd
					return []rules.Action{}
				}
			}
		}
		if rt != nil {
			rt.DirectResponse = &config.DirectResponse{Status: a.Code.Int()} // placeholder: the filter replies first
		}
		return []rules.Action{&rules.Redirect{Src: src, Code: a.Code.Int(), Location: p}}
	case *syntax.Proxy:
		c.errorf(a.Pos, "an `on` block can end the request with respond, redirect, deny or abort; proxy from a route",
			"`proxy` is only allowed in a route, not in %s", where)
		return nil
	case *syntax.Lua, *syntax.Wasm:
		c.luaWasm(a)
		return nil
	}
	c.errorf(a.Info().Pos, "", "unexpected statement in %s", where)
	return nil
}

func percent(n *syntax.Number) float64 {
	if n == nil {
		return 100
	}
	return n.Value
}

// staticRedirect maps a constant absolute (http or https) or /-relative
// URL to a route redirect, when the route table can reproduce it exactly.
func staticRedirect(loc string, code int) (*config.Redirect, bool) {
	u, err := url.Parse(loc)
	if err != nil || u.Fragment != "" || u.User != nil || u.Opaque != "" || strings.Contains(loc, "#") {
		return nil, false
	}
	rd := &config.Redirect{ResponseCode: code, StripQuery: true}
	path := u.EscapedPath()
	if u.RawQuery != "" || u.ForceQuery {
		path += "?" + u.RawQuery
	}
	switch {
	case u.Scheme == "" && u.Host == "":
		if !strings.HasPrefix(loc, "/") || strings.HasPrefix(loc, "//") {
			return nil, false
		}
	case u.Scheme == "http" || u.Scheme == "https":
		if u.Host == "" {
			return nil, false
		}
		rd.SchemeRedirect, rd.HostRedirect = u.Scheme, u.Host
		if path == "" {
			path = "/"
		}
	default:
		return nil, false
	}
	rd.PathRedirect = path
	return rd, true
}

// route compiles a route.
func (c *compiler) route(r *syntax.Route) *routeInfo {
	ri := &routeInfo{pos: r.Name.Pos}
	rt := &config.Route{Name: r.Name.Name}
	ri.cfg = rt
	ok := true
	if r.When != nil {
		ri.when = r.When.Text
		p := c.requestOnly(r.When, c.cel(r.When, expr.Bool, "a `when` condition"), "a route condition")
		switch {
		case p == nil:
			ok = false
		default:
			if v, isConst := p.Constant(); isConst {
				if v.Value() == true {
					ri.constTrue = true
				} else {
					rt.Match.Condition = &rules.Condition{Program: p} // never matches
					ri.rest = r.When.Text
				}
				break
			}
			lifted, err := Lift(r.When.Text)
			if err != nil || len(lifted.Lifted) == 0 {
				// Nothing to lift (or, unexpectedly, cel-go disagrees
				// with dsl/expr): the whole condition stays CEL.
				rt.Match.Condition = &rules.Condition{Program: p}
				ri.rest = r.When.Text
				break
			}
			rt.Match = lifted.Match
			ri.lifted = lifted.Lifted
			if lifted.Rest == "" {
				break
			}
			rest, err := c.env.Compile(lifted.Rest, expr.Bool)
			if err != nil {
				// Not expected: keep the whole condition, still exact.
				rt.Match = config.RouteMatch{Condition: &rules.Condition{Program: p}}
				ri.lifted, ri.rest = nil, r.When.Text
				break
			}
			rt.Match.Condition = &rules.Condition{Program: rest}
			ri.rest = lifted.Rest
		}
	}
	var terminal syntax.Action
	var acts []rules.Action
	for _, a := range r.Actions {
		if terminal != nil {
			c.errorf(a.Info().Pos, "remove it, or move it before the terminal action",
				"`%s` after the terminal action `%s` (%s) would never run", keyword(a), keyword(terminal), terminal.Info().Pos)
			ok = false
			continue
		}
		if syntax.IsTerminal(a) {
			terminal = a
		}
		if w, isWasm := a.(*syntax.Wasm); isWasm {
			ri.wasm = append(ri.wasm, w)
			continue
		}
		if l, isLua := a.(*syntax.Lua); isLua {
			if src := c.luaSource(l); src != nil {
				ri.lua = append(ri.lua, &luav3.LuaPerRoute{Override: &luav3.LuaPerRoute_SourceCode{SourceCode: src}})
			} else {
				ok = false
			}
			continue
		}
		if p, isProxy := a.(*syntax.Proxy); isProxy {
			ra := c.proxy(p)
			if ra == nil {
				ok = false
			}
			rt.Action = ra
			continue
		}
		var out []rules.Action
		if syntax.IsTerminal(a) {
			out = c.action(a, "a route", false, rt)
		} else {
			out = c.action(a, "a route", false, nil)
		}
		if out == nil {
			ok = false
			continue
		}
		acts = append(acts, out...)
	}
	if terminal == nil {
		c.errorf(r.Pos, "end it with one of: proxy UPSTREAM, respond CODE [BODY], redirect CODE URL, deny [CODE]",
			"route %q has no terminal action", r.Name.Name)
		ok = false
	}
	if !ok {
		return nil
	}
	if len(acts) > 0 {
		ri.actions = &rules.RouteActions{Route: r.Name.Name, Actions: acts}
		rt.TypedPerFilterConfig = map[string]*config.FilterOverride{
			rules.FilterName: {TypeURL: rules.TypeURL, Config: ri.actions},
		}
	}
	for i, l := range ri.lua {
		if rt.TypedPerFilterConfig == nil {
			rt.TypedPerFilterConfig = map[string]*config.FilterOverride{}
		}
		rt.TypedPerFilterConfig[routeLuaName(i)] = &config.FilterOverride{TypeURL: TypeLuaPerRoute, Config: l}
	}
	return ri
}

// proxy compiles a route's `proxy`.
func (c *compiler) proxy(p *syntax.Proxy) *config.RouteAction {
	ra := &config.RouteAction{Timeout: DefaultRouteTimeout}
	ok := true
	var hash *config.HashPolicy
	hashFrom := ""
	useHash := func(name string) {
		u := c.upstreams[name]
		if u == nil || u.hash == nil {
			return
		}
		if hash != nil && *hash != *u.hash {
			c.errorf(p.Pos, "give the upstreams of one split the same hash key", "upstreams %s and %s hash requests on different keys", hashFrom, name)
			ok = false
			return
		}
		hash, hashFrom = u.hash, name
	}
	if p.Upstream != nil {
		if c.upstreamRef(p.Upstream) {
			ra.Cluster = p.Upstream.Name
			useHash(p.Upstream.Name)
		} else {
			ok = false
		}
	} else {
		total := 0
		seen := map[string]bool{}
		for _, t := range p.Split {
			if !c.upstreamRef(t.Upstream) {
				ok = false
				continue
			}
			if seen[t.Upstream.Name] {
				c.errorf(t.Upstream.Pos, "", "upstream %q appears twice in the split", t.Upstream.Name)
				ok = false
				continue
			}
			seen[t.Upstream.Name] = true
			total += t.Weight.Int()
			ra.WeightedClusters = append(ra.WeightedClusters, &config.WeightedCluster{Name: t.Upstream.Name, Weight: uint32(t.Weight.Int())})
			useHash(t.Upstream.Name)
		}
		if ok && total == 0 {
			c.errorf(p.Pos, "give at least one upstream a weight above 0", "the weights of a split add up to 0")
			ok = false
		}
	}
	if hash != nil {
		ra.HashPolicy = []config.HashPolicy{*hash}
	}
	if p.Timeout != nil {
		ra.Timeout = p.Timeout.Value
	}
	if p.Retries != nil || p.RetryOn != nil {
		rp := &config.RetryPolicy{NumRetries: 1, RetryOn: DefaultRetryOn}
		if p.Retries != nil {
			rp.NumRetries = uint32(p.Retries.Int())
		}
		if p.RetryOn != nil {
			rp.RetryOn = nil
			for _, on := range strings.Split(p.RetryOn.Value, ",") {
				on = strings.TrimSpace(on)
				if !slices.Contains(RetryOn, on) {
					hint := "expected a comma-separated list of: " + strings.Join(RetryOn, ", ")
					if s := suggest.Closest(on, RetryOn); s != "" {
						hint = "did you mean " + s + "? " + hint
					}
					c.errorf(p.RetryOn.Pos, hint, "unknown retry condition %q", on)
					ok = false
					continue
				}
				rp.RetryOn = append(rp.RetryOn, on)
			}
		}
		ra.RetryPolicy = rp
	}
	if p.Mirror != nil {
		if c.upstreamRef(p.Mirror) {
			ra.MirrorPolicy = []config.MirrorPolicy{{Cluster: p.Mirror.Name, Percent: percent(p.MirrorPercent)}}
		} else {
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return ra
}

// ---- tests ----

func (c *compiler) test(t *syntax.Test) *Test {
	tt := &Test{Name: t.Name.Value, Pos: t.Pos}
	var req *syntax.Request
	ok := true
	for _, s := range t.Stmts {
		switch s := s.(type) {
		case *syntax.Request:
			if req != nil {
				c.errorf(s.Pos, "write one test per request", "a test sends one request; the first is at %s", req.Pos)
				ok = false
				continue
			}
			req = s
		case *syntax.ExpectRoute:
			tt.Expects = append(tt.Expects, &Expect{Pos: s.Pos, Text: c.stmtText(s), Kind: ExpectRoute, Name: s.Route.Name})
		case *syntax.ExpectUpstream:
			if !c.upstreamRef(s.Upstream) {
				ok = false
			}
			tt.Expects = append(tt.Expects, &Expect{Pos: s.Pos, Text: c.stmtText(s), Kind: ExpectUpstream, Name: s.Upstream.Name})
		case *syntax.ExpectRespond:
			e := &Expect{Pos: s.Pos, Text: c.stmtText(s), Kind: ExpectRespond, Code: s.Code.Int()}
			if s.Body != nil {
				e.Body, e.HasBody = s.Body.Value, true
			}
			tt.Expects = append(tt.Expects, e)
		case *syntax.ExpectHeader:
			tt.Expects = append(tt.Expects, &Expect{Pos: s.Pos, Text: c.stmtText(s), Kind: ExpectHeader, Name: strings.ToLower(s.Name.Value), Value: s.Value.Value})
		}
	}
	if req == nil {
		c.errorf(t.Name.Pos, `as in: request GET "http://example.com/path"`, "test %q has no request", t.Name.Value)
		return nil
	}
	tt.Method = req.Method.Name
	tt.URL = req.URL.Value
	u, err := parseRequestURL(tt.URL)
	if err != nil {
		c.errorf(req.URL.Pos, `as in "http://example.com/path?q=1" or "/path"`, "bad request URL %q: %v", tt.URL, err)
		ok = false
	}
	for _, h := range req.Headers {
		if !validHeaderName(h.Name.Value) {
			c.errorf(h.Name.Pos, "", "invalid header name %q", h.Name.Value)
			ok = false
		}
		tt.Headers = append(tt.Headers, header.Field{Name: h.Name.Value, Value: h.Value.Value})
	}
	if req.Body != nil {
		tt.Body = req.Body.Value
	}
	if req.Source != nil {
		tt.Source = req.Source.Value
		if _, err := parseSource(tt.Source); err != nil {
			c.errorf(req.Source.Pos, `as in source "10.0.0.7" or source "10.0.0.7:5000"`, "bad source address %q", tt.Source)
			ok = false
		}
	}
	if len(c.listeners) == 0 {
		c.errorf(t.Pos, "declare a listener", "test %q has no listener to send its request to", tt.Name)
		return nil
	}
	li := c.listeners[0]
	if u != nil {
		port := u.Port()
		for _, l := range c.listeners {
			if port != "" && l.port == port {
				li = l
				break
			}
		}
	}
	tt.Listener = li.name
	for _, e := range tt.Expects {
		if e.Kind == ExpectRoute && li.routes[e.Name] == nil {
			var names []string
			for _, r := range li.cfg.FilterChains[0].HTTP.RouteConfig.VirtualHosts[0].Routes {
				names = append(names, r.Name)
			}
			hint := "routes are: " + strings.Join(names, ", ")
			if s := suggest.Closest(e.Name, names); s != "" {
				hint = "did you mean " + s + "? " + hint
			}
			c.errorf(e.Pos, hint, "listener %q has no route %q", li.name, e.Name)
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return tt
}
