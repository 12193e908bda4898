package route

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

type pathKind uint8

const (
	pathAny       pathKind = iota // no path specifier: every path
	pathPrefix                    // prefix
	pathExact                     // path
	pathRegex                     // safe_regex, full match
	pathSeparated                 // path_separated_prefix
)

// stringMatcher is a compiled Envoy StringMatcher.
type stringMatcher struct {
	kind       config.StringMatchKind
	value      string // lower-cased for an ignore-case contains
	ignoreCase bool
	re         *regexp.Regexp
}

// headerMatcher is a compiled Envoy HeaderMatcher.
type headerMatcher struct {
	name     string
	presence bool // no string matcher: a present_match
	present  bool
	invert   bool
	sm       stringMatcher
}

// queryMatcher is a compiled Envoy QueryParameterMatcher.
type queryMatcher struct {
	name     string
	presence bool
	sm       stringMatcher
}

func compileRoute(vh *VirtualHost, idx int, rc *config.Route) (*Route, error) {
	if rc == nil {
		return nil, errors.New("nil route")
	}
	r := &Route{Config: rc, VirtualHost: vh, Index: idx}
	if err := r.compileMatch(&rc.Match); err != nil {
		return nil, err
	}

	n := 0
	if rc.Action != nil {
		n++
	}
	if rc.DirectResponse != nil {
		n++
	}
	if rc.Redirect != nil {
		n++
	}
	if n != 1 {
		return nil, errors.New("exactly one of action, direct response and redirect must be set")
	}
	switch {
	case rc.Action != nil:
		if err := r.compileAction(rc.Action); err != nil {
			return nil, err
		}
	case rc.Redirect != nil:
		if err := r.compileRedirect(rc.Redirect); err != nil {
			return nil, err
		}
	case rc.DirectResponse != nil:
		// Envoy: status in [200, 600).
		if s := rc.DirectResponse.Status; s < 200 || s >= 600 {
			return nil, fmt.Errorf("direct response status %d out of range [200, 600)", s)
		}
	}

	req, resp, err := compileMutations(&rc.HeaderMutations)
	if err != nil {
		return nil, err
	}
	r.reqChain = chain(req, vh.req, vh.table.req)
	r.respChain = chain(resp, vh.resp, vh.table.resp)
	return r, nil
}

func (r *Route) compileMatch(m *config.RouteMatch) error {
	r.cond = m.Condition
	n := 0
	for _, s := range []string{m.Prefix, m.Path, m.SafeRegex, m.PathSeparatedPrefix} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return errors.New("more than one path specifier (prefix, path, safe_regex, path_separated_prefix)")
	}
	r.fold = m.CaseInsensitive
	switch {
	case m.Prefix != "":
		r.kind, r.path = pathPrefix, m.Prefix
	case m.Path != "":
		r.kind, r.path = pathExact, m.Path
	case m.PathSeparatedPrefix != "":
		// Envoy validates ^[^?#]+[^?#/]$.
		p := m.PathSeparatedPrefix
		if len(p) < 2 || strings.ContainsAny(p, "?#") || p[len(p)-1] == '/' {
			return fmt.Errorf("bad path_separated_prefix %q: must not contain '?' or '#' nor end in '/'", p)
		}
		r.kind, r.path = pathSeparated, p
	case m.SafeRegex != "":
		// Envoy ignores case_sensitive for safe_regex; so does Sluice (use
		// (?i) in the pattern).
		re, err := compileFull(m.SafeRegex)
		if err != nil {
			return fmt.Errorf("bad regex %q: %w", m.SafeRegex, err)
		}
		r.kind, r.pathRe = pathRegex, re
	}
	for i := range m.Headers {
		hm, err := compileHeaderMatcher(&m.Headers[i])
		if err != nil {
			return fmt.Errorf("header matcher %d: %w", i, err)
		}
		r.headers = append(r.headers, hm)
	}
	for i := range m.QueryParameters {
		qc := &m.QueryParameters[i]
		if qc.Name == "" {
			return fmt.Errorf("query parameter matcher %d: empty name", i)
		}
		qm := queryMatcher{name: qc.Name, presence: qc.Match == nil}
		if qc.Match != nil {
			sm, err := compileStringMatcher(qc.Match)
			if err != nil {
				return fmt.Errorf("query parameter matcher %d (%q): %w", i, qc.Name, err)
			}
			qm.sm = sm
		}
		r.queries = append(r.queries, qm)
	}
	return nil
}

func compileHeaderMatcher(c *config.HeaderMatcher) (headerMatcher, error) {
	if c.Name == "" {
		return headerMatcher{}, errors.New("empty header name")
	}
	hm := headerMatcher{name: c.Name, invert: c.InvertMatch}
	if c.Match == nil {
		hm.presence, hm.present = true, c.Present
		return hm, nil
	}
	sm, err := compileStringMatcher(c.Match)
	if err != nil {
		return headerMatcher{}, fmt.Errorf("%q: %w", c.Name, err)
	}
	hm.sm = sm
	return hm, nil
}

func compileStringMatcher(c *config.StringMatcher) (stringMatcher, error) {
	sm := stringMatcher{kind: c.Kind, value: c.Value, ignoreCase: c.IgnoreCase}
	switch c.Kind {
	case config.MatchExact, config.MatchPrefix, config.MatchSuffix:
	case config.MatchContains:
		if c.IgnoreCase {
			sm.value = asciiLower(c.Value)
		}
	case config.MatchRegex:
		// Envoy: ignore_case has no effect on safe_regex.
		re, err := compileFull(c.Value)
		if err != nil {
			return sm, fmt.Errorf("bad regex %q: %w", c.Value, err)
		}
		sm.re = re
	default:
		return sm, fmt.Errorf("unknown string match kind %d", c.Kind)
	}
	return sm, nil
}

// compileFull compiles an RE2 pattern anchored for a full match, as Envoy's
// safe_regex matchers require.
func compileFull(pattern string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(pattern); err != nil {
		return nil, err
	}
	return regexp.Compile(`^(?:` + pattern + `)$`)
}

func (m *stringMatcher) match(v string) bool {
	switch m.kind {
	case config.MatchExact:
		if m.ignoreCase {
			return header.EqualFold(v, m.value)
		}
		return v == m.value
	case config.MatchPrefix:
		if m.ignoreCase {
			return hasPrefixFold(v, m.value)
		}
		return strings.HasPrefix(v, m.value)
	case config.MatchSuffix:
		if m.ignoreCase {
			return len(v) >= len(m.value) && header.EqualFold(v[len(v)-len(m.value):], m.value)
		}
		return strings.HasSuffix(v, m.value)
	case config.MatchContains:
		if m.ignoreCase {
			return containsFold(v, m.value)
		}
		return strings.Contains(v, m.value)
	case config.MatchRegex:
		return m.re.MatchString(v)
	}
	return false
}

// match follows Envoy's HeaderUtility::matchHeaders: a missing header fails
// every value matcher whatever invert_match says; a present_match compares
// presence, then invert_match flips the result.
func (m *headerMatcher) match(h *header.Map) bool {
	v, ok := headerValue(h, m.name)
	if m.presence {
		return (ok == m.present) != m.invert
	}
	if !ok {
		return false
	}
	return m.sm.match(v) != m.invert
}

// headerValue returns every value of name joined with "," (Envoy's
// getAllOfHeaderAsString). Only multi-valued headers allocate.
func headerValue(h *header.Map, name string) (string, bool) {
	fs := h.Fields()
	first := -1
	for i := range fs {
		if !header.EqualFold(fs[i].Name, name) {
			continue
		}
		if first < 0 {
			first = i
			continue
		}
		var b strings.Builder
		b.WriteString(fs[first].Value)
		for j := i; j < len(fs); j++ {
			if header.EqualFold(fs[j].Name, name) {
				b.WriteByte(',')
				b.WriteString(fs[j].Value)
			}
		}
		return b.String(), true
	}
	if first < 0 {
		return "", false
	}
	return fs[first].Value, true
}

// firstQueryValue returns the first value of the query parameter name.
// Like Envoy's route matching (QueryParamsMulti::parseQueryString), names
// and values are compared as sent, not percent-decoded; a parameter without
// '=' has the empty value.
func firstQueryValue(q, name string) (string, bool) {
	for len(q) > 0 {
		var param string
		if i := strings.IndexByte(q, '&'); i >= 0 {
			param, q = q[:i], q[i+1:]
		} else {
			param, q = q, ""
		}
		k, v := param, ""
		if i := strings.IndexByte(param, '='); i >= 0 {
			k, v = param[:i], param[i+1:]
		}
		if k == name {
			return v, true
		}
	}
	return "", false
}

// matches reports whether the request matches the route. full is the
// request target, p its path part.
func (r *Route) matches(h *header.Map, full, p string) bool {
	switch r.kind {
	case pathPrefix:
		if !r.hasPathPrefix(p) {
			return false
		}
	case pathExact:
		if r.fold {
			if !header.EqualFold(p, r.path) {
				return false
			}
		} else if p != r.path {
			return false
		}
	case pathSeparated:
		if !r.hasPathPrefix(p) || len(p) > len(r.path) && p[len(r.path)] != '/' {
			return false
		}
	case pathRegex:
		if !r.pathRe.MatchString(p) {
			return false
		}
	}
	for i := range r.headers {
		if !r.headers[i].match(h) {
			return false
		}
	}
	if len(r.queries) > 0 {
		q := rawQuery(full)
		for i := range r.queries {
			qm := &r.queries[i]
			v, ok := firstQueryValue(q, qm.name)
			if !ok {
				return false
			}
			if !qm.presence && !qm.sm.match(v) {
				return false
			}
		}
	}
	return true
}

func (r *Route) hasPathPrefix(p string) bool {
	if r.fold {
		return hasPrefixFold(p, r.path)
	}
	return strings.HasPrefix(p, r.path)
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && header.EqualFold(s[:len(prefix)], prefix)
}

// containsFold reports whether s contains lowerSub, ignoring ASCII case.
func containsFold(s, lowerSub string) bool {
	n := len(lowerSub)
	if n == 0 {
		return true
	}
	for i := 0; i+n <= len(s); i++ {
		j := 0
		for ; j < n; j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != lowerSub[j] {
				break
			}
		}
		if j == n {
			return true
		}
	}
	return false
}

func (r *Route) compileAction(a *config.RouteAction) error {
	n := 0
	if a.Cluster != "" {
		n++
	}
	if len(a.WeightedClusters) > 0 {
		n++
	}
	if a.ClusterHeader != "" {
		n++
	}
	if n != 1 {
		return errors.New("exactly one of cluster, weighted clusters and cluster header must be set")
	}
	r.cluster, r.clusterHeader = a.Cluster, a.ClusterHeader
	var total uint64
	for i, wc := range a.WeightedClusters {
		if wc == nil || wc.Name == "" {
			return fmt.Errorf("weighted cluster %d: empty name", i)
		}
		req, resp, err := compileMutations(&wc.HeaderMutations)
		if err != nil {
			return fmt.Errorf("weighted cluster %d (%q): %w", i, wc.Name, err)
		}
		total += uint64(wc.Weight)
		if total > math.MaxUint32 {
			return fmt.Errorf("sum of weighted cluster weights exceeds %d", uint32(math.MaxUint32))
		}
		r.weighted = append(r.weighted, weightedCluster{cfg: wc, req: req, resp: resp})
		r.cumWeights = append(r.cumWeights, total)
	}
	if len(a.WeightedClusters) > 0 && total == 0 {
		return errors.New("sum of weighted cluster weights must be greater than 0")
	}
	r.totalWeight = total

	if a.PrefixRewrite != "" && a.RegexRewrite != nil {
		return errors.New("specify only one of prefix_rewrite and regex_rewrite")
	}
	r.prefixRewrite = a.PrefixRewrite
	if rw := a.RegexRewrite; rw != nil {
		re, err := regexp.Compile(rw.Pattern)
		if err != nil {
			return fmt.Errorf("bad regex_rewrite pattern %q: %w", rw.Pattern, err)
		}
		subst, err := re2Substitution(rw.Substitution, re.NumSubexp())
		if err != nil {
			return fmt.Errorf("bad regex_rewrite substitution %q: %w", rw.Substitution, err)
		}
		r.regexRewrite, r.regexSubst = re, subst
	}

	n = 0
	if a.HostRewriteLiteral != "" {
		n++
	}
	if a.HostRewriteHeader != "" {
		n++
	}
	if a.AutoHostRewrite {
		n++
	}
	if n > 1 {
		return errors.New("specify only one of host_rewrite_literal, host_rewrite_header and auto_host_rewrite")
	}
	if !validValue(a.HostRewriteLiteral) {
		return fmt.Errorf("bad host_rewrite_literal %q", a.HostRewriteLiteral)
	}
	r.hostLiteral, r.hostHeader, r.autoHost = a.HostRewriteLiteral, a.HostRewriteHeader, a.AutoHostRewrite

	for i := range a.HashPolicy {
		hp, ok, err := compileHashPolicy(&a.HashPolicy[i])
		if err != nil {
			return fmt.Errorf("hash policy %d: %w", i, err)
		}
		if ok {
			r.hash = append(r.hash, hp)
		}
	}
	return nil
}

// re2Substitution converts an RE2 rewrite string (\0..\9 name groups, \\ is
// a backslash) to a regexp.Expand template, checking it like RE2's
// CheckRewriteString.
func re2Substitution(s string, groups int) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '$':
			b.WriteString("$$")
		case '\\':
			i++
			if i == len(s) {
				return "", errors.New("trailing backslash")
			}
			switch d := s[i]; {
			case d == '\\':
				b.WriteByte('\\')
			case '0' <= d && d <= '9':
				if int(d-'0') > groups {
					return "", fmt.Errorf("group \\%c but the pattern has %d groups", d, groups)
				}
				b.WriteString("${")
				b.WriteByte(d)
				b.WriteByte('}')
			default:
				return "", fmt.Errorf("invalid escape \\%c", d)
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}
