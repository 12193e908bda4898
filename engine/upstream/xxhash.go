package upstream

import "github.com/cespare/xxhash/v2"

// xxhash64 returns XXH64(b, seed), the hash Envoy's ring hash and Maglev
// load balancers use (HashUtil::xxHash64), so host placement follows the
// same function. It runs when tables are built, not per request.
func xxhash64(b []byte, seed uint64) uint64 {
	if seed == 0 {
		return xxhash.Sum64(b)
	}
	d := xxhash.NewWithSeed(seed)
	d.Write(b)
	return d.Sum64()
}
