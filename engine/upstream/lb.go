package upstream

import (
	"math/rand/v2"

	"github.com/sluice-proxy/sluice/engine/config"
)

// LBContext carries what a pick may depend on. The zero value (or a nil
// pointer) is a plain pick.
type LBContext struct {
	// Hash is the request's hash (from the route's hash policy) for
	// ring_hash and maglev; without HasHash they use a random value.
	Hash    uint64
	HasHash bool
	// Attempt is the try number (0 for the first try). It is informational:
	// picks do not depend on it.
	Attempt int
	// Exclude, when set, rejects hosts (a retry avoiding hosts already
	// tried). The balancer tries a few picks, then scans the eligible hosts
	// for one not excluded, then gives up and returns an excluded host.
	Exclude func(*Host) bool
}

// excludeTries is how many balancer picks are tried before the scan.
const excludeTries = 3

// balancer picks among a cluster's eligible hosts. Implementations are built
// once, at Build, and are safe for concurrent use. k > 0 asks for an
// alternate pick (hash balancers move off the primary host; the others just
// pick again).
type balancer interface {
	pick(ctx *LBContext, k int) *Host
}

// Pick returns a host for one request, or nil if the cluster has no host.
// Hosts marked unhealthy are skipped unless no host of the cluster is
// healthy (panic mode: all hosts of the first priority level are used, and
// lb_healthy_panic counts the pick). Lower Endpoint.Priority levels are
// preferred: the first level with a healthy host is used.
func (c *Cluster) Pick(ctx *LBContext) *Host {
	hs := c.hs.Load()
	b := hs.lb
	if b == nil {
		return nil
	}
	if hs.panicMode {
		c.Stats.LBHealthyPanic.Inc()
	}
	skip := c.skipEjected()
	if !skip && (ctx == nil || ctx.Exclude == nil) {
		return b.pick(ctx, 0)
	}
	// Hosts the request excludes (retry_host_predicate) are taken when
	// nothing else is left; ejected ones are not: with every host
	// ejected and no panic, no host (503, as Envoy).
	var first *Host
	usable := func(h *Host) (ok, fallback bool) {
		if skip && h.Stats.od.ejected.Load() {
			return false, false
		}
		return ctx == nil || ctx.Exclude == nil || !ctx.Exclude(h), true
	}
	for k := 0; k < excludeTries; k++ {
		h := b.pick(ctx, k)
		ok, fallback := usable(h)
		if ok {
			return h
		}
		if fallback && first == nil {
			first = h
		}
	}
	n := uint64(len(hs.eligible))
	var start uint64
	if ctx != nil && ctx.HasHash {
		start = ctx.Hash
	} else {
		start = rand.Uint64()
	}
	for i := uint64(0); i < n; i++ {
		h := hs.eligible[(start+i)%n]
		ok, fallback := usable(h)
		if ok {
			return h
		}
		if fallback && first == nil {
			first = h
		}
	}
	return first
}

// hashOf returns the context's hash, or a random one.
func hashOf(ctx *LBContext) uint64 {
	if ctx != nil && ctx.HasHash {
		return ctx.Hash
	}
	return rand.Uint64()
}

// newBalancer builds the policy's structures over hosts (non-empty).
func newBalancer(policy config.LBPolicy, hosts []*Host, o *clusterOptions) balancer {
	switch policy {
	case config.LBLeastRequest:
		return newLeastRequest(hosts, o.choiceCount)
	case config.LBRandom:
		return newRandom(hosts)
	case config.LBRingHash:
		return newRingHash(hosts, o.ringMin, o.ringMax)
	case config.LBMaglev:
		return newMaglev(hosts, o.maglevSize)
	default:
		return newRoundRobin(hosts)
	}
}

// equalWeights reports whether every host has the same weight.
func equalWeights(hosts []*Host) bool {
	for _, h := range hosts[1:] {
		if h.weight != hosts[0].weight {
			return false
		}
	}
	return true
}

// aliasTable samples an index with probability proportional to its weight
// in O(1) (Vose's alias method). threshold[i] is in [0, 2^32].
type aliasTable struct {
	threshold []uint64
	alias     []uint32
}

func newAliasTable(weights []uint64) *aliasTable {
	n := len(weights)
	var total float64
	for _, w := range weights {
		total += float64(w)
	}
	p := make([]float64, n)
	small := make([]int, 0, n)
	large := make([]int, 0, n)
	for i, w := range weights {
		p[i] = float64(w) * float64(n) / total
		if p[i] < 1 {
			small = append(small, i)
		} else {
			large = append(large, i)
		}
	}
	t := &aliasTable{threshold: make([]uint64, n), alias: make([]uint32, n)}
	for len(small) > 0 && len(large) > 0 {
		s := small[len(small)-1]
		small = small[:len(small)-1]
		l := large[len(large)-1]
		large = large[:len(large)-1]
		t.threshold[s] = uint64(p[s] * (1 << 32))
		t.alias[s] = uint32(l)
		p[l] += p[s] - 1
		if p[l] < 1 {
			small = append(small, l)
		} else {
			large = append(large, l)
		}
	}
	for _, i := range large {
		t.threshold[i] = 1 << 32
		t.alias[i] = uint32(i)
	}
	for _, i := range small { // rounding leftovers
		t.threshold[i] = 1 << 32
		t.alias[i] = uint32(i)
	}
	return t
}

// sample maps one random value to an index.
func (t *aliasTable) sample(r uint64) int {
	i := int(((r >> 32) * uint64(len(t.threshold))) >> 32)
	if uint64(uint32(r)) < t.threshold[i] {
		return i
	}
	return int(t.alias[i])
}

// uniform maps a random value to [0, n).
func uniform(r uint64, n int) int {
	return int(((r >> 32) * uint64(n)) >> 32)
}

func hostWeights(hosts []*Host) []uint64 {
	w := make([]uint64, len(hosts))
	for i, h := range hosts {
		w[i] = uint64(h.weight)
	}
	return w
}
