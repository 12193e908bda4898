package route

import (
	"math/bits"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
)

func TestXXH64(t *testing.T) {
	// Reference values of XXH64 with seed 0.
	tests := []struct {
		in   string
		want uint64
	}{
		{"", 0xef46db3751d8e999},
		{"a", 0xd24ec4f1a98c6e5b},
		{"abc", 0x44bc2cf5ad770999},
		{"hello world", 0x45ab6734b21e6968},
		{"10.1.2.3", 0x43bc2967acb25af4},
		{"0123456789abcdef0123456789abcdef", 0x642a94958e71e6c5},
		{"The quick brown fox jumps over the lazy dog, 1234567890!", 0x486403612b400e1b},
	}
	for _, tt := range tests {
		if got := xxh64(tt.in); got != tt.want {
			t.Errorf("xxh64(%q) = %#x, want %#x", tt.in, got, tt.want)
		}
	}
}

func TestHashKey(t *testing.T) {
	rot := func(h uint64) uint64 { return bits.RotateLeft64(h, 1) }
	ip := "10.1.2.3"
	tests := []struct {
		name     string
		policies []config.HashPolicy
		req      []string // path, then header pairs
		ok       bool
		want     uint64
	}{
		{"none", nil, []string{"/"}, false, 0},
		{"header", []config.HashPolicy{{Header: "x-user"}}, []string{"/", "X-User", "alice"}, true, xxh64("alice")},
		{"header empty value hashes", []config.HashPolicy{{Header: "x-user"}}, []string{"/", "x-user", ""}, true, xxh64("")},
		{"header missing", []config.HashPolicy{{Header: "x-user"}}, []string{"/"}, false, 0},
		{"header values sorted", []config.HashPolicy{{Header: "x-m"}}, []string{"/", "x-m", "b", "x-m", "a"}, true, xxh64("ab")},
		{"pseudo header", []config.HashPolicy{{Header: ":path"}}, []string{"/p?q"}, true, xxh64("/p?q")},
		{"source ip", []config.HashPolicy{{SourceIP: true}}, []string{"/"}, true, xxh64(ip)},
		{"query", []config.HashPolicy{{QueryParameter: "u"}}, []string{"/p?a=1&u=bob&u=eve"}, true, xxh64("bob")},
		{"query raw", []config.HashPolicy{{QueryParameter: "u"}}, []string{"/p?u=a%20b"}, true, xxh64("a%20b")},
		{"query empty value", []config.HashPolicy{{QueryParameter: "u"}}, []string{"/p?u="}, true, xxh64("")},
		{"query missing", []config.HashPolicy{{QueryParameter: "u"}}, []string{"/p?a=1"}, false, 0},
		{"cookie", []config.HashPolicy{{Cookie: "session"}}, []string{"/", "cookie", `a=1; session="xyz"; b=2`}, true, xxh64("xyz")},
		{"cookie second header", []config.HashPolicy{{Cookie: "session"}}, []string{"/", "cookie", "a=1", "Cookie", "session=s2"}, true, xxh64("s2")},
		{"cookie name exact", []config.HashPolicy{{Cookie: "session"}}, []string{"/", "cookie", "Session=1;sessionx=2"}, false, 0},
		{"cookie empty", []config.HashPolicy{{Cookie: "session"}}, []string{"/", "cookie", "session="}, false, 0},
		{"cookie missing", []config.HashPolicy{{Cookie: "session"}}, []string{"/"}, false, 0},
		{"combined", []config.HashPolicy{{Header: "x-user"}, {SourceIP: true}}, []string{"/", "x-user", "alice"}, true, rot(xxh64("alice")) ^ xxh64(ip)},
		{"first missing", []config.HashPolicy{{Header: "x-user"}, {SourceIP: true}}, []string{"/"}, true, xxh64(ip)},
		{"duplicates do not cancel", []config.HashPolicy{{SourceIP: true}, {SourceIP: true}}, []string{"/"}, true, rot(xxh64(ip)) ^ xxh64(ip)},
		{"terminal stops", []config.HashPolicy{{Header: "x-user", Terminal: true}, {SourceIP: true}}, []string{"/", "x-user", "alice"}, true, xxh64("alice")},
		{"terminal without value goes on", []config.HashPolicy{{Header: "x-user", Terminal: true}, {SourceIP: true}}, []string{"/"}, true, xxh64(ip)},
		{"terminal with earlier hash stops", []config.HashPolicy{{SourceIP: true}, {Header: "x-user", Terminal: true}, {Cookie: "c"}}, []string{"/", "cookie", "c=1"}, true, xxh64(ip)},
		{"empty policy skipped", []config.HashPolicy{{}, {SourceIP: true}}, []string{"/"}, true, xxh64(ip)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := oneRoute(t, &config.Route{Action: &config.RouteAction{Cluster: "c", HashPolicy: tt.policies}})
			h := req("h", tt.req[0], tt.req[1:]...)
			got, ok := r.HashKey(h, ip)
			if ok != tt.ok || got != tt.want {
				t.Fatalf("HashKey = %#x %v, want %#x %v", got, ok, tt.want, tt.ok)
			}
			// Stable across calls.
			if again, _ := r.HashKey(h, ip); again != got {
				t.Fatal("HashKey not stable")
			}
		})
	}

	r := oneRoute(t, &config.Route{Action: &config.RouteAction{Cluster: "c", HashPolicy: []config.HashPolicy{{SourceIP: true}}}})
	if _, ok := r.HashKey(req("h", "/"), ""); ok {
		t.Fatal("unknown source IP produced a hash")
	}
}
