package upstream

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
)

var allPolicies = []config.LBPolicy{config.LBRoundRobin, config.LBLeastRequest, config.LBRandom, config.LBRingHash, config.LBMaglev}

// lbCluster builds a committed cluster over fake addresses (never dialled).
func lbCluster(t testing.TB, policy config.LBPolicy, weights ...uint32) *Cluster {
	t.Helper()
	m, _ := newTestManager(t)
	cfg := &config.Cluster{Name: "c", LBPolicy: policy}
	for i, w := range weights {
		cfg.Endpoints = append(cfg.Endpoints, ep(fmt.Sprintf("10.0.0.%d:80", i+1), w))
	}
	return commit(t, m, cfg).Get("c")
}

func hostIndex(c *Cluster, h *Host) int {
	for i, x := range c.Hosts() {
		if x == h {
			return i
		}
	}
	return -1
}

// counts picks n times with ctx built per pick by mk.
func counts(c *Cluster, n int, mk func(i int) *LBContext) []int {
	out := make([]int, len(c.Hosts()))
	for i := range n {
		out[hostIndex(c, c.Pick(mk(i)))]++
	}
	return out
}

func randomHash(int) *LBContext { return &LBContext{Hash: rand.Uint64(), HasHash: true} }
func noCtx(int) *LBContext      { return nil }

func TestRoundRobinExactOverCycle(t *testing.T) {
	tests := []struct {
		weights []uint32
	}{
		{[]uint32{1, 1, 1}},
		{[]uint32{1, 2, 3}},
		{[]uint32{5, 1, 1}},
		{[]uint32{10, 20, 30, 40}}, // gcd 10: cycle of 10
		{[]uint32{0, 3}},           // weight 0 means 1
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			c := lbCluster(t, config.LBRoundRobin, tt.weights...)
			var total, g uint32
			for _, w := range tt.weights {
				w = max(w, 1)
				total += w
				g = uint32(gcd(uint64(g), uint64(w)))
			}
			cycle := int(total / g)
			// Every window of one cycle, wherever it starts, is exact.
			for window := range 3 {
				got := counts(c, cycle, noCtx)
				for i, w := range tt.weights {
					if want := int(max(w, 1) / g); got[i] != want {
						t.Fatalf("window %d: host %d got %d picks, want %d (all %v)", window, i, got[i], want, got)
					}
				}
			}
		})
	}
}

func TestRoundRobinSmooth(t *testing.T) {
	// Weights 5,1,1 should not send five picks in a row to host 0.
	c := lbCluster(t, config.LBRoundRobin, 5, 1, 1)
	run := 0
	for range 70 {
		if hostIndex(c, c.Pick(nil)) == 0 {
			run++
			if run > 3 {
				t.Fatal("round robin is not interleaved")
			}
		} else {
			run = 0
		}
	}
}

func TestRoundRobinHugeWeights(t *testing.T) {
	c := lbCluster(t, config.LBRoundRobin, 1_000_003, 2_000_003, 1)
	rr := c.hs.Load().lb.(*roundRobin)
	if len(rr.sched) > maxRRSchedule+3 {
		t.Fatalf("schedule of %d slots", len(rr.sched))
	}
	got := counts(c, len(rr.sched), noCtx)
	if got[2] < 1 || math.Abs(float64(got[1])/float64(got[0])-2) > 0.01 {
		t.Fatalf("counts %v", got)
	}
}

// checkShares asserts that each host's share of n picks is within tol
// (relative) of its weight share.
func checkShares(t *testing.T, got []int, weights []uint32, tol float64) {
	t.Helper()
	var n, total float64
	for i := range got {
		n += float64(got[i])
		total += float64(weights[i])
	}
	for i, w := range weights {
		want := float64(w) / total
		share := float64(got[i]) / n
		if math.Abs(share-want) > tol*want {
			t.Errorf("host %d: share %.4f, want %.4f±%.0f%% (counts %v)", i, share, want, tol*100, got)
		}
	}
}

func TestWeightedDistributions(t *testing.T) {
	weights := []uint32{1, 2, 7}
	tests := []struct {
		policy config.LBPolicy
		mk     func(int) *LBContext
		tol    float64
	}{
		{config.LBRandom, noCtx, 0.1},
		{config.LBLeastRequest, noCtx, 0.1}, // idle hosts: ties follow the weighted draw
		{config.LBRingHash, randomHash, 0.25},
		{config.LBMaglev, randomHash, 0.1},
		{config.LBRingHash, noCtx, 0.25}, // no hash: random
		{config.LBMaglev, noCtx, 0.1},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			c := lbCluster(t, tt.policy, weights...)
			checkShares(t, counts(c, 100_000, tt.mk), weights, tt.tol)
		})
	}
}

func TestLeastRequestAvoidsBusyHosts(t *testing.T) {
	tests := []struct {
		choices  int
		weights  []uint32
		active   []int64
		busy     int
		maxShare float64
	}{
		// Equal weights: the busy host wins only when every draw is it.
		{2, []uint32{1, 1, 1}, []int64{50, 0, 0}, 0, 1.0/9 + 0.04},
		{3, []uint32{1, 1, 1}, []int64{50, 0, 0}, 0, 1.0/27 + 0.03},
		// Weighted: 8 active on weight 4 (2 per unit) loses to 1 on weight 1.
		{2, []uint32{4, 1}, []int64{8, 1}, 0, 0.8*0.8 + 0.04},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.choices, tt.weights, tt.active), func(t *testing.T) {
			m, _ := newTestManager(t)
			cfg := &config.Cluster{Name: "c", LBPolicy: config.LBLeastRequest, LeastRequestCount: tt.choices}
			for i, w := range tt.weights {
				cfg.Endpoints = append(cfg.Endpoints, ep(fmt.Sprintf("10.0.0.%d:80", i+1), w))
			}
			c := commit(t, m, cfg).Get("c")
			for i, a := range tt.active {
				c.Hosts()[i].Stats.RqActive.Store(a)
			}
			got := counts(c, 20_000, noCtx)
			if share := float64(got[tt.busy]) / 20_000; share > tt.maxShare {
				t.Fatalf("busy host share %.3f > %.3f (counts %v)", share, tt.maxShare, got)
			}
		})
	}
}

func TestLeastRequestTracksRequests(t *testing.T) {
	c := lbCluster(t, config.LBLeastRequest, 1, 1)
	h := c.Hosts()[0]
	for range 10 {
		h.RequestStarted()
	}
	if h.ActiveRequests() != 10 || h.Stats.RqTotal.Load() != 10 {
		t.Fatalf("active %d total %d", h.ActiveRequests(), h.Stats.RqTotal.Load())
	}
	got := counts(c, 1000, noCtx)
	if got[0] > 400 {
		t.Fatalf("busy host got %v", got)
	}
	for range 10 {
		h.RequestDone()
	}
	if h.ActiveRequests() != 0 {
		t.Fatal("RequestDone")
	}
}

func TestHashConsistency(t *testing.T) {
	for _, policy := range []config.LBPolicy{config.LBRingHash, config.LBMaglev} {
		t.Run(string(policy), func(t *testing.T) {
			c := lbCluster(t, policy, 1, 1, 1, 1, 1)
			// The same hash always picks the same host, on another build too.
			c2 := lbCluster(t, policy, 1, 1, 1, 1, 1)
			for range 2000 {
				ctx := randomHash(0)
				a, b, d := c.Pick(ctx), c.Pick(ctx), c2.Pick(ctx)
				if a != b || a.Address() != d.Address() {
					t.Fatalf("hash %x: %s, %s, %s", ctx.Hash, a.Address(), b.Address(), d.Address())
				}
			}
		})
	}
}

func TestHashRemovingHostMovesFewKeys(t *testing.T) {
	const n = 10
	// Ring hash scales the ring to a fixed total size (as Envoy does), so the
	// survivors gain entries and a few extra keys move between them.
	tests := []struct {
		policy   config.LBPolicy
		maxMoved float64
	}{
		{config.LBRingHash, 1.0/n + 0.1},
		{config.LBMaglev, 1.0/n + 0.05},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			ws := make([]uint32, n)
			for i := range ws {
				ws[i] = 1
			}
			full := lbCluster(t, tt.policy, ws...)
			// Same addresses without the third host.
			m, _ := newTestManager(t)
			cfg := &config.Cluster{Name: "c", LBPolicy: tt.policy}
			for i := range n {
				if i != 2 {
					cfg.Endpoints = append(cfg.Endpoints, ep(fmt.Sprintf("10.0.0.%d:80", i+1), 1))
				}
			}
			less := commit(t, m, cfg).Get("c")
			const keys = 50_000
			moved, onRemoved := 0, 0
			r := rand.New(rand.NewPCG(1, 2))
			for range keys {
				ctx := &LBContext{Hash: r.Uint64(), HasHash: true}
				a, b := full.Pick(ctx), less.Pick(ctx)
				if a.Address() == "10.0.0.3:80" {
					onRemoved++
					continue
				}
				if a.Address() != b.Address() {
					moved++
				}
			}
			frac := float64(moved+onRemoved) / keys
			t.Logf("%s: %.3f of keys moved (%.3f from the removed host)", tt.policy, frac, float64(onRemoved)/keys)
			if frac > tt.maxMoved {
				t.Fatalf("%.3f of keys moved, want <= %.3f", frac, tt.maxMoved)
			}
		})
	}
}

func TestExclude(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(string(policy), func(t *testing.T) {
			c := lbCluster(t, policy, 1, 1, 1)
			h0 := c.Hosts()[0]
			not0 := func(h *Host) bool { return h == h0 }
			for i := range 500 {
				ctx := &LBContext{Exclude: not0, Attempt: 1}
				if i%2 == 0 {
					ctx.Hash, ctx.HasHash = rand.Uint64(), true
				}
				if h := c.Pick(ctx); h == h0 {
					t.Fatal("picked an excluded host")
				}
			}
			// Hash balancers: a retry avoiding the primary host is stable.
			for range 100 {
				ctx := randomHash(0)
				primary := c.Pick(ctx)
				ctx.Exclude = func(h *Host) bool { return h == primary }
				a, b := c.Pick(ctx), c.Pick(ctx)
				if a == primary || (policy == config.LBRingHash || policy == config.LBMaglev) && a != b {
					t.Fatalf("alternate %s/%s for primary %s", a.Address(), b.Address(), primary.Address())
				}
			}
			// Everything excluded: still a host.
			if h := c.Pick(&LBContext{Exclude: func(*Host) bool { return true }}); h == nil {
				t.Fatal("nil with every host excluded")
			}
		})
	}
}

func TestHealthAndPriority(t *testing.T) {
	type hostSpec struct {
		healthy  bool
		priority uint32
	}
	tests := []struct {
		name  string
		hosts []hostSpec
		want  []int // hosts that may be picked
		panic bool
	}{
		{"skip unhealthy", []hostSpec{{true, 0}, {false, 0}, {true, 0}}, []int{0, 2}, false},
		{"panic when none healthy", []hostSpec{{false, 0}, {false, 0}, {false, 0}}, []int{0, 1, 2}, true},
		{"failover to priority 1", []hostSpec{{false, 0}, {true, 1}, {false, 0}, {true, 1}}, []int{1, 3}, false},
		{"prefer priority 0", []hostSpec{{true, 0}, {true, 1}}, []int{0}, false},
		{"panic uses first level", []hostSpec{{false, 1}, {false, 0}}, []int{1}, true},
	}
	for _, tt := range tests {
		for _, policy := range allPolicies {
			t.Run(tt.name+"/"+string(policy), func(t *testing.T) {
				m, _ := newTestManager(t)
				cfg := &config.Cluster{Name: "c", LBPolicy: policy}
				for i, h := range tt.hosts {
					cfg.Endpoints = append(cfg.Endpoints, &config.Endpoint{Address: fmt.Sprintf("10.0.0.%d:80", i+1), Healthy: h.healthy, Priority: h.priority})
				}
				c := commit(t, m, cfg).Get("c")
				if c.PanicMode() != tt.panic {
					t.Fatalf("PanicMode %v", c.PanicMode())
				}
				got := counts(c, 3000, noCtx)
				for i, n := range got {
					allowed := false
					for _, w := range tt.want {
						allowed = allowed || w == i
					}
					if allowed != (n > 0) {
						t.Fatalf("counts %v, want picks exactly on %v", got, tt.want)
					}
				}
				if tt.panic != (c.Stats.LBHealthyPanic.Value() > 0) {
					t.Fatalf("lb_healthy_panic %d", c.Stats.LBHealthyPanic.Value())
				}
			})
		}
	}
}

func TestNoHosts(t *testing.T) {
	for _, policy := range allPolicies {
		m, _ := newTestManager(t)
		c := commit(t, m, &config.Cluster{Name: "c", LBPolicy: policy}).Get("c")
		if h := c.Pick(nil); h != nil {
			t.Fatalf("%s: picked %v from no hosts", policy, h)
		}
	}
}

func TestRingSize(t *testing.T) {
	tests := []struct {
		weights       []uint32
		min, max      uint64
		wantMin, want uint64 // ring length bounds
	}{
		{[]uint32{1, 1, 1, 1}, 0, 0, 1024, 1024},
		{[]uint32{1, 1, 1}, 0, 0, 1024, 1026},
		{[]uint32{1, 99}, 0, 0, 1100, 1100},   // the light host gets a whole 11 entries
		{[]uint32{1, 99}, 410, 450, 450, 450}, // 500 capped by max
		{[]uint32{1, 1}, 16, 64, 16, 16},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights, tt.min, tt.max), func(t *testing.T) {
			m, _ := newTestManager(t)
			cfg := &config.Cluster{Name: "c", LBPolicy: config.LBRingHash, RingHashMinSize: tt.min, RingHashMaxSize: tt.max}
			for i, w := range tt.weights {
				cfg.Endpoints = append(cfg.Endpoints, ep(fmt.Sprintf("10.0.0.%d:80", i+1), w))
			}
			r := commit(t, m, cfg).Get("c").hs.Load().lb.(*ringHash)
			if n := uint64(len(r.hashes)); n < tt.wantMin || n > tt.want {
				t.Fatalf("ring of %d entries, want %d..%d", n, tt.wantMin, tt.want)
			}
			for i := 1; i < len(r.hashes); i++ {
				if r.hashes[i-1] > r.hashes[i] {
					t.Fatal("ring not sorted")
				}
			}
		})
	}
}

func TestAliasTable(t *testing.T) {
	w := []uint64{3, 0, 1, 6}
	at := newAliasTable(w)
	got := make([]int, len(w))
	r := rand.New(rand.NewPCG(3, 4))
	for range 100_000 {
		got[at.sample(r.Uint64())]++
	}
	if got[1] != 0 {
		t.Fatalf("zero weight sampled: %v", got)
	}
	for i, x := range w {
		if want := float64(x) / 10 * 100_000; math.Abs(float64(got[i])-want) > 0.05*100_000 {
			t.Fatalf("counts %v", got)
		}
	}
}
