// Package route compiles Envoy-style route tables (RouteConfiguration →
// VirtualHost → Route) once, when a snapshot is applied, and matches requests
// against them on the hot path.
//
// Compile precomputes everything a request needs: lower-cased domains in maps
// (exact, then suffix and prefix wildcards grouped by length, longest first),
// compiled regular expressions, cumulative cluster weights, the header
// mutation chain of every route and the redirect parts. Match does not
// allocate for the common cases (exact domain, prefix or exact path).
//
// Semantics follow Envoy's router (source/common/router/config_impl.cc and
// friends); where Sluice differs on purpose the comment says so.
package route

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

// Table is a compiled route configuration. It is immutable and safe for
// concurrent use.
type Table struct {
	cfg    *config.RouteConfiguration
	vhosts []*VirtualHost

	exact  map[string]*VirtualHost
	suffix []wildcards // "*.example.com", longest first
	prefix []wildcards // "example.*", longest first
	def    *VirtualHost
	// onlyDefault is Envoy's fast path: with only "*" there is no need to
	// look at the host at all (not even for its presence).
	onlyDefault bool

	req, resp *mutations
}

// wildcards holds the wildcard domains of one length (without the '*').
type wildcards struct {
	n int
	m map[string]*VirtualHost
}

// VirtualHost is a compiled virtual host.
type VirtualHost struct {
	Config *config.VirtualHost
	Routes []*Route

	table *Table
	// quick holds a cheap pre-check per route, in route order, contiguous
	// so that scanning many routes stays in cache.
	quick     []quickCheck
	req, resp *mutations
}

// quickCheck rejects most non-matching prefix and exact routes with one
// length test and one word compare of the path's first 8 bytes.
type quickCheck struct {
	minLen int
	mask   uint64 // 0: no quick check
	word   uint64
}

// Name returns the virtual host's name.
func (v *VirtualHost) Name() string { return v.Config.Name }

// Route is a compiled route: its match and its precomputed action.
type Route struct {
	Config      *config.Route
	VirtualHost *VirtualHost
	// Index is the route's position in its virtual host.
	Index int

	// match
	kind    pathKind
	path    string // prefix, exact path or path-separated prefix
	fold    bool   // case-insensitive path match
	pathRe  *regexp.Regexp
	headers []headerMatcher
	queries []queryMatcher
	cond    config.Condition

	// action
	cluster       string
	clusterHeader string
	weighted      []weightedCluster
	cumWeights    []uint64 // end (exclusive) of each weighted cluster's interval
	totalWeight   uint64
	prefixRewrite string
	regexRewrite  *regexp.Regexp
	regexSubst    string // Go template form of the RE2 substitution
	hostLiteral   string
	hostHeader    string
	autoHost      bool
	hash          []hashPolicy
	redirect      *redirect

	// header mutations in evaluation order (route, virtual host, table)
	reqChain, respChain []*mutations
}

type weightedCluster struct {
	cfg       *config.WeightedCluster
	req, resp *mutations
}

// Name returns the route's name.
func (r *Route) Name() string { return r.Config.Name }

// Config returns the route configuration the table was compiled from.
func (t *Table) Config() *config.RouteConfiguration { return t.cfg }

// VirtualHosts returns the compiled virtual hosts in configuration order.
func (t *Table) VirtualHosts() []*VirtualHost { return t.vhosts }

// Compile compiles a route configuration. Any error names the virtual host
// and route it comes from; the table is only returned when everything
// compiled.
func Compile(rc *config.RouteConfiguration) (*Table, error) {
	if rc == nil {
		return nil, fmt.Errorf("route: nil route configuration")
	}
	t := &Table{cfg: rc, exact: map[string]*VirtualHost{}}
	var err error
	if t.req, t.resp, err = compileMutations(&rc.HeaderMutations); err != nil {
		return nil, fmt.Errorf("route: route configuration %q: %w", rc.Name, err)
	}
	owner := map[string]*VirtualHost{} // normalized domain → virtual host
	suffix := map[int]map[string]*VirtualHost{}
	prefix := map[int]map[string]*VirtualHost{}
	for i, vc := range rc.VirtualHosts {
		if vc == nil {
			return nil, fmt.Errorf("route: virtual host %d is nil", i)
		}
		vh, err := compileVirtualHost(t, vc)
		if err != nil {
			return nil, err
		}
		t.vhosts = append(t.vhosts, vh)
		if len(vc.Domains) == 0 {
			return nil, fmt.Errorf("route: virtual host %q: no domains", vc.Name)
		}
		for _, d := range vc.Domains {
			if d == "" || !validDomain(d) {
				return nil, fmt.Errorf("route: virtual host %q: invalid domain %q", vc.Name, d)
			}
			d = asciiLower(d)
			if prev := owner[d]; prev != nil {
				if prev == vh {
					return nil, fmt.Errorf("route: virtual host %q: duplicate domain %q", vc.Name, d)
				}
				return nil, fmt.Errorf("route: virtual host %q: domain %q is already used by virtual host %q", vc.Name, d, prev.Config.Name)
			}
			owner[d] = vh
			switch {
			case d == "*":
				t.def = vh
			case d[0] == '*':
				addWildcard(suffix, d[1:], vh)
			case d[len(d)-1] == '*':
				addWildcard(prefix, d[:len(d)-1], vh)
			default:
				t.exact[d] = vh
			}
		}
	}
	t.suffix = sortWildcards(suffix)
	t.prefix = sortWildcards(prefix)
	t.onlyDefault = len(t.exact) == 0 && len(t.suffix) == 0 && len(t.prefix) == 0
	return t, nil
}

func addWildcard(by map[int]map[string]*VirtualHost, key string, vh *VirtualHost) {
	m := by[len(key)]
	if m == nil {
		m = map[string]*VirtualHost{}
		by[len(key)] = m
	}
	m[key] = vh
}

func sortWildcards(by map[int]map[string]*VirtualHost) []wildcards {
	out := make([]wildcards, 0, len(by))
	for n, m := range by {
		out = append(out, wildcards{n: n, m: m})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].n > out[j].n })
	return out
}

// validDomain rejects control characters, like Envoy's HTTP_HEADER_VALUE
// rule on domains.
func validDomain(d string) bool {
	for i := 0; i < len(d); i++ {
		if c := d[i]; c < ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

func compileVirtualHost(t *Table, vc *config.VirtualHost) (*VirtualHost, error) {
	vh := &VirtualHost{Config: vc, table: t}
	var err error
	if vh.req, vh.resp, err = compileMutations(&vc.HeaderMutations); err != nil {
		return nil, fmt.Errorf("route: virtual host %q: %w", vc.Name, err)
	}
	vh.Routes = make([]*Route, 0, len(vc.Routes))
	for i, rc := range vc.Routes {
		r, err := compileRoute(vh, i, rc)
		if err != nil {
			where := fmt.Sprintf("route: virtual host %q: route %d", vc.Name, i)
			if rc != nil && rc.Name != "" {
				where += fmt.Sprintf(" (%q)", rc.Name)
			}
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		vh.Routes = append(vh.Routes, r)
		vh.quick = append(vh.quick, r.quickCheck())
	}
	return vh, nil
}

// Match returns the first route of the selected virtual host that matches
// the request, or nil. Requests without :path match nothing (Envoy skips
// every non-CONNECT route for them).
// Routes with a Condition never match here: they need MatchSource.
func (t *Table) Match(h *header.Map) *Route {
	r, _ := t.match(h, nil)
	return r
}

// MatchSource is Match for a live stream: routes with a Condition evaluate
// it against src. A condition that fails to evaluate stops the matching
// with its error, which fails the request.
func (t *Table) MatchSource(src attr.Source) (*Route, error) {
	return t.match(src.RequestHeaders(), src)
}

func (t *Table) match(h *header.Map, src attr.Source) (*Route, error) {
	if t == nil {
		return nil, nil
	}
	authority, hasAuthority, path, hasPath := requestTarget(h)
	if !hasPath {
		return nil, nil
	}
	vh := t.selectVirtualHost(authority, hasAuthority)
	if vh == nil {
		return nil, nil
	}
	return vh.match(h, path, src)
}

// SelectVirtualHost returns the virtual host serving authority (a Host or
// :authority value, with or without a port), or nil.
func (t *Table) SelectVirtualHost(authority string) *VirtualHost {
	return t.selectVirtualHost(authority, true)
}

// Match returns the first of the virtual host's routes that matches the
// request, or nil.
func (v *VirtualHost) Match(h *header.Map) *Route {
	_, _, path, hasPath := requestTarget(h)
	if !hasPath {
		return nil
	}
	r, _ := v.match(h, path, nil)
	return r
}

func (v *VirtualHost) match(h *header.Map, path string, src attr.Source) (*Route, error) {
	p := pathOnly(path)
	pw := firstWord(p)
	for i := range v.quick {
		q := &v.quick[i]
		if len(p) < q.minLen || pw&q.mask != q.word {
			continue
		}
		r := v.Routes[i]
		if !r.matches(h, path, p) {
			continue
		}
		if r.cond == nil {
			return r, nil
		}
		if src == nil {
			continue
		}
		ok, err := r.cond.Eval(src)
		if err != nil {
			return nil, fmt.Errorf("route: %q: condition: %w", r.Config.Name, err)
		}
		if ok {
			return r, nil
		}
	}
	return nil, nil
}

// quickCheck builds the route's pre-check: the path must be at least as
// long as the literal every match starts with, and start with its first (up
// to) 8 bytes. The literal is the pattern of case-sensitive prefix, exact
// and path-separated routes, and the literal prefix of a regex.
func (r *Route) quickCheck() quickCheck {
	var lit string
	switch r.kind {
	case pathPrefix, pathExact, pathSeparated:
		if !r.fold {
			lit = r.path
		}
	case pathRegex:
		// The pattern is anchored, so every match starts at the path's
		// first byte.
		lit, _ = r.pathRe.LiteralPrefix()
	}
	if lit == "" {
		return quickCheck{}
	}
	n := min(len(lit), 8)
	return quickCheck{minLen: len(lit), mask: ^uint64(0) >> (64 - 8*n), word: firstWord(lit[:n])}
}

// firstWord loads up to the first 8 bytes of s, little-endian, zero padded.
func firstWord(s string) uint64 {
	if len(s) >= 8 {
		return le64(s)
	}
	var w uint64
	for i := len(s) - 1; i >= 0; i-- {
		w = w<<8 | uint64(s[i])
	}
	return w
}

// selectVirtualHost follows Envoy's RouteMatcher::findVirtualHost: exact
// domain, then the longest suffix wildcard, then the longest prefix
// wildcard, then "*"; hosts compare case-insensitively.
//
// Ports: Envoy matches the host as sent, port included, so "example.com:8080"
// matches the domain "example.com:8080" (and "example.*"), never
// "example.com" unless the connection manager strips the port. Sluice tries
// the whole lookup with the port first (exactly Envoy) and, when nothing but
// "*" would match, again without the port, like Envoy's strip_any_host_port.
func (t *Table) selectVirtualHost(host string, ok bool) *VirtualHost {
	if t.onlyDefault {
		return t.def
	}
	if !ok {
		return nil
	}
	var buf [256]byte
	var lower []byte
	if len(host) <= len(buf) {
		lower = buf[:len(host)]
	} else {
		lower = make([]byte, len(host))
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	if vh := t.lookup(lower); vh != nil {
		return vh
	}
	if i := portStart(lower); i >= 0 {
		if vh := t.lookup(lower[:i]); vh != nil {
			return vh
		}
	}
	return t.def
}

func (t *Table) lookup(host []byte) *VirtualHost {
	if vh, ok := t.exact[string(host)]; ok {
		return vh
	}
	// A wildcard must match at least one character: "*.foo.com" does not
	// match ".foo.com" (hence n < len(host)).
	for _, w := range t.suffix {
		if w.n < len(host) {
			if vh, ok := w.m[string(host[len(host)-w.n:])]; ok {
				return vh
			}
		}
	}
	for _, w := range t.prefix {
		if w.n < len(host) {
			if vh, ok := w.m[string(host[:w.n])]; ok {
				return vh
			}
		}
	}
	return nil
}

// portStart is Envoy's HeaderUtility::getPortStart: the index of the ':'
// before the port, or -1 (an IPv6 literal needs its brackets).
func portStart(host []byte) int {
	colon, bracket := -1, -1
	for i := len(host) - 1; i >= 0; i-- {
		switch host[i] {
		case ':':
			if colon < 0 {
				colon = i
			}
		case ']':
			if bracket < 0 {
				bracket = i
			}
		}
	}
	if colon < 0 {
		return -1
	}
	if bracket < 0 || bracket < colon {
		return colon
	}
	return -1
}

// requestTarget reads :authority (or Host) and :path in one pass.
func requestTarget(h *header.Map) (authority string, hasAuthority bool, path string, hasPath bool) {
	fs := h.Fields()
	for i := range fs {
		n := fs[i].Name
		if len(n) == 0 || n[0] != ':' {
			continue
		}
		switch {
		case !hasPath && header.EqualFold(n, ":path"):
			path, hasPath = fs[i].Value, true
		case !hasAuthority && header.EqualFold(n, ":authority"):
			authority, hasAuthority = fs[i].Value, true
		}
		if hasPath && hasAuthority {
			return
		}
	}
	if !hasAuthority {
		authority, hasAuthority = h.Get("host")
	}
	return
}

// pathOnly strips the query and fragment (Envoy's removeQueryAndFragment).
func pathOnly(p string) string {
	for i := 0; i < len(p); i++ {
		if p[i] == '?' || p[i] == '#' {
			return p[:i]
		}
	}
	return p
}

// rawQuery returns the query string of a request target, without '?' and
// fragment.
func rawQuery(p string) string {
	i := strings.IndexByte(p, '?')
	if i < 0 {
		return ""
	}
	q := p[i+1:]
	if j := strings.IndexByte(q, '#'); j >= 0 {
		q = q[:j]
	}
	return q
}

func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; 'A' <= c && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
