package fault

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/sluice-proxy/sluice/engine/header"
)

var (
	// google_re2 only selects the engine (deprecated; RE2 is the only one).
	regexFields  = knownFields(&matcherv3.RegexMatcher{}, "google_re2", "regex")
	stringFields = knownFields(&matcherv3.StringMatcher{}, "exact", "prefix", "suffix", "safe_regex",
		"contains", "ignore_case")
	headerFields = knownFields(&routev3.HeaderMatcher{}, "name", "exact_match", "safe_regex_match",
		"range_match", "present_match", "prefix_match", "suffix_match", "contains_match", "string_match",
		"invert_match", "treat_missing_header_as_empty")
)

type strKind uint8

const (
	strExact strKind = iota
	strPrefix
	strSuffix
	strContains
	strRegex
)

// stringMatcher is Envoy's type.matcher.v3.StringMatcher, compiled.
type stringMatcher struct {
	kind       strKind
	value      string
	ignoreCase bool // ASCII case folding, as Envoy's (non-ASCII bytes compare as they are)
	re         *regexp.Regexp
}

func compileRegex(m *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	if m == nil {
		return nil, errors.New("a regex is required")
	}
	if err := regexFields.check(m); err != nil {
		return nil, err
	}
	// Envoy's safe_regex matches the whole value.
	re, err := regexp.Compile(`^(?:` + m.GetRegex() + `)$`)
	if err != nil {
		return nil, at("regex", fmt.Errorf("invalid regex %q: %w", m.GetRegex(), err))
	}
	return re, nil
}

func compileString(m *matcherv3.StringMatcher) (stringMatcher, error) {
	if m == nil {
		return stringMatcher{}, errors.New("a string matcher is required")
	}
	if err := stringFields.check(m); err != nil {
		return stringMatcher{}, err
	}
	out := stringMatcher{ignoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.kind, out.value = strExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		out.kind, out.value = strPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		out.kind, out.value = strSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		out.kind, out.value = strContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex)
		if err != nil {
			return out, at("safe_regex", err)
		}
		// Envoy ignores ignore_case for regexes.
		out.kind, out.re, out.ignoreCase = strRegex, re, false
	default:
		return out, errors.New("a match pattern (exact, prefix, suffix, contains or safe_regex) is required")
	}
	return out, nil
}

func (m *stringMatcher) match(s string) bool {
	if m.ignoreCase {
		return m.matchFold(s)
	}
	switch m.kind {
	case strExact:
		return s == m.value
	case strPrefix:
		return strings.HasPrefix(s, m.value)
	case strSuffix:
		return strings.HasSuffix(s, m.value)
	case strContains:
		return strings.Contains(s, m.value)
	case strRegex:
		return m.re.MatchString(s)
	}
	return false
}

// matchFold compares under ASCII case folding, as Envoy's ignore_case
// does, without lower-casing s.
func (m *stringMatcher) matchFold(s string) bool {
	v := m.value
	switch m.kind {
	case strExact:
		return header.EqualFold(s, v)
	case strPrefix:
		return len(s) >= len(v) && header.EqualFold(s[:len(v)], v)
	case strSuffix:
		return len(s) >= len(v) && header.EqualFold(s[len(s)-len(v):], v)
	case strContains:
		for i := 0; i+len(v) <= len(s); i++ {
			if header.EqualFold(s[i:i+len(v)], v) {
				return true
			}
		}
		return false
	}
	return false
}

type headerKind uint8

const (
	hdrValue headerKind = iota // exact value, or any value when empty
	hdrString
	hdrRange
	hdrPresent
)

// headerMatcher is Envoy's config.route.v3.HeaderMatcher with Envoy's
// HeaderUtility semantics: repeated headers are joined with ","; a missing
// header matches only present_match: false (or, inverted, present_match:
// true) unless treat_missing_header_as_empty.
type headerMatcher struct {
	name         string
	kind         headerKind
	value        string
	str          stringMatcher
	start, end   int64
	present      bool
	invert       bool
	missingEmpty bool
}

func compileHeader(m *routev3.HeaderMatcher) (*headerMatcher, error) {
	if err := headerFields.check(m); err != nil {
		return nil, err
	}
	if m.GetName() == "" {
		return nil, at("name", errors.New("a header name is required"))
	}
	out := &headerMatcher{name: m.GetName(), invert: m.GetInvertMatch(), missingEmpty: m.GetTreatMissingHeaderAsEmpty()}
	var err error
	switch s := m.GetHeaderMatchSpecifier().(type) {
	case nil:
		out.kind = hdrValue
	case *routev3.HeaderMatcher_ExactMatch:
		out.kind, out.value = hdrValue, s.ExactMatch
	case *routev3.HeaderMatcher_SafeRegexMatch:
		out.kind = hdrString
		out.str.kind = strRegex
		if out.str.re, err = compileRegex(s.SafeRegexMatch); err != nil {
			return nil, at("safe_regex_match", err)
		}
	case *routev3.HeaderMatcher_RangeMatch:
		out.kind, out.start, out.end = hdrRange, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
		if out.start >= out.end {
			return nil, at("range_match", fmt.Errorf("start %d must be less than end %d", out.start, out.end))
		}
	case *routev3.HeaderMatcher_PresentMatch:
		out.kind, out.present = hdrPresent, s.PresentMatch
	case *routev3.HeaderMatcher_PrefixMatch:
		out.kind, out.str = hdrString, stringMatcher{kind: strPrefix, value: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		out.kind, out.str = hdrString, stringMatcher{kind: strSuffix, value: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		out.kind, out.str = hdrString, stringMatcher{kind: strContains, value: s.ContainsMatch}
	case *routev3.HeaderMatcher_StringMatch:
		out.kind = hdrString
		if out.str, err = compileString(s.StringMatch); err != nil {
			return nil, at("string_match", err)
		}
	default:
		return nil, fmt.Errorf("header match %T %w", s, errUnsupported)
	}
	return out, nil
}

func (m *headerMatcher) matchHeaders(h *header.Map) bool {
	v, ok := joinedValue(h, m.name)
	if !ok && !m.missingEmpty {
		if m.invert {
			return m.kind == hdrPresent && m.present
		}
		return m.kind == hdrPresent && !m.present
	}
	var match bool
	switch m.kind {
	case hdrValue:
		match = m.value == "" || v == m.value
	case hdrString:
		match = m.str.match(v)
	case hdrRange:
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		match = err == nil && n >= m.start && n < m.end
	case hdrPresent:
		match = m.present
	}
	return match != m.invert
}

// joinedValue returns the value of name, the values of a repeated header
// joined with "," as Envoy does. It allocates only for a repeated header.
func joinedValue(h *header.Map, name string) (string, bool) {
	if h == nil {
		return "", false
	}
	fs := h.Fields()
	for i := range fs {
		if !header.EqualFold(fs[i].Name, name) {
			continue
		}
		for j := i + 1; j < len(fs); j++ {
			if header.EqualFold(fs[j].Name, name) {
				return joinFrom(fs[i:], name), true
			}
		}
		return fs[i].Value, true
	}
	return "", false
}

func joinFrom(fs []header.Field, name string) string {
	var b strings.Builder
	first := true
	for i := range fs {
		if header.EqualFold(fs[i].Name, name) {
			if !first {
				b.WriteByte(',')
			}
			first = false
			b.WriteString(fs[i].Value)
		}
	}
	return b.String()
}
