package upstream

// maglev is the Maglev consistent hash (Eisenbud et al., 2016) as Envoy
// builds it: each host walks its own permutation of the table
// (offset = xxHash64(address, 0) % M, skip = xxHash64(address, 1) % (M-1) + 1)
// and claims free slots in turns; a host of weight w takes a turn in w of
// every max-weight iterations, so slot counts follow weights. M must be
// prime. A pick is one table lookup.
type maglev struct {
	hosts []*Host
	table []uint32
}

func newMaglev(hosts []*Host, size uint64) *maglev {
	type entry struct {
		offset, skip, next, weight, target uint64
	}
	entries := make([]entry, len(hosts))
	var maxW uint64
	for i, h := range hosts {
		key := []byte(h.addr)
		entries[i] = entry{
			offset: xxhash64(key, 0) % size,
			skip:   xxhash64(key, 1)%(size-1) + 1,
			weight: uint64(h.weight),
		}
		maxW = max(maxW, uint64(h.weight))
	}
	const free = ^uint32(0)
	table := make([]uint32, size)
	for i := range table {
		table[i] = free
	}
	filled := uint64(0)
	for iter := uint64(1); filled < size; iter++ {
		for i := range entries {
			if filled >= size {
				break
			}
			e := &entries[i]
			if iter*e.weight < e.target {
				continue
			}
			e.target += maxW
			c := (e.offset + e.skip*e.next) % size
			for table[c] != free {
				e.next++
				c = (e.offset + e.skip*e.next) % size
			}
			table[c] = uint32(i)
			e.next++
			filled++
		}
	}
	return &maglev{hosts: hosts, table: table}
}

func (m *maglev) pick(ctx *LBContext, k int) *Host {
	h := hashOf(ctx)
	if k > 0 { // as Envoy: perturb the hash to reach an alternate host
		h ^= ^uint64(0) - uint64(k) + 1
	}
	return m.hosts[m.table[h%uint64(len(m.table))]]
}
