package proxy

import (
	"math/rand/v2"
	"net/netip"

	"github.com/sluice-proxy/sluice/engine/header"
)

// hopByHop are the headers that describe one connection, not the message;
// a proxy never forwards them (RFC 9110 7.6.1).
var hopByHop = [...]string{"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "proxy-authenticate", "proxy-authorization"}

// stripHopByHop removes hop-by-hop headers and those listed in Connection.
// An upgrade request keeps "Connection: upgrade" and its Upgrade header;
// "TE: trailers" survives (gRPC needs it). Pseudo-headers are never hop-by-hop.
func stripHopByHop(h *header.Map, keepUpgrade bool) {
	// Collect the Connection values before deleting: DelFunc compacts the
	// map in place, so it must not be read while it runs.
	var store [4]string
	conn := store[:0]
	for i := 0; i < h.Len(); i++ {
		if f := h.At(i); header.EqualFold(f.Name, "connection") {
			conn = append(conn, f.Value)
		}
	}
	teTrailers := h.HasToken("te", "trailers")
	upgrade := ""
	if keepUpgrade {
		upgrade = h.Value("upgrade")
	}
	h.DelFunc(func(f header.Field) bool {
		if len(f.Name) > 0 && f.Name[0] == ':' {
			return false
		}
		for _, n := range hopByHop {
			if header.EqualFold(f.Name, n) {
				return true
			}
		}
		for _, v := range conn {
			if header.ListHasToken(v, f.Name) {
				return true
			}
		}
		return false
	})
	if teTrailers {
		h.Add("te", "trailers")
	}
	if upgrade != "" {
		h.Add("connection", "upgrade")
		h.Add("upgrade", upgrade)
	}
}

// isUpgrade reports whether a request asks for a protocol upgrade
// (WebSocket and friends).
func isUpgrade(h *header.Map) bool {
	return h.Has("upgrade") && h.HasToken("connection", "upgrade")
}

// newRequestID returns a random RFC 4122 version 4 UUID.
func newRequestID() string {
	var b [16]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := 0; i < 8; i++ {
		b[i] = byte(hi >> (8 * i))
		b[8+i] = byte(lo >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hexd = "0123456789abcdef"
	var out [36]byte
	j := 0
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out[j] = '-'
			j++
		}
		out[j] = hexd[c>>4]
		out[j+1] = hexd[c&0xf]
		j += 2
	}
	return string(out[:])
}

// appendAddr appends the IP of a (possibly IPv4-mapped) address.
func appendAddr(dst []byte, a netip.AddrPort) []byte {
	return a.Addr().Unmap().AppendTo(dst)
}
