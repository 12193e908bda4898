package xds

import (
	"errors"
	"fmt"
	"regexp"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

var (
	// google_re2 is the deprecated engine selector; RE2 is the only engine.
	regexMatcherFields  = knownFields(&matcherv3.RegexMatcher{}, "google_re2", "regex")
	stringMatcherFields = knownFields(&matcherv3.StringMatcher{}, "exact", "prefix", "suffix", "safe_regex",
		"contains", "ignore_case")
	headerMatcherFields = knownFields(&routev3.HeaderMatcher{}, "name", "exact_match", "safe_regex_match",
		"present_match", "prefix_match", "suffix_match", "contains_match", "string_match", "invert_match")
	queryMatcherFields = knownFields(&routev3.QueryParameterMatcher{}, "name", "string_match", "present_match")
)

// regex returns an Envoy RegexMatcher's pattern after checking that Go's
// RE2 implementation accepts it.
func regex(m *matcherv3.RegexMatcher) (string, error) {
	if err := regexMatcherFields.check(m); err != nil {
		return "", err
	}
	return m.GetRegex(), inField(checkRegex(m.GetRegex()), "regex")
}

func checkRegex(re string) error {
	if _, err := regexp.Compile(re); err != nil {
		return fmt.Errorf("invalid regex %q: %w", re, err)
	}
	return nil
}

func stringMatcher(m *matcherv3.StringMatcher) (*config.StringMatcher, error) {
	if err := stringMatcherFields.check(m); err != nil {
		return nil, err
	}
	out := &config.StringMatcher{IgnoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.Kind, out.Value = config.MatchExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		out.Kind, out.Value = config.MatchPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		out.Kind, out.Value = config.MatchSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		out.Kind, out.Value = config.MatchContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regex(p.SafeRegex)
		if err != nil {
			return nil, inField(err, "safe_regex")
		}
		// Envoy ignores ignore_case for regexes.
		out.Kind, out.Value, out.IgnoreCase = config.MatchRegex, re, false
	default:
		return nil, errors.New("a match pattern is required")
	}
	return out, nil
}

// headerMatcher translates a HeaderMatcher. With no match specifier Envoy
// tests presence.
func headerMatcher(h *routev3.HeaderMatcher) (config.HeaderMatcher, error) {
	out := config.HeaderMatcher{Name: h.GetName(), InvertMatch: h.GetInvertMatch()}
	if err := headerMatcherFields.check(h); err != nil {
		return out, err
	}
	sm := func(kind config.StringMatchKind, v string) *config.StringMatcher {
		return &config.StringMatcher{Kind: kind, Value: v}
	}
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		out.Present = true
	case *routev3.HeaderMatcher_PresentMatch:
		out.Present = s.PresentMatch
	case *routev3.HeaderMatcher_ExactMatch:
		out.Match = sm(config.MatchExact, s.ExactMatch)
	case *routev3.HeaderMatcher_PrefixMatch:
		out.Match = sm(config.MatchPrefix, s.PrefixMatch)
	case *routev3.HeaderMatcher_SuffixMatch:
		out.Match = sm(config.MatchSuffix, s.SuffixMatch)
	case *routev3.HeaderMatcher_ContainsMatch:
		out.Match = sm(config.MatchContains, s.ContainsMatch)
	case *routev3.HeaderMatcher_SafeRegexMatch:
		re, err := regex(s.SafeRegexMatch)
		if err != nil {
			return out, inField(err, "safe_regex_match")
		}
		out.Match = sm(config.MatchRegex, re)
	case *routev3.HeaderMatcher_StringMatch:
		m, err := stringMatcher(s.StringMatch)
		if err != nil {
			return out, inField(err, "string_match")
		}
		out.Match = m
	default:
		return out, fmt.Errorf("header match %T: %w", s, ErrUnsupported)
	}
	return out, nil
}

// queryParameterMatcher translates a QueryParameterMatcher; with no
// specifier (or present_match) it tests presence.
func queryParameterMatcher(q *routev3.QueryParameterMatcher) (config.QueryParameterMatcher, error) {
	out := config.QueryParameterMatcher{Name: q.GetName()}
	if err := queryMatcherFields.check(q); err != nil {
		return out, err
	}
	switch s := q.GetQueryParameterMatchSpecifier().(type) {
	case *routev3.QueryParameterMatcher_StringMatch:
		m, err := stringMatcher(s.StringMatch)
		if err != nil {
			return out, inField(err, "string_match")
		}
		out.Match = m
	case *routev3.QueryParameterMatcher_PresentMatch:
		if !s.PresentMatch {
			// config.QueryParameterMatcher cannot express absence.
			return out, unsupportedValue("present_match", false)
		}
	}
	return out, nil
}
