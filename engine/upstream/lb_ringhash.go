package upstream

import (
	"math"
	"sort"
	"strconv"
)

// ringHash is Envoy's ketama-style consistent hash ring. Each host gets
// hashes xxHash64("<address>_<i>") in proportion to its weight; the ring
// size is scaled so the lightest host gets a whole number of entries, at
// least min and at most max in total. A pick is a binary search for the first
// entry at or after the hash, wrapping around.
type ringHash struct {
	hosts  []*Host
	hashes []uint64 // sorted
	idx    []uint32 // host index of each entry
}

func newRingHash(hosts []*Host, minSize, maxSize uint64) *ringHash {
	var total float64
	for _, h := range hosts {
		total += float64(h.weight)
	}
	minNorm := 1.0
	for _, h := range hosts {
		minNorm = math.Min(minNorm, float64(h.weight)/total)
	}
	// Same sizing as Envoy's RingHashLoadBalancer::Ring.
	scale := math.Min(math.Ceil(minNorm*float64(minSize))/minNorm, float64(maxSize))
	size := uint64(math.Ceil(scale))
	r := &ringHash{hosts: hosts, hashes: make([]uint64, 0, size), idx: make([]uint32, 0, size)}
	var current, target float64
	key := make([]byte, 0, 64)
	for i, h := range hosts {
		key = append(append(key[:0], h.addr...), '_')
		base := len(key)
		target += scale * float64(h.weight) / total
		for j := 0; current < target; j++ {
			key = strconv.AppendInt(key[:base], int64(j), 10)
			r.hashes = append(r.hashes, xxhash64(key, 0))
			r.idx = append(r.idx, uint32(i))
			current++
		}
	}
	sort.Sort(ringSorter{r})
	return r
}

// search returns the index of the first entry whose hash is >= h, wrapping
// to 0 past the end.
func (r *ringHash) search(h uint64) int {
	lo, hi := 0, len(r.hashes)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r.hashes[m] < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(r.hashes) {
		return 0
	}
	return lo
}

func (r *ringHash) pick(ctx *LBContext, k int) *Host {
	i := r.search(hashOf(ctx))
	if k > 0 { // as Envoy: behave as if the primary entry was not there
		i = (i + k) % len(r.hashes)
	}
	return r.hosts[r.idx[i]]
}

type ringSorter struct{ r *ringHash }

func (s ringSorter) Len() int { return len(s.r.hashes) }
func (s ringSorter) Less(i, j int) bool {
	if s.r.hashes[i] != s.r.hashes[j] {
		return s.r.hashes[i] < s.r.hashes[j]
	}
	return s.r.idx[i] < s.r.idx[j]
}
func (s ringSorter) Swap(i, j int) {
	s.r.hashes[i], s.r.hashes[j] = s.r.hashes[j], s.r.hashes[i]
	s.r.idx[i], s.r.idx[j] = s.r.idx[j], s.r.idx[i]
}
