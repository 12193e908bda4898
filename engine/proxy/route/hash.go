package route

import (
	"errors"
	"math/bits"
	"sort"
	"strings"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

type hashKind uint8

const (
	hashHeader hashKind = iota
	hashSourceIP
	hashQuery
	hashCookie
)

type hashPolicy struct {
	kind     hashKind
	name     string
	terminal bool
}

// compileHashPolicy returns ok=false for a policy that hashes nothing (Envoy
// skips connection_properties with source_ip false).
func compileHashPolicy(c *config.HashPolicy) (hashPolicy, bool, error) {
	n := 0
	hp := hashPolicy{terminal: c.Terminal}
	if c.Header != "" {
		n++
		hp.kind, hp.name = hashHeader, c.Header
	}
	if c.SourceIP {
		n++
		hp.kind = hashSourceIP
	}
	if c.QueryParameter != "" {
		n++
		hp.kind, hp.name = hashQuery, c.QueryParameter
	}
	if c.Cookie != "" {
		n++
		hp.kind, hp.name = hashCookie, c.Cookie
	}
	switch n {
	case 0:
		return hp, false, nil
	case 1:
		return hp, true, nil
	}
	return hp, false, errors.New("set only one of header, source IP, query parameter and cookie")
}

// HashKey computes the request's hash for consistent-hash load balancers
// from the route's hash policies, like Envoy's HashPolicyImpl::generateHash:
// each policy that yields a value is XXH64-hashed and folded in as
// rotl(previous, 1) ^ value; a terminal policy that produced a hash (its own
// or an earlier one's) stops the walk. ok is false when no policy produced a
// value. sourceIP is the downstream address without port ("" when unknown).
//
// Per policy, as Envoy: header — all values sorted and hashed as one string;
// source IP — the address text; query parameter — the first value, as sent
// (not decoded), an empty value included; cookie — the value of the first
// cookie with that name, quotes removed, skipped when empty (Sluice does not
// generate cookies: the ttl/path of Envoy's cookie policy are not in the
// model).
func (r *Route) HashKey(h *header.Map, sourceIP string) (uint64, bool) {
	var hash uint64
	have := false
	for i := range r.hash {
		p := &r.hash[i]
		if v, ok := p.eval(h, sourceIP); ok {
			var old uint64
			if have {
				old = bits.RotateLeft64(hash, 1)
			}
			hash, have = old^v, true
		}
		if p.terminal && have {
			break
		}
	}
	return hash, have
}

func (p *hashPolicy) eval(h *header.Map, sourceIP string) (uint64, bool) {
	switch p.kind {
	case hashHeader:
		return hashHeaderValues(h, p.name)
	case hashSourceIP:
		if sourceIP == "" {
			return 0, false
		}
		return xxh64(sourceIP), true
	case hashQuery:
		_, _, path, ok := requestTarget(h)
		if !ok {
			return 0, false
		}
		v, ok := firstQueryValue(rawQuery(path), p.name)
		if !ok {
			return 0, false
		}
		return xxh64(v), true
	case hashCookie:
		v := cookieValue(h, p.name)
		if v == "" {
			return 0, false
		}
		return xxh64(v), true
	}
	return 0, false
}

func hashHeaderValues(h *header.Map, name string) (uint64, bool) {
	fs := h.Fields()
	n, first := 0, -1
	for i := range fs {
		if header.EqualFold(fs[i].Name, name) {
			if n == 0 {
				first = i
			}
			n++
		}
	}
	switch n {
	case 0:
		return 0, false
	case 1:
		return xxh64(fs[first].Value), true
	}
	// Order-independent, like Envoy: sort, then hash the concatenation.
	vals := h.Values(make([]string, 0, n), name)
	sort.Strings(vals)
	return xxh64(strings.Join(vals, "")), true
}

// cookieValue is Envoy's Http::Utility::parseCookieValue: the value of the
// first cookie named name across the Cookie headers ("" when absent).
func cookieValue(h *header.Map, name string) string {
	fs := h.Fields()
	for i := range fs {
		if !header.EqualFold(fs[i].Name, "cookie") {
			continue
		}
		v := fs[i].Value
		for len(v) > 0 {
			var tok string
			if j := strings.IndexByte(v, ';'); j >= 0 {
				tok, v = v[:j], v[j+1:]
			} else {
				tok, v = v, ""
			}
			eq := strings.IndexByte(tok, '=')
			if eq < 0 {
				continue
			}
			start := 0
			for start < eq && tok[start] == ' ' {
				start++
			}
			if tok[start:eq] != name {
				continue
			}
			val := tok[eq+1:]
			if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
				val = val[1 : len(val)-1]
			}
			return val
		}
	}
	return ""
}

// XXH64 with seed 0, the hash Envoy uses for hash policies
// (HashUtil::xxHash64).
const (
	xxPrime1 uint64 = 11400714785074694791
	xxPrime2 uint64 = 14029467366897019727
	xxPrime3 uint64 = 1609587929392839161
	xxPrime4 uint64 = 9650029242287828579
	xxPrime5 uint64 = 2870177450012600261
)

func xxh64(s string) uint64 {
	n := len(s)
	var h uint64
	if n >= 32 {
		var seed uint64
		v1 := seed + xxPrime1
		v1 += xxPrime2
		v2 := seed + xxPrime2
		v3 := seed
		v4 := seed - xxPrime1
		for len(s) >= 32 {
			v1 = xxRound(v1, le64(s[0:8]))
			v2 = xxRound(v2, le64(s[8:16]))
			v3 = xxRound(v3, le64(s[16:24]))
			v4 = xxRound(v4, le64(s[24:32]))
			s = s[32:]
		}
		h = bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) + bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
		h = xxMerge(h, v1)
		h = xxMerge(h, v2)
		h = xxMerge(h, v3)
		h = xxMerge(h, v4)
	} else {
		h = xxPrime5
	}
	h += uint64(n)
	for ; len(s) >= 8; s = s[8:] {
		h ^= xxRound(0, le64(s))
		h = bits.RotateLeft64(h, 27)*xxPrime1 + xxPrime4
	}
	if len(s) >= 4 {
		h ^= uint64(le32(s)) * xxPrime1
		h = bits.RotateLeft64(h, 23)*xxPrime2 + xxPrime3
		s = s[4:]
	}
	for ; len(s) > 0; s = s[1:] {
		h ^= uint64(s[0]) * xxPrime5
		h = bits.RotateLeft64(h, 11) * xxPrime1
	}
	h ^= h >> 33
	h *= xxPrime2
	h ^= h >> 29
	h *= xxPrime3
	h ^= h >> 32
	return h
}

func xxRound(acc, in uint64) uint64 {
	acc += in * xxPrime2
	acc = bits.RotateLeft64(acc, 31)
	return acc * xxPrime1
}

func xxMerge(acc, v uint64) uint64 {
	acc ^= xxRound(0, v)
	return acc*xxPrime1 + xxPrime4
}

func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

func le32(s string) uint32 {
	_ = s[3]
	return uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
}
