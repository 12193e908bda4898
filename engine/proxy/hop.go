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
// "TE: trailers" survives (gRPC needs it).
func stripHopByHop(h *header.Map, keepUpgrade bool) {
	var listed [8]string
	nl := 0
	for i := 0; i < h.Len(); i++ {
		f := h.At(i)
		if !header.EqualFold(f.Name, "connection") {
			continue
		}
		v := f.Value
		for len(v) > 0 && nl < len(listed) {
			var tok string
			j := 0
			for j < len(v) && v[j] != ',' {
				j++
			}
			tok, v = header.TrimOWS(v[:j]), v[min(j+1, len(v)):]
			if tok != "" && !header.EqualFold(tok, "upgrade") && !header.EqualFold(tok, "close") && !header.EqualFold(tok, "keep-alive") {
				listed[nl] = tok
				nl++
			}
		}
	}
	te := ""
	if v, ok := h.Get("te"); ok && header.ListHasToken(v, "trailers") {
		te = "trailers"
	}
	upgrade := ""
	if keepUpgrade {
		upgrade = h.Value("upgrade")
	}
	h.DelFunc(func(f header.Field) bool {
		for _, n := range hopByHop {
			if header.EqualFold(f.Name, n) {
				return true
			}
		}
		for _, n := range listed[:nl] {
			if header.EqualFold(f.Name, n) {
				return true
			}
		}
		return false
	})
	if te != "" {
		h.Add("te", te)
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
