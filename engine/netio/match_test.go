package netio

import (
	"crypto/tls"
	"net/netip"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
)

type conn struct {
	local, remote string // "ip:port"
	sni, alpn     string
	tls           bool
}

func (c conn) info() *stream.ConnInfo {
	local, remote := c.local, c.remote
	if local == "" {
		local = "10.0.0.1:80"
	}
	if remote == "" {
		remote = "192.0.2.1:40000"
	}
	info := &stream.ConnInfo{Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote)}
	if c.tls || c.sni != "" || c.alpn != "" {
		info.TLS = &tls.ConnectionState{ServerName: c.sni, NegotiatedProtocol: c.alpn, Version: tls.VersionTLS13}
	}
	return info
}

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

func chains(ms ...config.FilterChainMatch) []*config.FilterChain {
	out := make([]*config.FilterChain, len(ms))
	for i, m := range ms {
		out[i] = &config.FilterChain{Match: m}
	}
	return out
}

type matchCase struct {
	name   string
	chains []*config.FilterChain
	conn   conn
	want   int
}

func runMatch(t *testing.T, tests []matchCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MatchChain(tt.chains, tt.conn.info()); got != tt.want {
				t.Errorf("MatchChain = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestMatchChain(t *testing.T) {
	prefixes := chains(
		config.FilterChainMatch{PrefixRanges: pfx("10.0.0.0/8")},
		config.FilterChainMatch{PrefixRanges: pfx("10.1.0.0/16")},
		config.FilterChainMatch{PrefixRanges: pfx("192.168.0.0/16", "10.1.2.0/24")},
		config.FilterChainMatch{PrefixRanges: pfx("2001:db8::/32")},
	)
	sources := chains(
		config.FilterChainMatch{SourcePrefixRanges: pfx("0.0.0.0/0")},
		config.FilterChainMatch{SourcePrefixRanges: pfx("172.16.0.0/12", "192.168.1.0/24")},
	)
	tlsChains := chains(
		config.FilterChainMatch{TransportProtocol: "raw_buffer"},
		config.FilterChainMatch{TransportProtocol: "tls"},
	)
	alpn := chains(
		config.FilterChainMatch{ApplicationProtocols: []string{"h2"}},
		config.FilterChainMatch{ApplicationProtocols: []string{"http/1.1", "http/1.0"}},
	)
	sni := chains(
		config.FilterChainMatch{ServerNames: []string{"a.example.com", "b.example.com"}},
		config.FilterChainMatch{ServerNames: []string{"*.wild.com"}},
	)
	specific := chains(
		config.FilterChainMatch{},
		config.FilterChainMatch{ServerNames: []string{"x.com"}},
		config.FilterChainMatch{DestinationPort: 443},
		config.FilterChainMatch{DestinationPort: 443, ServerNames: []string{"x.com"}},
		config.FilterChainMatch{DestinationPort: 443, ServerNames: []string{"x.com"}, SourcePrefixRanges: pfx("192.0.2.0/24")},
	)
	runMatch(t, []matchCase{
		{name: "no chains", chains: nil, conn: conn{}, want: -1},
		{name: "empty match matches all", chains: chains(config.FilterChainMatch{}), conn: conn{}, want: 0},
		{name: "empty match matches tls", chains: chains(config.FilterChainMatch{}), conn: conn{sni: "x"}, want: 0},

		// Destination port.
		{name: "port match wins over catch-all", chains: chains(config.FilterChainMatch{}, config.FilterChainMatch{DestinationPort: 8443}),
			conn: conn{local: "10.0.0.1:8443"}, want: 1},
		{name: "port mismatch falls back", chains: chains(config.FilterChainMatch{}, config.FilterChainMatch{DestinationPort: 8443}),
			conn: conn{local: "10.0.0.1:80"}, want: 0},
		{name: "port mismatch only chain", chains: chains(config.FilterChainMatch{DestinationPort: 8443}), conn: conn{}, want: -1},
		{name: "port beats /32 destination", chains: chains(config.FilterChainMatch{PrefixRanges: pfx("10.0.0.1/32")}, config.FilterChainMatch{DestinationPort: 80}),
			conn: conn{local: "10.0.0.1:80"}, want: 1},

		// Destination prefix ranges: longest wins.
		{name: "dst /24 beats /16 and /8", chains: prefixes, conn: conn{local: "10.1.2.3:80"}, want: 2},
		{name: "dst /16 beats /8", chains: prefixes, conn: conn{local: "10.1.9.9:80"}, want: 1},
		{name: "dst /8 only", chains: prefixes, conn: conn{local: "10.200.0.1:80"}, want: 0},
		{name: "dst second range of a chain", chains: prefixes, conn: conn{local: "192.168.5.5:80"}, want: 2},
		{name: "dst no range matches", chains: prefixes, conn: conn{local: "172.16.0.1:80"}, want: -1},
		{name: "dst v6", chains: prefixes, conn: conn{local: "[2001:db8::5]:80"}, want: 3},
		{name: "dst v4-mapped v6 unmapped", chains: prefixes, conn: conn{local: "[::ffff:10.1.2.3]:80"}, want: 2},
		{name: "dst beats source", chains: chains(config.FilterChainMatch{SourcePrefixRanges: pfx("192.0.2.1/32")}, config.FilterChainMatch{PrefixRanges: pfx("0.0.0.0/0")}),
			conn: conn{}, want: 1},

		// Source prefix ranges.
		{name: "src /24 beats /0", chains: sources, conn: conn{remote: "192.168.1.9:1"}, want: 1},
		{name: "src /12", chains: sources, conn: conn{remote: "172.20.0.1:1"}, want: 1},
		{name: "src /0", chains: sources, conn: conn{remote: "8.8.8.8:1"}, want: 0},
		{name: "src v4-mapped unmapped", chains: sources, conn: conn{remote: "[::ffff:192.168.1.9]:1"}, want: 1},
		{name: "src mismatch", chains: chains(config.FilterChainMatch{SourcePrefixRanges: pfx("10.0.0.0/8")}), conn: conn{}, want: -1},

		// Server names need TLS.
		{name: "sni plaintext", chains: sni, conn: conn{}, want: -1},
		{name: "sni tls without sni", chains: sni, conn: conn{tls: true}, want: -1},
		{name: "sni exact first name", chains: sni, conn: conn{sni: "a.example.com"}, want: 0},
		{name: "sni exact second name", chains: sni, conn: conn{sni: "b.example.com"}, want: 0},
		{name: "sni no match", chains: sni, conn: conn{sni: "c.example.com"}, want: -1},
		{name: "sni wildcard", chains: sni, conn: conn{sni: "api.wild.com"}, want: 1},
		{name: "sni wildcard deep", chains: sni, conn: conn{sni: "a.b.wild.com"}, want: 1},
		{name: "sni wildcard needs a label", chains: sni, conn: conn{sni: "wild.com"}, want: -1},
		{name: "sni wildcard bare dot", chains: sni, conn: conn{sni: ".wild.com"}, want: -1},
		{name: "sni wildcard suffix only", chains: sni, conn: conn{sni: "notwild.com"}, want: -1},
		{name: "sni falls back to catch-all", chains: append(chains(config.FilterChainMatch{}), sni...), conn: conn{sni: "zzz"}, want: 0},
		{name: "sni beats catch-all", chains: append(chains(config.FilterChainMatch{}), sni...), conn: conn{sni: "a.example.com"}, want: 1},

		// ALPN.
		{name: "alpn h2", chains: alpn, conn: conn{alpn: "h2"}, want: 0},
		{name: "alpn http/1.0", chains: alpn, conn: conn{alpn: "http/1.0"}, want: 1},
		{name: "alpn none negotiated", chains: alpn, conn: conn{tls: true}, want: -1},
		{name: "alpn plaintext", chains: alpn, conn: conn{}, want: -1},

		// Transport protocol.
		{name: "raw_buffer", chains: tlsChains, conn: conn{}, want: 0},
		{name: "tls", chains: tlsChains, conn: conn{tls: true}, want: 1},
		{name: "tls only chain plaintext", chains: tlsChains[1:], conn: conn{}, want: -1},
		{name: "unknown transport never matches", chains: chains(config.FilterChainMatch{TransportProtocol: "quic"}), conn: conn{tls: true}, want: -1},

		// Most specific wins overall.
		{name: "port+sni+src", chains: specific, conn: conn{local: "10.0.0.1:443", sni: "x.com"}, want: 4},
		{name: "port+sni", chains: specific, conn: conn{local: "10.0.0.1:443", remote: "198.51.100.1:1", sni: "x.com"}, want: 3},
		{name: "port only", chains: specific, conn: conn{local: "10.0.0.1:443", remote: "198.51.100.1:1", sni: "y.com"}, want: 2},
		{name: "port over sni", chains: specific[:3], conn: conn{local: "10.0.0.1:443", sni: "x.com"}, want: 2},
		{name: "sni only", chains: specific, conn: conn{local: "10.0.0.1:80", sni: "x.com"}, want: 1},
		{name: "catch-all", chains: specific, conn: conn{local: "10.0.0.1:80"}, want: 0},
		{name: "first of equals wins", chains: chains(config.FilterChainMatch{DestinationPort: 80}, config.FilterChainMatch{DestinationPort: 80}),
			conn: conn{}, want: 0},
	})
}

// Envoy's filter_chain_match order is: destination port, destination IP,
// server name (exact before wildcard, longer wildcard suffix first),
// transport protocol, application protocols, then source IP. MatchChain
// says it follows that order; these cases pin the precedence between levels
// and within server names.
func TestMatchChainEnvoyPrecedence(t *testing.T) {
	runMatch(t, []matchCase{
		{
			name: "exact server name beats wildcard",
			chains: chains(
				config.FilterChainMatch{ServerNames: []string{"*.example.com"}},
				config.FilterChainMatch{ServerNames: []string{"api.example.com"}},
			),
			conn: conn{sni: "api.example.com"}, want: 1,
		},
		{
			name: "longer wildcard beats shorter",
			chains: chains(
				config.FilterChainMatch{ServerNames: []string{"*.example.com"}},
				config.FilterChainMatch{ServerNames: []string{"*.api.example.com"}},
			),
			conn: conn{sni: "v1.api.example.com"}, want: 1,
		},
		{
			name: "server name beats alpn",
			chains: chains(
				config.FilterChainMatch{ApplicationProtocols: []string{"h2"}},
				config.FilterChainMatch{ServerNames: []string{"x.com"}},
			),
			conn: conn{sni: "x.com", alpn: "h2"}, want: 1,
		},
		{
			name: "transport protocol beats alpn",
			chains: chains(
				config.FilterChainMatch{ApplicationProtocols: []string{"h2"}},
				config.FilterChainMatch{TransportProtocol: "tls"},
			),
			conn: conn{sni: "x.com", alpn: "h2"}, want: 1,
		},
		{
			name: "server name plus alpn beats server name alone",
			chains: chains(
				config.FilterChainMatch{ServerNames: []string{"x.com"}},
				config.FilterChainMatch{ServerNames: []string{"x.com"}, ApplicationProtocols: []string{"h2"}},
			),
			conn: conn{sni: "x.com", alpn: "h2"}, want: 1,
		},
		{
			name: "transport protocol beats a v6 /128 source",
			chains: chains(
				config.FilterChainMatch{SourcePrefixRanges: pfx("2001:db8::1/128")},
				config.FilterChainMatch{TransportProtocol: "tls"},
			),
			conn: conn{remote: "[2001:db8::1]:5000", tls: true}, want: 1,
		},
		{
			name: "transport protocol beats a v4 /32 source",
			chains: chains(
				config.FilterChainMatch{SourcePrefixRanges: pfx("192.0.2.1/32")},
				config.FilterChainMatch{TransportProtocol: "tls"},
			),
			conn: conn{remote: "192.0.2.1:5000", tls: true}, want: 1,
		},
	})
}
