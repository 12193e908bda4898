package compile

import (
	"fmt"
	"strings"

	"github.com/sluice-proxy/sluice/engine/header"
)

// TestResult is the outcome of one `test` block.
type TestResult struct {
	Test        *Test
	Passed      bool
	Failures    []string     // one diff-like line per failed expectation
	Explanation *Explanation // what the request went through; nil if it could not run
}

// String renders the result: "ok test "NAME"" or its failures, one per
// line.
func (r TestResult) String() string {
	if r.Passed {
		return fmt.Sprintf("ok   test %q (%s)", r.Test.Name, r.Test.Pos)
	}
	return strings.Join(r.Failures, "\n")
}

// RunTests runs every `test` block of the program through Explain: the
// real route table and rules filter, nothing sent.
func RunTests(res *Result) []TestResult {
	out := make([]TestResult, 0, len(res.Tests))
	for _, t := range res.Tests {
		out = append(out, runTest(res, t))
	}
	return out
}

func runTest(res *Result, t *Test) TestResult {
	r := TestResult{Test: t}
	fail := func(e *Expect, format string, args ...any) {
		what := "request"
		if e != nil {
			what = e.Text
		}
		r.Failures = append(r.Failures, fmt.Sprintf("test %q (%s): %s: %s", t.Name, t.Pos, what, fmt.Sprintf(format, args...)))
	}
	ex, err := explain(res, t.Listener, t.Method, t.URL, t.Headers, t.Source, t.Body)
	if err != nil {
		fail(nil, "%v", err)
		return r
	}
	r.Explanation = ex
	for _, e := range t.Expects {
		switch e.Kind {
		case ExpectRoute:
			if ex.Route != e.Name {
				fail(e, "got %s", routeText(ex.Route))
			}
		case ExpectUpstream:
			o := ex.Outcome
			switch {
			case o.Kind != OutcomeProxy:
				fail(e, "got %s", outcomeText(o))
			case o.Upstream == "":
				fail(e, "got %s (a split picks its upstream per request; expect the route instead)", splitText(o.Split))
			case o.Upstream != e.Name:
				fail(e, "got upstream %s", o.Upstream)
			}
		case ExpectRespond:
			o := ex.Outcome
			switch {
			case o.Kind == OutcomeProxy:
				fail(e, "got %s", outcomeText(o))
			case o.Status != e.Code:
				fail(e, "got respond %d", o.Status)
			case e.HasBody && o.Body != e.Body:
				fail(e, "got body %q", o.Body)
			}
		case ExpectHeader:
			var m header.Map
			for _, h := range ex.Request {
				m.Add(h.Name, h.Value)
			}
			vals := m.Values(nil, e.Name)
			switch {
			case len(vals) == 0:
				fail(e, "got no header %s", e.Name)
			case strings.Join(vals, ",") != e.Value:
				fail(e, "got %s: %q", e.Name, strings.Join(vals, ","))
			}
		}
	}
	r.Passed = len(r.Failures) == 0
	return r
}

func routeText(name string) string {
	if name == "" {
		return "no route"
	}
	return "route " + name
}

func outcomeText(o Outcome) string {
	switch o.Kind {
	case OutcomeProxy:
		if o.Upstream != "" {
			return "proxy to upstream " + o.Upstream
		}
		return "proxy to " + splitText(o.Split)
	case OutcomeNoRoute:
		return "no route (404)"
	}
	return fmt.Sprintf("respond %d", o.Status)
}
