package upstream

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/observe"
)

// ClusterStats are a cluster's statistics with Envoy's names, under
// "cluster.<name>." (Prometheus: envoy_cluster_*{envoy_cluster_name=...}).
// They live in the observe.Store, so a cluster rebuilt under the same name
// keeps counting into the same metrics.
//
// The pool maintains the upstream_cx_* ones and the pending ones;
// TryStartRequest / TryStartRetry maintain RqActive, RqRetry, the
// overflow counters and the circuit breaker gauges; RecordResponse the
// per-class counters and RqTime. RqTotal, RqTimeout and RqPerTryTimeout are
// the proxy's to increment.
type ClusterStats struct {
	CxTotal          *observe.Counter // upstream_cx_total: connections opened (attempted)
	CxActive         *observe.Gauge   // upstream_cx_active
	CxConnectFail    *observe.Counter // upstream_cx_connect_fail (timeouts included)
	CxConnectTimeout *observe.Counter // upstream_cx_connect_timeout
	CxDestroy        *observe.Counter // upstream_cx_destroy: connections closed (failed dials included)
	CxOverflow       *observe.Counter // upstream_cx_overflow: max_connections reached
	CxIdleTimeout    *observe.Counter // upstream_cx_idle_timeout
	CxMaxRequests    *observe.Counter // upstream_cx_max_requests

	RqTotal                           *observe.Counter   // upstream_rq_total (proxy)
	RqActive                          *observe.Gauge     // upstream_rq_active (TryStartRequest)
	RqPendingTotal                    *observe.Counter   // upstream_rq_pending_total: requests that waited for a connection
	RqPendingActive                   *observe.Gauge     // upstream_rq_pending_active
	RqPendingOverflow                 *observe.Counter   // upstream_rq_pending_overflow: max_pending_requests or max_requests reached
	RqRetry                           *observe.Counter   // upstream_rq_retry (TryStartRetry)
	RqRetryOverflow                   *observe.Counter   // upstream_rq_retry_overflow
	RqTimeout                         *observe.Counter   // upstream_rq_timeout (proxy)
	RqPerTryTimeout                   *observe.Counter   // upstream_rq_per_try_timeout (proxy)
	Rq1xx, Rq2xx, Rq3xx, Rq4xx, Rq5xx *observe.Counter   // upstream_rq_<n>xx (RecordResponse)
	RqTime                            *observe.Histogram // upstream_rq_time, ms (RecordResponse)

	CxOpen        *observe.Gauge // circuit_breakers.default.cx_open
	RqPendingOpen *observe.Gauge // circuit_breakers.default.rq_pending_open
	RqOpen        *observe.Gauge // circuit_breakers.default.rq_open
	RqRetryOpen   *observe.Gauge // circuit_breakers.default.rq_retry_open

	MembershipTotal   *observe.Gauge   // membership_total
	MembershipHealthy *observe.Gauge   // membership_healthy
	LBHealthyPanic    *observe.Counter // lb_healthy_panic: picks made in panic mode

	// DNS clusters only (nil otherwise): one count per lookup of a name.
	UpdateAttempt *observe.Counter // update_attempt
	UpdateSuccess *observe.Counter // update_success
	UpdateFailure *observe.Counter // update_failure

	scope *observe.Scope
	codes [500]atomic.Pointer[observe.Counter] // upstream_rq_<code>, 100..599, created on first use
}

func newClusterStats(store *observe.Store, name string) ClusterStats {
	sc := store.Scope("cluster."+name+".", "cluster_", observe.Label{Name: "envoy_cluster_name", Value: name})
	return ClusterStats{
		CxTotal:          sc.Counter("upstream_cx_total"),
		CxActive:         sc.Gauge("upstream_cx_active"),
		CxConnectFail:    sc.Counter("upstream_cx_connect_fail"),
		CxConnectTimeout: sc.Counter("upstream_cx_connect_timeout"),
		CxDestroy:        sc.Counter("upstream_cx_destroy"),
		CxOverflow:       sc.Counter("upstream_cx_overflow"),
		CxIdleTimeout:    sc.Counter("upstream_cx_idle_timeout"),
		CxMaxRequests:    sc.Counter("upstream_cx_max_requests"),

		RqTotal:           sc.Counter("upstream_rq_total"),
		RqActive:          sc.Gauge("upstream_rq_active"),
		RqPendingTotal:    sc.Counter("upstream_rq_pending_total"),
		RqPendingActive:   sc.Gauge("upstream_rq_pending_active"),
		RqPendingOverflow: sc.Counter("upstream_rq_pending_overflow"),
		RqRetry:           sc.Counter("upstream_rq_retry"),
		RqRetryOverflow:   sc.Counter("upstream_rq_retry_overflow"),
		RqTimeout:         sc.Counter("upstream_rq_timeout"),
		RqPerTryTimeout:   sc.Counter("upstream_rq_per_try_timeout"),
		Rq1xx:             sc.Counter("upstream_rq_1xx"),
		Rq2xx:             sc.Counter("upstream_rq_2xx"),
		Rq3xx:             sc.Counter("upstream_rq_3xx"),
		Rq4xx:             sc.Counter("upstream_rq_4xx"),
		Rq5xx:             sc.Counter("upstream_rq_5xx"),
		RqTime:            sc.Histogram("upstream_rq_time"),

		CxOpen:        sc.Gauge("circuit_breakers.default.cx_open"),
		RqPendingOpen: sc.Gauge("circuit_breakers.default.rq_pending_open"),
		RqOpen:        sc.Gauge("circuit_breakers.default.rq_open"),
		RqRetryOpen:   sc.Gauge("circuit_breakers.default.rq_retry_open"),

		MembershipTotal:   sc.Gauge("membership_total"),
		MembershipHealthy: sc.Gauge("membership_healthy"),
		LBHealthyPanic:    sc.Counter("lb_healthy_panic"),

		scope: sc,
	}
}

// RecordResponse counts one upstream response: upstream_rq_<class>xx,
// upstream_rq_<code> and the upstream_rq_time histogram (d < 0 skips it).
func (c *Cluster) RecordResponse(code int, d time.Duration) {
	s := &c.Stats
	switch code / 100 {
	case 1:
		s.Rq1xx.Inc()
	case 2:
		s.Rq2xx.Inc()
	case 3:
		s.Rq3xx.Inc()
	case 4:
		s.Rq4xx.Inc()
	case 5:
		s.Rq5xx.Inc()
	}
	if code >= 100 && code < 600 {
		p := &s.codes[code-100]
		ctr := p.Load()
		if ctr == nil {
			ctr = s.scope.Counter("upstream_rq_" + strconv.Itoa(code))
			p.Store(ctr)
		}
		ctr.Inc()
	}
	if d >= 0 {
		s.RqTime.Record(float64(d) / float64(time.Millisecond))
	}
}

// HostStats are one host's counters, kept in memory for /clusters. A host
// that keeps its address across a cluster rebuild keeps its HostStats
// (the same pointer), active counts included.
type HostStats struct {
	CxActive      atomic.Int64  // cx_active
	CxTotal       atomic.Uint64 // cx_total
	CxConnectFail atomic.Uint64 // cx_connect_fail
	RqActive      atomic.Int64  // rq_active (RequestStarted / RequestDone)
	RqTotal       atomic.Uint64 // rq_total (RequestStarted)
	RqError       atomic.Uint64 // rq_error (proxy: 5xx or reset)
	RqSuccess     atomic.Uint64 // rq_success (proxy)
	RqTimeout     atomic.Uint64 // rq_timeout (proxy)

	od outlierHost // outlier detection's counts and ejection
}
