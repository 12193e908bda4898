package upstream

// leastRequest is power-of-N-choices: draw N hosts (weighted by their
// weight) and keep the one with the fewest active requests per unit of
// weight (active/weight, Envoy's weighted variant; with equal weights it is
// plain P2C on active requests). Ties keep the earlier draw, so idle hosts
// receive traffic in proportion to their weights.
type leastRequest struct {
	random
	choices int
}

func newLeastRequest(hosts []*Host, choices int) *leastRequest {
	return &leastRequest{random: *newRandom(hosts), choices: choices}
}

func (lr *leastRequest) pick(_ *LBContext, _ int) *Host {
	best := lr.draw()
	if len(lr.hosts) == 1 {
		return best
	}
	ba := best.Stats.RqActive.Load()
	for i := 1; i < lr.choices; i++ {
		h := lr.draw()
		a := h.Stats.RqActive.Load()
		// a/h.weight < ba/best.weight
		if a*int64(best.weight) < ba*int64(h.weight) {
			best, ba = h, a
		}
	}
	return best
}
