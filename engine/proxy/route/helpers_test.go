package route

import (
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

// req builds a request header map: pseudo-headers first, then name/value
// pairs from kv.
func req(authority, path string, kv ...string) *header.Map {
	h := &header.Map{}
	h.Add(":method", "GET")
	h.Add(":scheme", "http")
	if authority != "" {
		h.Add(":authority", authority)
	}
	if path != "" {
		h.Add(":path", path)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// fields renders a map as name=value pairs in wire order.
func fields(h *header.Map) []string {
	var out []string
	for _, f := range h.Fields() {
		out = append(out, f.Name+"="+f.Value)
	}
	return out
}

func toCluster(name string) *config.RouteAction { return &config.RouteAction{Cluster: name} }

// oneRoute compiles a table with one virtual host ("*") holding r.
func oneRoute(t *testing.T, r *config.Route) *Route {
	t.Helper()
	tb := mustCompile(t, &config.RouteConfiguration{Name: "rc", VirtualHosts: []*config.VirtualHost{
		{Name: "vh", Domains: []string{"*"}, Routes: []*config.Route{r}},
	}})
	return tb.vhosts[0].Routes[0]
}

func mustCompile(t testing.TB, rc *config.RouteConfiguration) *Table {
	t.Helper()
	tb, err := Compile(rc)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return tb
}
