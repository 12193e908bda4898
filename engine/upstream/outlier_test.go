package upstream

import (
	"fmt"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
)

// outlierConfig is Envoy's defaults, as the xDS front-end fills them in,
// with an interval no reaper reaches: the tests sweep by hand.
func outlierConfig() *config.OutlierDetection {
	return &config.OutlierDetection{
		Interval: time.Hour, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second,
		MaxEjectionPercent: 10, Consecutive5xx: 5, EnforcingConsecutive5xx: 100,
		ConsecutiveGatewayFailure: 5, EnforcingConsecutiveGatewayFailure: 0,
		ConsecutiveLocalOriginFailure: 5, EnforcingConsecutiveLocalOriginFailure: 100,
		EnforcingSuccessRate: 100, EnforcingLocalOriginSuccessRate: 100, SuccessRateMinimumHosts: 5,
		SuccessRateRequestVolume: 100, SuccessRateStdevFactor: 1900,
		FailurePercentageThreshold: 85, FailurePercentageMinimumHosts: 5, FailurePercentageRequestVolume: 50,
	}
}

func outlierCluster(t *testing.T, n int, mod func(*config.Cluster)) (*Manager, *observe.Store, *config.Cluster, *Cluster) {
	t.Helper()
	m, store := newTestManager(t)
	cfg := &config.Cluster{Name: "c", Outlier: outlierConfig()}
	for i := range n {
		cfg.Endpoints = append(cfg.Endpoints, ep(fmt.Sprintf("10.0.0.%d:80", i+1), 1))
	}
	if mod != nil {
		mod(cfg)
	}
	return m, store, cfg, commit(t, m, cfg).Get("c")
}

func statValue(t *testing.T, store *observe.Store, name string) int64 {
	t.Helper()
	for _, m := range store.Metrics() {
		if m.Name == name {
			return int64(m.Value)
		}
	}
	return 0
}

func fail5xx(h *Host, n int) {
	for range n {
		h.OutlierStatus(500)
	}
}

func TestOutlierConsecutive5xx(t *testing.T) {
	_, store, _, c := outlierCluster(t, 3, func(cfg *config.Cluster) { cfg.Outlier.MaxEjectionPercent = 34 })
	h0, h1 := c.Hosts()[0], c.Hosts()[1]
	fail5xx(h0, 4)
	h0.OutlierStatus(200) // a success starts the count again
	fail5xx(h0, 4)
	if h0.Ejected() {
		t.Fatal("ejected after 4 consecutive 5xx")
	}
	h0.OutlierStatus(503)
	if !h0.Ejected() {
		t.Fatal("not ejected after 5 consecutive 5xx")
	}
	for range 300 {
		if c.Pick(nil) == h0 {
			t.Fatal("picked an ejected host")
		}
	}
	// A second host would be 2 of 3 out, over 34 %: detected, not ejected.
	fail5xx(h1, 5)
	if h1.Ejected() {
		t.Fatal("ejected past max_ejection_percent")
	}
	for name, want := range map[string]int64{
		"cluster.c.outlier_detection.ejections_active":                   1,
		"cluster.c.outlier_detection.ejections_enforced_total":           1,
		"cluster.c.outlier_detection.ejections_detected_consecutive_5xx": 2,
		"cluster.c.outlier_detection.ejections_enforced_consecutive_5xx": 1,
		"cluster.c.outlier_detection.ejections_overflow":                 1,
	} {
		if got := statValue(t, store, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}

func TestOutlierEjectionTime(t *testing.T) {
	_, _, _, c := outlierCluster(t, 3, func(cfg *config.Cluster) { cfg.Outlier.MaxEjectionPercent = 100 })
	h := c.Hosts()[0]
	interval := int64(time.Hour)
	now := monoNow()
	fail5xx(h, 5)
	c.sweepOutlier(now + interval) // 1 h > 30 s: back in
	if h.Ejected() {
		t.Fatal("still ejected after base_ejection_time")
	}
	fail5xx(h, 5) // second ejection: 2 × 30 s
	if !h.Ejected() {
		t.Fatal("not ejected again")
	}
	now = monoNow()
	c.sweepOutlier(now + 2*interval)
	if h.Ejected() {
		t.Fatal("still ejected after 2 × base_ejection_time")
	}
	// The multiplier falls by one per interval the host stays in.
	c.sweepOutlier(now + 3*interval)
	c.sweepOutlier(now + 4*interval)
	if got := h.Stats.od.ejections; got != 0 {
		t.Fatalf("ejection multiplier %d after two clean intervals", got)
	}
}

func TestOutlierGatewayAndLocalOrigin(t *testing.T) {
	t.Run("gateway failures are detected, enforced only when asked", func(t *testing.T) {
		_, store, _, c := outlierCluster(t, 1, func(cfg *config.Cluster) {
			cfg.Outlier.MaxEjectionPercent = 100
			cfg.Outlier.Consecutive5xx = 100
		})
		h := c.Hosts()[0]
		for range 5 {
			h.OutlierStatus(502)
		}
		if h.Ejected() || statValue(t, store, "cluster.c.outlier_detection.ejections_detected_consecutive_gateway_failure") != 1 {
			t.Fatal("gateway failures: want detected, not enforced (enforcing_consecutive_gateway_failure 0)")
		}
	})
	t.Run("gateway failures enforced", func(t *testing.T) {
		_, _, _, c := outlierCluster(t, 1, func(cfg *config.Cluster) {
			cfg.Outlier.MaxEjectionPercent = 100
			cfg.Outlier.Consecutive5xx = 100
			cfg.Outlier.EnforcingConsecutiveGatewayFailure = 100
		})
		h := c.Hosts()[0]
		for range 4 {
			h.OutlierStatus(504)
		}
		h.OutlierStatus(500) // not a gateway failure: the count starts again
		for range 4 {
			h.OutlierStatus(503)
		}
		if h.Ejected() {
			t.Fatal("ejected with 4 consecutive gateway failures")
		}
		h.OutlierStatus(502)
		if !h.Ejected() {
			t.Fatal("not ejected after 5 consecutive gateway failures")
		}
	})
	t.Run("local origin failures count as 503 unless split", func(t *testing.T) {
		_, _, _, c := outlierCluster(t, 1, func(cfg *config.Cluster) { cfg.Outlier.MaxEjectionPercent = 100 })
		h := c.Hosts()[0]
		for range 5 {
			h.OutlierLocalFailure(false)
		}
		if !h.Ejected() {
			t.Fatal("5 connect failures did not eject")
		}
	})
	t.Run("split: local origin failures have their own count", func(t *testing.T) {
		_, store, _, c := outlierCluster(t, 1, func(cfg *config.Cluster) {
			cfg.Outlier.MaxEjectionPercent = 100
			cfg.Outlier.SplitExternalLocalOriginErrors = true
		})
		h := c.Hosts()[0]
		fail5xx(h, 3)
		for range 4 {
			h.OutlierLocalFailure(true)
		}
		h.outlierConnected() // a connection made starts the count again
		for range 4 {
			h.OutlierLocalFailure(false)
		}
		if h.Ejected() {
			t.Fatal("ejected: the counts were mixed")
		}
		h.OutlierLocalFailure(false)
		if !h.Ejected() || statValue(t, store, "cluster.c.outlier_detection.ejections_enforced_consecutive_local_origin_failure") != 1 {
			t.Fatal("5 consecutive local origin failures did not eject")
		}
	})
}

func TestOutlierSuccessRateAndFailurePercentage(t *testing.T) {
	results := func(c *Cluster, bad int, okOfBad int) {
		for i, h := range c.Hosts() {
			for k := range 200 {
				status := 200
				if i == bad && k >= okOfBad {
					status = 500
				}
				// Interleaved successes keep consecutive 5xx from firing.
				if status == 500 && k%2 == 0 {
					status = 200
				}
				h.OutlierStatus(status)
			}
		}
	}
	t.Run("success rate", func(t *testing.T) {
		_, store, _, c := outlierCluster(t, 6, func(cfg *config.Cluster) {
			cfg.Outlier.MaxEjectionPercent = 100
			cfg.Outlier.Consecutive5xx = 1000
		})
		results(c, 2, 0) // host 2: 50 % success; the others 100 %
		c.sweepOutlier(monoNow() + int64(time.Hour))
		for i, h := range c.Hosts() {
			if h.Ejected() != (i == 2) {
				t.Errorf("host %d ejected %v", i, h.Ejected())
			}
		}
		if statValue(t, store, "cluster.c.outlier_detection.ejections_enforced_success_rate") != 1 {
			t.Error("success rate ejection not counted")
		}
	})
	t.Run("too few hosts with volume: no success rate", func(t *testing.T) {
		_, _, _, c := outlierCluster(t, 4, func(cfg *config.Cluster) {
			cfg.Outlier.MaxEjectionPercent = 100
			cfg.Outlier.Consecutive5xx = 1000
		})
		results(c, 2, 0)
		c.sweepOutlier(monoNow() + int64(time.Hour))
		if c.Hosts()[2].Ejected() {
			t.Error("ejected with 4 hosts (success_rate_minimum_hosts 5)")
		}
	})
	t.Run("failure percentage", func(t *testing.T) {
		_, store, _, c := outlierCluster(t, 5, func(cfg *config.Cluster) {
			cfg.Outlier.MaxEjectionPercent = 100
			cfg.Outlier.Consecutive5xx = 1000
			cfg.Outlier.EnforcingSuccessRate = 0
			cfg.Outlier.EnforcingFailurePercentage = 100
			cfg.Outlier.FailurePercentageThreshold = 40
		})
		results(c, 1, 0) // host 1: 50 % failures
		c.sweepOutlier(monoNow() + int64(time.Hour))
		if !c.Hosts()[1].Ejected() || statValue(t, store, "cluster.c.outlier_detection.ejections_enforced_failure_percentage") != 1 {
			t.Error("failure percentage ejection missing")
		}
		if c.Hosts()[0].Ejected() {
			t.Error("a host without failures was ejected")
		}
	})
}

func TestOutlierPanic(t *testing.T) {
	t.Run("under the panic threshold ejections are ignored", func(t *testing.T) {
		_, _, _, c := outlierCluster(t, 3, func(cfg *config.Cluster) { cfg.Outlier.MaxEjectionPercent = 100 })
		fail5xx(c.Hosts()[0], 5)
		fail5xx(c.Hosts()[1], 5)
		seen := map[*Host]bool{}
		for range 300 {
			seen[c.Pick(nil)] = true
		}
		if len(seen) != 3 {
			t.Fatalf("2 of 3 ejected, default threshold 50 %%: picked %d hosts, want all 3 (panic)", len(seen))
		}
	})
	t.Run("threshold 0: every host ejected is no host", func(t *testing.T) {
		zero := 0.0
		_, _, _, c := outlierCluster(t, 2, func(cfg *config.Cluster) {
			cfg.Outlier.MaxEjectionPercent = 100
			cfg.HealthyPanicThreshold = &zero
		})
		fail5xx(c.Hosts()[0], 5)
		for range 100 {
			if c.Pick(nil) != c.Hosts()[1] {
				t.Fatal("picked the ejected host")
			}
		}
		fail5xx(c.Hosts()[1], 5)
		if h := c.Pick(nil); h != nil {
			t.Fatalf("picked %s with every host ejected and no panic", h.Address())
		}
		if h := c.Pick(&LBContext{Exclude: func(*Host) bool { return false }}); h != nil {
			t.Fatalf("picked %s (retry path) with every host ejected", h.Address())
		}
	})
}

// An EDS update rebuilds the cluster: a host keeping its address keeps
// its ejection, and the detector its state.
func TestOutlierSurvivesRebuild(t *testing.T) {
	m, _, cfg, c := outlierCluster(t, 3, func(cfg *config.Cluster) { cfg.Outlier.MaxEjectionPercent = 100 })
	fail5xx(c.Hosts()[0], 5)
	next := *cfg
	next.Endpoints = append(append([]*config.Endpoint(nil), cfg.Endpoints...), ep("10.0.0.9:80", 1))
	c2 := commit(t, m, &next).Get("c")
	if c2 == c || c2.outlier != c.outlier {
		t.Fatal("the rebuilt cluster did not keep its detector")
	}
	if !c2.Hosts()[0].Ejected() {
		t.Fatal("the ejection was lost to the update")
	}
	other := next
	other.Outlier = outlierConfig()
	other.Outlier.Consecutive5xx = 7
	if c3 := commit(t, m, &other).Get("c"); c3.outlier == c2.outlier {
		t.Fatal("a changed outlier config kept the old detector")
	}
}

// BenchmarkPickOutlier: the load balancer's cost with outlier detection
// on and nothing ejected, and with one host of 10 ejected.
func BenchmarkPickOutlier(b *testing.B) {
	m, _ := newTestManager(b)
	cfg := &config.Cluster{Name: "c", Outlier: outlierConfig()}
	cfg.Outlier.MaxEjectionPercent = 100
	for i := range 10 {
		cfg.Endpoints = append(cfg.Endpoints, ep(fmt.Sprintf("10.0.0.%d:80", i+1), 1))
	}
	plain := &config.Cluster{Name: "p", Endpoints: cfg.Endpoints}
	set := commit(b, m, cfg, plain)
	c := set.Get("c")
	b.Run("off", func(b *testing.B) {
		p := set.Get("p")
		b.ReportAllocs()
		for b.Loop() {
			p.Pick(nil)
		}
	})
	b.Run("none-ejected", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.Pick(nil)
		}
	})
	b.Run("one-ejected", func(b *testing.B) {
		fail5xx(c.Hosts()[3], 5)
		b.ReportAllocs()
		for b.Loop() {
			c.Pick(nil)
		}
	})
}
