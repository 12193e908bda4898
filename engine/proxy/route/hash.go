package route

import (
	"errors"
	"github.com/cespare/xxhash/v2"
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

// xxh64 is XXH64 with seed 0, the hash Envoy's hash policies use
// (HashUtil::xxHash64).
func xxh64(s string) uint64 { return xxhash.Sum64String(s) }

func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}
