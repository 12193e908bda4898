package compile

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/proxy/route"
)

// routesSrc is a listener with n routes of the given condition format (%d
// is the route number), each proxying to one upstream.
func routesSrc(n int, cond string) string {
	var b strings.Builder
	b.WriteString("upstream up { endpoint 127.0.0.1:9000 }\nlistener l 127.0.0.1:8080 {\n")
	for i := range n {
		fmt.Fprintf(&b, "  route r%d when %s { proxy up }\n", i, fmt.Sprintf(cond, i))
	}
	b.WriteString("}\n")
	return b.String()
}

func benchMatch(b *testing.B, cond, path string, wantLifted bool) {
	res := compileSrc(b, routesSrc(1000, cond))
	rc := res.Snapshot.Listeners[0].FilterChains[0].HTTP.RouteConfig
	for _, r := range rc.VirtualHosts[0].Routes {
		if (r.Match.Condition == nil) != wantLifted {
			b.Fatalf("route %s: condition %v", r.Name, r.Match.Condition)
		}
	}
	table, err := route.Compile(rc)
	if err != nil {
		b.Fatal(err)
	}
	d := &dryStream{}
	d.req.Add(":method", "GET")
	d.req.Add(":path", path)
	d.req.Add(":authority", "example.com")
	d.req.Add(":scheme", "http")
	d.req.Add("user-agent", "bench")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r, err := table.MatchSource(d)
		if err != nil || r == nil || r.Name() != "r999" {
			b.Fatal(r, err)
		}
	}
}

// 1,000 DSL routes lifted into prefix matchers: matching the last one
// evaluates no CEL.
func BenchmarkMatch1000Lifted(b *testing.B) {
	benchMatch(b, `request.path.startsWith("/r%d/")`, "/r999/x", true)
}

// The same routes written so they cannot be lifted: 1,000 CEL evaluations.
func BenchmarkMatch1000CEL(b *testing.B) {
	benchMatch(b, `request.path.startsWith("/r%d/") || request.method == "NONE"`, "/r999/x", false)
}
