package upstream

import "math/rand/v2"

// random picks a host at random, with probability proportional to its
// weight (alias method, O(1)).
type random struct {
	hosts []*Host
	alias *aliasTable // nil when all weights are equal
}

func newRandom(hosts []*Host) *random {
	r := &random{hosts: hosts}
	if !equalWeights(hosts) {
		r.alias = newAliasTable(hostWeights(hosts))
	}
	return r
}

func (r *random) draw() *Host {
	x := rand.Uint64()
	if r.alias == nil {
		return r.hosts[uniform(x, len(r.hosts))]
	}
	return r.hosts[r.alias.sample(x)]
}

func (r *random) pick(_ *LBContext, _ int) *Host { return r.draw() }
