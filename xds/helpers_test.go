package xds

import (
	"fmt"
	"reflect"
	"strconv"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
)

func eq[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %+v, want %+v", what, got, want)
	}
}

func eqSlice[T any](t *testing.T, what string, got, want []T) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %+v, want %+v", what, got, want)
	}
}

func derefs[T any](in []*T) []T {
	out := make([]T, len(in))
	for i, p := range in {
		out[i] = *p
	}
	return out
}

var kindNames = map[config.StringMatchKind]string{
	config.MatchExact: "exact", config.MatchPrefix: "prefix", config.MatchSuffix: "suffix",
	config.MatchContains: "contains", config.MatchRegex: "regex",
}

// derefMatchers renders header matchers compactly for comparison.
func derefMatchers(hs []config.HeaderMatcher) []string {
	var out []string
	for _, h := range hs {
		var s string
		if h.Match == nil {
			s = fmt.Sprintf("%s present=%v", h.Name, h.Present)
		} else {
			s = fmt.Sprintf("%s %s %s %v", h.Name, kindNames[h.Match.Kind], h.Match.Value, h.Match.IgnoreCase)
		}
		if h.InvertMatch {
			s += " invert"
		}
		out = append(out, s)
	}
	return out
}

func itoa[T ~uint32 | ~int](v T) string { return strconv.Itoa(int(v)) }
