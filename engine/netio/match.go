package netio

import (
	"net/netip"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// MatchChain picks the filter chain for a connection following Envoy's
// order of criteria: destination port, destination IP, then source IP, each
// preferring the most specific match. Server names, transport protocol and
// ALPN need TLS inspection; until a listener has it, a chain that requires
// them does not match a plaintext connection. It returns the index into
// chains, or -1 (use the default chain, if any).
func MatchChain(chains []*config.FilterChain, info *stream.ConnInfo) int {
	best, bestScore := -1, -1
	for i, fc := range chains {
		m := &fc.Match
		score := 0
		if m.DestinationPort != 0 {
			if uint32(info.Local.Port()) != m.DestinationPort {
				continue
			}
			score += 1 << 20
		}
		if len(m.PrefixRanges) > 0 {
			bits := longestMatch(m.PrefixRanges, info.Local.Addr().Unmap())
			if bits < 0 {
				continue
			}
			score += (bits + 1) << 12
		}
		if len(m.ServerNames) > 0 || len(m.ApplicationProtocols) > 0 {
			if info.TLS == nil {
				continue
			}
			if len(m.ServerNames) > 0 && !serverNameMatch(m.ServerNames, info.TLS.ServerName) {
				continue
			}
			if len(m.ApplicationProtocols) > 0 && !contains(m.ApplicationProtocols, info.TLS.NegotiatedProtocol) {
				continue
			}
			score += 1 << 8
		}
		if m.TransportProtocol != "" {
			tp := "raw_buffer"
			if info.TLS != nil {
				tp = "tls"
			}
			if m.TransportProtocol != tp {
				continue
			}
			score += 1 << 7
		}
		if len(m.SourcePrefixRanges) > 0 {
			bits := longestMatch(m.SourcePrefixRanges, info.Remote.Addr().Unmap())
			if bits < 0 {
				continue
			}
			score += bits + 1
		}
		if score > bestScore {
			best, bestScore = i, score
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

func serverNameMatch(names []string, sni string) bool {
	for _, n := range names {
		if n == sni {
			return true
		}
		if len(n) > 2 && n[0] == '*' && n[1] == '.' && len(sni) > len(n)-1 && sni[len(sni)-(len(n)-1):] == n[1:] {
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
