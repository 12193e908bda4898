package route

import (
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

func vhosts(domains map[string][]string, order ...string) *config.RouteConfiguration {
	rc := &config.RouteConfiguration{Name: "rc"}
	for _, name := range order {
		rc.VirtualHosts = append(rc.VirtualHosts, &config.VirtualHost{
			Name: name, Domains: domains[name],
			Routes: []*config.Route{{Name: name, Action: toCluster(name)}},
		})
	}
	return rc
}

func TestVirtualHostSelection(t *testing.T) {
	rc := vhosts(map[string][]string{
		"exact":       {"example.com", "Example.ORG:8080"},
		"suffix-long": {"*-bar.foo.com"},
		"suffix":      {"*.foo.com"},
		"prefix":      {"foo.*"},
		"prefix-long": {"foo.bar.*"},
		"port-exact":  {"api.example.com:8443"},
		"api":         {"api.example.com"},
		"v6":          {"[::1]"},
		"default":     {"*"},
	}, "exact", "suffix-long", "suffix", "prefix", "prefix-long", "port-exact", "api", "v6", "default")
	tb := mustCompile(t, rc)

	tests := []struct {
		host string
		want string
	}{
		{"example.com", "exact"},
		{"EXAMPLE.com", "exact"},
		{"example.org:8080", "exact"},
		{"example.org", "default"},
		// Suffix wildcards: the longest wins, and a wildcard never matches
		// the empty string.
		{"baz-bar.foo.com", "suffix-long"},
		{"baz.foo.com", "suffix"},
		{"-bar.foo.com", "suffix"},
		{".foo.com", "default"},
		// Exact beats suffix beats prefix.
		{"foo.com", "prefix"},
		{"foo.bar.com", "prefix-long"},
		{"foo.bar.foo.com", "suffix"},
		{"foo.", "default"},
		// Ports: the host as sent first, then without the port.
		{"api.example.com:8443", "port-exact"},
		{"api.example.com:9000", "api"},
		{"API.example.com", "api"},
		{"baz.foo.com:8080", "suffix"},
		{"foo.example:8080", "prefix"},
		{"example.com:80", "exact"},
		{"[::1]", "v6"},
		{"[::1]:8080", "v6"},
		{"[::2]:8080", "default"},
		{"", "default"},
		{"unknown.net", "default"},
		{strings.Repeat("a", 300) + ".foo.com", "suffix"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			vh := tb.SelectVirtualHost(tt.host)
			if vh == nil || vh.Name() != tt.want {
				t.Fatalf("SelectVirtualHost(%q) = %v, want %s", tt.host, vhName(vh), tt.want)
			}
			h := req("", "/")
			h.Add(":authority", tt.host) // also when empty
			r := tb.Match(h)
			if r == nil || r.VirtualHost.Name() != tt.want {
				t.Fatalf("Match(%q) vhost = %v, want %s", tt.host, r, tt.want)
			}
		})
	}
}

func vhName(vh *VirtualHost) string {
	if vh == nil {
		return "<nil>"
	}
	return vh.Name()
}

func TestVirtualHostSelectionHostSources(t *testing.T) {
	tb := mustCompile(t, vhosts(map[string][]string{"a": {"a.com"}, "b": {"b.com"}}, "a", "b"))

	// Host header when there is no :authority.
	h := &header.Map{}
	h.Add(":method", "GET")
	h.Add(":path", "/")
	h.Add("Host", "B.com")
	if r := tb.Match(h); r == nil || r.VirtualHost.Name() != "b" {
		t.Fatalf("Host fallback: got %v", r)
	}
	// No host at all and no "*": no virtual host.
	if r := tb.Match(req("", "/")); r != nil {
		t.Fatalf("no host: got %v, want nil", r.VirtualHost.Name())
	}
	// Unknown host and no "*".
	if r := tb.Match(req("c.com", "/")); r != nil {
		t.Fatalf("unknown host: got %v, want nil", r.VirtualHost.Name())
	}
	// No :path: nothing matches.
	if r := tb.Match(req("a.com", "")); r != nil {
		t.Fatal("request without :path matched")
	}

	// Only "*": Envoy's fast path serves even requests without a host.
	only := mustCompile(t, vhosts(map[string][]string{"d": {"*"}}, "d"))
	if r := only.Match(req("", "/")); r == nil || r.VirtualHost.Name() != "d" {
		t.Fatalf("default-only without host: got %v", r)
	}
	// Empty table.
	empty := mustCompile(t, &config.RouteConfiguration{})
	if r := empty.Match(req("a.com", "/")); r != nil {
		t.Fatal("empty table matched")
	}
	var nilTable *Table
	if nilTable.Match(req("a.com", "/")) != nil {
		t.Fatal("nil table matched")
	}
}

func TestDomainErrors(t *testing.T) {
	tests := []struct {
		name string
		rc   *config.RouteConfiguration
		want string
	}{
		{"duplicate across hosts", vhosts(map[string][]string{"a": {"x.com"}, "b": {"y.com", "X.COM"}}, "a", "b"),
			`route: virtual host "b": domain "x.com" is already used by virtual host "a"`},
		{"duplicate default", vhosts(map[string][]string{"a": {"*"}, "b": {"*"}}, "a", "b"),
			`domain "*" is already used by virtual host "a"`},
		{"duplicate wildcard", vhosts(map[string][]string{"a": {"*.x.com"}, "b": {"*.X.com"}}, "a", "b"),
			`domain "*.x.com" is already used`},
		{"duplicate in one host", vhosts(map[string][]string{"a": {"foo.*", "foo.*"}}, "a"),
			`route: virtual host "a": duplicate domain "foo.*"`},
		{"no domains", vhosts(map[string][]string{"a": nil}, "a"), `virtual host "a": no domains`},
		{"empty domain", vhosts(map[string][]string{"a": {""}}, "a"), `invalid domain ""`},
		{"control char", vhosts(map[string][]string{"a": {"a\x01.com"}}, "a"), `invalid domain`},
		{"nil host", &config.RouteConfiguration{VirtualHosts: []*config.VirtualHost{nil}}, "virtual host 0 is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(tt.rc)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if _, err := Compile(nil); err == nil {
		t.Fatal("Compile(nil) succeeded")
	}
}

func TestPortStart(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"a.com", -1},
		{"a.com:80", 5},
		{"a.com:", 5},
		{"[::1]", -1},
		{"[::1]:80", 5},
		{"::1", 1},
	}
	for _, tt := range tests {
		if got := portStart([]byte(tt.in)); got != tt.want {
			t.Errorf("portStart(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}
