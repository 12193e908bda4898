//go:build !race

package route

import "testing"

// The race detector changes allocation counts, so this budget check only
// runs without it.
func TestMatchDoesNotAllocate(t *testing.T) {
	for _, c := range []struct{ kind, host string }{
		{"prefix", "bench.example.com"},
		{"prefix", "Bench.Example.COM:8443"},
		{"prefix", "x.bench.example.org"},
		{"exact", "bench.example.com"},
		{"header", "bench.example.com"},
	} {
		tb := benchTable(t, c.kind)
		h := benchRequest(c.host)
		if n := testing.AllocsPerRun(100, func() { tb.Match(h) }); n != 0 {
			t.Errorf("%s route, host %q: %v allocs per Match, want 0", c.kind, c.host, n)
		}
	}

	tb := benchTable(t, "prefix")
	r := tb.Match(benchRequest("bench.example.com"))
	if n := testing.AllocsPerRun(100, func() { r.PickCluster(7) }); n != 0 {
		t.Errorf("PickCluster: %v allocs", n)
	}
	path := "/target/x?debug=1"
	if n := testing.AllocsPerRun(100, func() { r.RewritePath(path) }); n != 0 {
		t.Errorf("RewritePath without rewrite: %v allocs", n)
	}
}
