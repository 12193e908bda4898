package envoymatch

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/sluice-proxy/sluice/engine/header"
)

var (
	// google_re2 only selects the engine (deprecated; RE2 is the only one).
	regexFields  = KnownFields(&matcherv3.RegexMatcher{}, "google_re2", "regex")
	stringFields = KnownFields(&matcherv3.StringMatcher{}, "exact", "prefix", "suffix", "safe_regex",
		"contains", "ignore_case")
	headerFields = KnownFields(&routev3.HeaderMatcher{}, "name", "exact_match", "safe_regex_match",
		"range_match", "present_match", "prefix_match", "suffix_match", "contains_match", "string_match",
		"invert_match", "treat_missing_header_as_empty")
	pathFields = KnownFields(&matcherv3.PathMatcher{}, "path")
	cidrFields = KnownFields(&corev3.CidrRange{}, "address_prefix", "prefix_len")
)

type strKind uint8

const (
	strExact strKind = iota
	strPrefix
	strSuffix
	strContains
	strRegex
)

// StringMatcher is Envoy's type.matcher.v3.StringMatcher, compiled.
type StringMatcher struct {
	kind       strKind
	value      string
	ignoreCase bool // ASCII case folding, as Envoy's (non-ASCII bytes compare as they are)
	re         *regexp.Regexp
}

// CompileRegex compiles a RegexMatcher (RE2, as Envoy's only engine).
func CompileRegex(m *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	if m == nil {
		return nil, errors.New("a regex is required")
	}
	if err := regexFields.Check(m); err != nil {
		return nil, err
	}
	// Envoy's safe_regex matches the whole value.
	re, err := regexp.Compile(`^(?:` + m.GetRegex() + `)$`)
	if err != nil {
		return nil, At("regex", fmt.Errorf("invalid regex %q: %w", m.GetRegex(), err))
	}
	return re, nil
}

// CompileString compiles a StringMatcher.
func CompileString(m *matcherv3.StringMatcher) (StringMatcher, error) {
	if m == nil {
		return StringMatcher{}, errors.New("a string matcher is required")
	}
	if err := stringFields.Check(m); err != nil {
		return StringMatcher{}, err
	}
	out := StringMatcher{ignoreCase: m.GetIgnoreCase()}
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
		re, err := CompileRegex(p.SafeRegex)
		if err != nil {
			return out, At("safe_regex", err)
		}
		// Envoy ignores ignore_case for regexes.
		out.kind, out.re, out.ignoreCase = strRegex, re, false
	default:
		return out, errors.New("a match pattern (exact, prefix, suffix, contains or safe_regex) is required")
	}
	return out, nil
}

func (m *StringMatcher) Match(s string) bool {
	if m.ignoreCase {
		return m.MatchFold(s)
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

// MatchFold compares under ASCII case folding, as Envoy's ignore_case
// does, without lower-casing s.
func (m *StringMatcher) MatchFold(s string) bool {
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

// HeaderMatcher is Envoy's config.route.v3.HeaderMatcher with Envoy's
// HeaderUtility semantics: repeated headers are joined with ","; a missing
// header matches only present_match: false (or, inverted, present_match:
// true) unless treat_missing_header_as_empty.
type HeaderMatcher struct {
	name         string
	kind         headerKind
	value        string
	str          StringMatcher
	start, end   int64
	present      bool
	invert       bool
	missingEmpty bool
}

// CompileHeader compiles a HeaderMatcher.
func CompileHeader(m *routev3.HeaderMatcher) (*HeaderMatcher, error) {
	if err := headerFields.Check(m); err != nil {
		return nil, err
	}
	if m.GetName() == "" {
		return nil, At("name", errors.New("a header name is required"))
	}
	out := &HeaderMatcher{name: m.GetName(), invert: m.GetInvertMatch(), missingEmpty: m.GetTreatMissingHeaderAsEmpty()}
	var err error
	switch s := m.GetHeaderMatchSpecifier().(type) {
	case nil:
		out.kind = hdrValue
	case *routev3.HeaderMatcher_ExactMatch:
		out.kind, out.value = hdrValue, s.ExactMatch
	case *routev3.HeaderMatcher_SafeRegexMatch:
		out.kind = hdrString
		out.str.kind = strRegex
		if out.str.re, err = CompileRegex(s.SafeRegexMatch); err != nil {
			return nil, At("safe_regex_match", err)
		}
	case *routev3.HeaderMatcher_RangeMatch:
		out.kind, out.start, out.end = hdrRange, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
		if out.start >= out.end {
			return nil, At("range_match", fmt.Errorf("start %d must be less than end %d", out.start, out.end))
		}
	case *routev3.HeaderMatcher_PresentMatch:
		out.kind, out.present = hdrPresent, s.PresentMatch
	case *routev3.HeaderMatcher_PrefixMatch:
		out.kind, out.str = hdrString, StringMatcher{kind: strPrefix, value: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		out.kind, out.str = hdrString, StringMatcher{kind: strSuffix, value: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		out.kind, out.str = hdrString, StringMatcher{kind: strContains, value: s.ContainsMatch}
	case *routev3.HeaderMatcher_StringMatch:
		out.kind = hdrString
		if out.str, err = CompileString(s.StringMatch); err != nil {
			return nil, At("string_match", err)
		}
	default:
		return nil, fmt.Errorf("header match %T %w", s, ErrUnsupported)
	}
	return out, nil
}

func (m *HeaderMatcher) MatchHeaders(h *header.Map) bool {
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
		match = m.str.Match(v)
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

// CompilePath compiles a PathMatcher: the string matcher applies to the
// path without its query and fragment.
func CompilePath(m *matcherv3.PathMatcher) (StringMatcher, error) {
	if err := pathFields.Check(m); err != nil {
		return StringMatcher{}, err
	}
	sm, err := CompileString(m.GetPath())
	return sm, At("path", err)
}

// CompileCIDR compiles a CidrRange as Envoy does: an unset prefix_len is 0.
func CompileCIDR(m *corev3.CidrRange) (netip.Prefix, error) {
	if err := cidrFields.Check(m); err != nil {
		return netip.Prefix{}, err
	}
	a, err := netip.ParseAddr(m.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, At("address_prefix", fmt.Errorf("invalid IP address %q", m.GetAddressPrefix()))
	}
	if a.Zone() != "" {
		return netip.Prefix{}, At("address_prefix", fmt.Errorf("invalid IP address %q: zones are not allowed", m.GetAddressPrefix()))
	}
	a = a.Unmap()
	bits := int(m.GetPrefixLen().GetValue())
	if bits > a.BitLen() {
		return netip.Prefix{}, At("prefix_len", fmt.Errorf("%d is longer than an IPv%d address", bits, map[int]int{32: 4, 128: 6}[a.BitLen()]))
	}
	return a.Prefix(bits)
}
