package upstream

// Outlier detection is Envoy's passive health checking: the results of
// real requests eject hosts for a while. Results are counted on the host
// (its HostStats, which a host keeping its address across an EDS update
// keeps, so neither counts nor ejections are lost to an update); the
// consecutive-error rules eject at once, from the request that crossed
// the threshold; the success-rate and failure-percentage rules, and the
// end of ejections, are decided once per interval by the manager's reaper.
//
// An ejected host is skipped by Pick with one atomic load; a cluster
// without outlier detection pays a nil check. As Envoy, an ejection lasts
// base_ejection_time times the number of times the host was ejected
// (capped by max_ejection_time), that number falls by one for each
// interval the host stays in, no more than max_ejection_percent of the
// hosts are out at once, and under healthy_panic_threshold percent of
// hosts left the load balancer ignores ejections (panic).

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
)

// outlierKind is what an ejection was detected by (Envoy's stat names).
type outlierKind uint8

const (
	odConsecutive5xx outlierKind = iota
	odConsecutiveGateway
	odConsecutiveLocal
	odSuccessRate
	odLocalSuccessRate
	odFailurePercentage
	odLocalFailurePercentage
	numOutlierKinds
)

var outlierKindNames = [numOutlierKinds]string{
	odConsecutive5xx:         "consecutive_5xx",
	odConsecutiveGateway:     "consecutive_gateway_failure",
	odConsecutiveLocal:       "consecutive_local_origin_failure",
	odSuccessRate:            "success_rate",
	odLocalSuccessRate:       "local_origin_success_rate",
	odFailurePercentage:      "failure_percentage",
	odLocalFailurePercentage: "failure_percentage_local_origin",
}

// outlierHost is one host's outlier state.
type outlierHost struct {
	ejected                               atomic.Bool
	consec5xx, consecGateway, consecLocal atomic.Uint32
	// Results in the current interval, externally originated (HTTP
	// statuses) and, in split mode, locally originated (connects,
	// resets, timeouts).
	extOK, extFail, localOK, localFail atomic.Uint64

	mu        sync.Mutex
	ejectedAt int64  // monoNow at ejection
	ejections uint32 // the ejection time multiplier
	kept      bool   // ejected in the current interval
}

// outlierDetector is a cluster's outlier detection. A rebuilt cluster with
// the same config keeps its detector (see newCluster).
type outlierDetector struct {
	cfg   config.OutlierDetection
	panic float64 // healthy panic threshold, percent

	mu        sync.Mutex // ejection decisions, so the max percentage holds
	lastSweep atomic.Int64
	// activeN is the number of hosts ejected, as of the last ejection or
	// sweep; Pick looks at ejections only when it is not zero.
	activeN atomic.Int64

	active                  *observe.Gauge
	enforcedTotal, overflow *observe.Counter
	detected, enforced      [numOutlierKinds]*observe.Counter
}

func newOutlierDetector(cfg config.OutlierDetection, panicThreshold *float64, sc *observe.Scope) *outlierDetector {
	d := &outlierDetector{cfg: cfg, panic: 50}
	if panicThreshold != nil {
		d.panic = *panicThreshold
	}
	d.active = sc.Gauge("outlier_detection.ejections_active")
	d.enforcedTotal = sc.Counter("outlier_detection.ejections_enforced_total")
	d.overflow = sc.Counter("outlier_detection.ejections_overflow")
	for k, name := range outlierKindNames {
		d.detected[k] = sc.Counter("outlier_detection.ejections_detected_" + name)
		d.enforced[k] = sc.Counter("outlier_detection.ejections_enforced_" + name)
	}
	d.lastSweep.Store(monoNow())
	return d
}

// sameOutlier reports whether a rebuilt cluster can keep prev's detector.
func sameOutlier(d *outlierDetector, cfg *config.OutlierDetection, panicThreshold *float64) bool {
	if d == nil || cfg == nil || d.cfg != *cfg {
		return false
	}
	p := 50.0
	if panicThreshold != nil {
		p = *panicThreshold
	}
	return d.panic == p
}

// Ejected reports whether outlier detection has ejected the host.
func (h *Host) Ejected() bool { return h.Stats.od.ejected.Load() }

// OutlierStatus feeds outlier detection with the status of a response
// from the host (an externally originated result).
func (h *Host) OutlierStatus(status int) {
	d := h.cluster.outlier
	if d == nil {
		return
	}
	o := &h.Stats.od
	if status < 500 {
		o.extOK.Add(1)
		if o.consec5xx.Load() != 0 {
			o.consec5xx.Store(0)
		}
		if o.consecGateway.Load() != 0 {
			o.consecGateway.Store(0)
		}
		return
	}
	o.extFail.Add(1)
	if n := o.consec5xx.Add(1); n == d.cfg.Consecutive5xx {
		d.eject(h, odConsecutive5xx, d.cfg.EnforcingConsecutive5xx)
	}
	if status == 502 || status == 503 || status == 504 {
		if n := o.consecGateway.Add(1); n == d.cfg.ConsecutiveGatewayFailure {
			d.eject(h, odConsecutiveGateway, d.cfg.EnforcingConsecutiveGatewayFailure)
		}
	} else if o.consecGateway.Load() != 0 {
		o.consecGateway.Store(0)
	}
}

// OutlierLocalFailure feeds outlier detection with a failure that did not
// come from the host's answer: a connect failure, a reset, a timeout.
// Unless the cluster splits them, they count as Envoy maps them: 504 for a
// timeout, 503 otherwise.
func (h *Host) OutlierLocalFailure(timeout bool) {
	d := h.cluster.outlier
	if d == nil {
		return
	}
	if !d.cfg.SplitExternalLocalOriginErrors {
		if timeout {
			h.OutlierStatus(504)
		} else {
			h.OutlierStatus(503)
		}
		return
	}
	o := &h.Stats.od
	o.localFail.Add(1)
	if n := o.consecLocal.Add(1); n == d.cfg.ConsecutiveLocalOriginFailure {
		d.eject(h, odConsecutiveLocal, d.cfg.EnforcingConsecutiveLocalOriginFailure)
	}
}

// outlierConnected counts a connection made to the host (a locally
// originated success, in split mode).
func (h *Host) outlierConnected() {
	d := h.cluster.outlier
	if d == nil || !d.cfg.SplitExternalLocalOriginErrors {
		return
	}
	o := &h.Stats.od
	o.localOK.Add(1)
	if o.consecLocal.Load() != 0 {
		o.consecLocal.Store(0)
	}
}

// eject ejects h when the enforcing percentage and the maximum ejection
// percentage allow.
func (d *outlierDetector) eject(h *Host, kind outlierKind, enforcing uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	o := &h.Stats.od
	if o.ejected.Load() {
		return
	}
	d.detected[kind].Inc()
	if enforcing == 0 || (enforcing < 100 && rand.Uint32N(100) >= enforcing) {
		return
	}
	hosts := h.cluster.Hosts()
	active := 0
	for _, x := range hosts {
		if x.Stats.od.ejected.Load() {
			active++
		}
	}
	if n := len(hosts); n == 0 || (float64(active+1)*100/float64(n) > float64(d.cfg.MaxEjectionPercent) &&
		!(d.cfg.AlwaysEjectOneHost && active == 0)) {
		d.overflow.Inc()
		return
	}
	o.mu.Lock()
	o.ejectedAt = monoNow()
	o.ejections++
	o.kept = true
	o.mu.Unlock()
	o.consec5xx.Store(0)
	o.consecGateway.Store(0)
	o.consecLocal.Store(0)
	o.ejected.Store(true)
	d.active.Set(int64(active + 1))
	d.activeN.Store(int64(active + 1))
	d.enforced[kind].Inc()
	d.enforcedTotal.Inc()
}

// sweepOutlier is the detector's interval pass over c's hosts: ejections
// that have lasted their time end, the interval's success rates and
// failure percentages eject, and the interval's counts start again.
func (c *Cluster) sweepOutlier(now int64) {
	d := c.outlier
	if d == nil || now-d.lastSweep.Load() < int64(d.cfg.Interval) {
		return
	}
	d.lastSweep.Store(now)
	base, maxTime := int64(d.cfg.BaseEjectionTime), int64(max(d.cfg.MaxEjectionTime, d.cfg.BaseEjectionTime))
	type sample struct {
		h                *Host
		ok, fail         uint64
		localOK, localFl uint64
	}
	hosts := c.Hosts()
	samples := make([]sample, 0, len(hosts))
	d.mu.Lock()
	active := 0
	for _, h := range hosts {
		o := &h.Stats.od
		o.mu.Lock()
		if o.ejected.Load() {
			if now-o.ejectedAt >= min(base*int64(o.ejections), maxTime) {
				o.ejected.Store(false)
			} else {
				active++
			}
		} else if !o.kept && o.ejections > 0 {
			o.ejections--
		}
		o.kept = false
		o.mu.Unlock()
		samples = append(samples, sample{h: h, ok: o.extOK.Swap(0), fail: o.extFail.Swap(0),
			localOK: o.localOK.Swap(0), localFl: o.localFail.Swap(0)})
	}
	d.active.Set(int64(active))
	d.activeN.Store(int64(active))
	d.mu.Unlock()

	cfg := &d.cfg
	volume := func(local bool, i int) uint64 {
		if local {
			return samples[i].localOK + samples[i].localFl
		}
		return samples[i].ok + samples[i].fail
	}
	for _, local := range []bool{false, true} {
		if local && !cfg.SplitExternalLocalOriginErrors {
			break
		}
		srKind, fpKind := odSuccessRate, odFailurePercentage
		srEnforce, fpEnforce := cfg.EnforcingSuccessRate, cfg.EnforcingFailurePercentage
		if local {
			srKind, fpKind = odLocalSuccessRate, odLocalFailurePercentage
			srEnforce, fpEnforce = cfg.EnforcingLocalOriginSuccessRate, cfg.EnforcingFailurePercentageLocalOrigin
		}
		// Hosts with enough requests this interval, by rule.
		var srHosts, fpHosts []*Host
		var srRates, fpRates []float64
		for i, s := range samples {
			total := volume(local, i)
			if total == 0 {
				continue
			}
			ok := s.ok
			if local {
				ok = s.localOK
			}
			rate := 100 * float64(ok) / float64(total)
			if total >= uint64(cfg.SuccessRateRequestVolume) {
				srHosts, srRates = append(srHosts, s.h), append(srRates, rate)
			}
			if total >= uint64(cfg.FailurePercentageRequestVolume) {
				fpHosts, fpRates = append(fpHosts, s.h), append(fpRates, rate)
			}
		}
		if len(srHosts) > 0 && len(srHosts) >= int(cfg.SuccessRateMinimumHosts) {
			mean, sd := meanStdev(srRates)
			threshold := mean - sd*float64(cfg.SuccessRateStdevFactor)/1000
			for i, h := range srHosts {
				if srRates[i] < threshold {
					d.eject(h, srKind, srEnforce)
				}
			}
		}
		if len(fpHosts) > 0 && len(fpHosts) >= int(cfg.FailurePercentageMinimumHosts) {
			for i, h := range fpHosts {
				if 100-fpRates[i] >= float64(cfg.FailurePercentageThreshold) {
					d.eject(h, fpKind, fpEnforce)
				}
			}
		}
	}
}

func meanStdev(v []float64) (mean, sd float64) {
	for _, x := range v {
		mean += x
	}
	mean /= float64(len(v))
	for _, x := range v {
		sd += (x - mean) * (x - mean)
	}
	return mean, math.Sqrt(sd / float64(len(v)))
}

// skipEjected reports whether Pick must skip ejected hosts: some are
// ejected, and enough hosts are left that the cluster is not in panic
// (under the threshold's percentage, ejections are ignored).
func (c *Cluster) skipEjected() bool {
	d := c.outlier
	if d == nil {
		return false
	}
	out := d.activeN.Load()
	if out == 0 {
		return false
	}
	if d.panic <= 0 {
		return true
	}
	n := int64(len(c.Hosts()))
	return float64(n-out)*100 >= d.panic*float64(n)
}

// outlierInterval is how often the reaper must run for c's detector.
func (c *Cluster) outlierInterval() time.Duration {
	if c.outlier == nil {
		return 0
	}
	return c.outlier.cfg.Interval
}
