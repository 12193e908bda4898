package upstream

import (
	"sync/atomic"

	"github.com/sluice-proxy/sluice/engine/observe"
)

// resource is one circuit breaker threshold: a count with a limit and the
// *_open gauge that reads 1 while the count is at the limit (Envoy's
// semantics). Counts are per *Cluster.
type resource struct {
	count atomic.Int64
	max   int64
	open  *observe.Gauge
}

// tryInc takes one unit if the count is below limit.
func (r *resource) tryInc(limit int64) bool {
	for {
		n := r.count.Load()
		if n >= limit {
			r.syncOpen(limit)
			return false
		}
		if r.count.CompareAndSwap(n, n+1) {
			if n+1 >= limit {
				r.syncOpen(limit)
			}
			return true
		}
	}
}

// forceInc takes one unit even over the limit.
func (r *resource) forceInc() {
	if r.count.Add(1) >= r.max {
		r.syncOpen(r.max)
	}
}

// dec returns one unit.
func (r *resource) dec(limit int64) {
	if r.count.Add(-1)+1 >= limit {
		r.syncOpen(limit)
	}
}

// syncOpen sets the open gauge from the count. It only writes on a change,
// so the shared gauge is read-mostly; under races it may lag one update.
func (r *resource) syncOpen(limit int64) {
	var want int64
	if r.count.Load() >= limit {
		want = 1
	}
	if r.open.Value() != want {
		r.open.Set(want)
	}
}

// TryStartRequest applies max_requests to one upstream request (each try
// counts). On success it increments upstream_rq_active and returns done,
// which the caller must call exactly once when the request ends. On
// overflow it counts upstream_rq_pending_overflow (as Envoy does) and
// returns ok false.
func (c *Cluster) TryStartRequest() (done func(), ok bool) {
	if !c.rq.tryInc(c.rq.max) {
		c.Stats.RqPendingOverflow.Inc()
		return nil, false
	}
	c.Stats.RqActive.Inc()
	return c.requestDone, true
}

func (c *Cluster) endRequest() {
	c.rq.dec(c.rq.max)
	c.Stats.RqActive.Dec()
}

// TryStartRetry applies max_retries, or the retry budget when one is set
// (budget_percent of active plus pending requests, never below
// min_retry_concurrency), to one retry. On success it counts
// upstream_rq_retry and returns done, to call exactly once when the retry
// ends. On overflow it counts upstream_rq_retry_overflow.
func (c *Cluster) TryStartRetry() (done func(), ok bool) {
	if !c.retries.tryInc(c.retryLimit()) {
		c.Stats.RqRetryOverflow.Inc()
		return nil, false
	}
	c.Stats.RqRetry.Inc()
	return c.retryDone, true
}

func (c *Cluster) endRetry() { c.retries.dec(c.retryLimit()) }

func (c *Cluster) retryLimit() int64 {
	if c.budgetPercent <= 0 {
		return c.retries.max
	}
	n := int64(c.budgetPercent / 100 * float64(c.rq.count.Load()+c.pending.count.Load()))
	if n < c.minRetryConcurrency {
		n = c.minRetryConcurrency
	}
	return n
}

// Limits reports the cluster's effective circuit breaker thresholds, with
// defaults applied (MaxRetries is the static limit; see TryStartRetry).
func (c *Cluster) Limits() (maxConnections, maxPending, maxRequests, maxRetries int) {
	return int(c.cx.max), int(c.pending.max), int(c.rq.max), int(c.retries.max)
}
