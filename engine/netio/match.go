package netio

import (
	"net/netip"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Transport protocols a filter chain can match (Envoy's names).
const (
	TransportTLS = "tls"
	TransportRaw = "raw_buffer"
)

// Transport is what filter-chain matching knows of a connection beyond its
// addresses: for TLS, the ClientHello's server name and offered ALPN
// protocols (as Envoy's tls_inspector reports them, before the handshake).
type Transport struct {
	Protocol   string // TransportTLS or TransportRaw ("" means raw)
	ServerName string
	ALPN       []string // offered by the client
}

// MatchChain matches with the transport known from a finished handshake in
// info.TLS (its negotiated protocol standing for the offered list); see
// MatchChainTransport.
func MatchChain(chains []*config.FilterChain, info *stream.ConnInfo) int {
	t := Transport{Protocol: TransportRaw}
	var alpn [1]string
	if info.TLS != nil {
		t.Protocol, t.ServerName = TransportTLS, info.TLS.ServerName
		if info.TLS.NegotiatedProtocol != "" {
			alpn[0] = info.TLS.NegotiatedProtocol
			t.ALPN = alpn[:]
		}
	}
	return MatchChainTransport(chains, info, &t)
}

// MatchChainTransport picks the filter chain for a connection the way
// Envoy does: criteria are applied one after another — destination port,
// destination IP, server name, transport protocol, application protocols
// (a chain matches when the client offered one of its protocols), source
// IP — and at each step only the chains with the most specific match go on
// (a chain that leaves the criterion empty matches with the lowest
// specificity). There is no backtracking: if the most specific chains fail
// a later criterion, no chain matches. It returns the index into chains, or
// -1 (use the default chain, if any).
func MatchChainTransport(chains []*config.FilterChain, info *stream.ConnInfo, t *Transport) int {
	if len(chains) == 0 {
		return -1
	}
	var store [16]int
	cand := store[:0]
	for i := range chains {
		cand = append(cand, i)
	}
	sni, transport := t.ServerName, t.Protocol
	if transport == "" {
		transport = TransportRaw
	}
	dst, src := info.Local.Addr().Unmap(), info.Remote.Addr().Unmap()
	criteria := [...]func(m *config.FilterChainMatch) int{
		func(m *config.FilterChainMatch) int {
			switch {
			case m.DestinationPort == 0:
				return 0
			case uint32(info.Local.Port()) == m.DestinationPort:
				return 1
			}
			return -1
		},
		func(m *config.FilterChainMatch) int { return prefixSpecificity(m.PrefixRanges, dst) },
		func(m *config.FilterChainMatch) int { return serverNameSpecificity(m.ServerNames, sni) },
		func(m *config.FilterChainMatch) int {
			switch {
			case m.TransportProtocol == "":
				return 0
			case m.TransportProtocol == transport:
				return 1
			}
			return -1
		},
		func(m *config.FilterChainMatch) int {
			switch {
			case len(m.ApplicationProtocols) == 0:
				return 0
			case overlaps(m.ApplicationProtocols, t.ALPN):
				return 1
			}
			return -1
		},
		func(m *config.FilterChainMatch) int { return prefixSpecificity(m.SourcePrefixRanges, src) },
	}
	for _, spec := range criteria {
		best := -1
		for _, i := range cand {
			if v := spec(&chains[i].Match); v > best {
				best = v
			}
		}
		if best < 0 {
			return -1
		}
		kept := cand[:0]
		for _, i := range cand {
			if spec(&chains[i].Match) == best {
				kept = append(kept, i)
			}
		}
		cand = kept
	}
	return cand[0]
}

// prefixSpecificity is 0 for no ranges, 1+bits of the longest range holding
// a, or -1 when ranges are set and none holds it.
func prefixSpecificity(ranges []netip.Prefix, a netip.Addr) int {
	if len(ranges) == 0 {
		return 0
	}
	bits := longestMatch(ranges, a)
	if bits < 0 {
		return -1
	}
	return bits + 1
}

// serverNameSpecificity ranks an exact name above any wildcard, and a
// longer wildcard suffix above a shorter one; 0 when no names are set.
func serverNameSpecificity(names []string, sni string) int {
	if len(names) == 0 {
		return 0
	}
	best := -1
	for _, n := range names {
		switch {
		case n == sni && sni != "":
			return 1 << 16
		case len(n) > 2 && n[0] == '*' && n[1] == '.' && len(sni) > len(n)-1 && sni[len(sni)-(len(n)-1):] == n[1:]:
			if len(n) > best {
				best = len(n)
			}
		}
	}
	return best
}

func longestMatch(ranges []netip.Prefix, a netip.Addr) int {
	best := -1
	for _, p := range ranges {
		if p.Contains(a) && p.Bits() > best {
			best = p.Bits()
		}
	}
	return best
}

func overlaps(a, b []string) bool {
	for _, s := range b {
		if contains(a, s) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
