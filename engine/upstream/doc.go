// Package upstream manages Sluice's upstream clusters: their hosts, load
// balancers, connection pools, circuit breakers and cluster statistics.
//
// A Manager turns config.Cluster values into an immutable Set at config
// time (Build) and makes it current atomically (Commit). Clusters whose
// config did not change are carried over as the same *Cluster, so their
// pools, load balancer state and breaker counts survive a reload. A cluster
// that disappears or changes is retired: its idle connections are closed or
// handed to the replacing cluster's host with the same address, and its busy
// connections follow when they are released.
//
// On the request path the proxy calls, per upstream try:
//
//	done, ok := c.TryStartRequest()        // max_requests breaker
//	h := c.Pick(&lbctx)                    // load balancer
//	conn, err := h.Acquire(ctx)            // pool, max_connections, max_pending
//	h.RequestStarted()
//	... exchange on conn.ClientConn() ...
//	h.RequestDone()
//	conn.Release(conn.ClientConn().Reusable())
//	done()
//	c.RecordResponse(status, elapsed)
//
// Nothing on that path allocates, takes a global lock or builds a map;
// load balancer tables are built once, at Build, or when a DNS answer
// changes a cluster's hosts: a cluster's hosts and balancer are one
// immutable value behind an atomic pointer, replaced whole.
//
// STRICT_DNS and LOGICAL_DNS clusters resolve their endpoints' names with
// a Resolver (SetResolver; net.DefaultResolver by default): once at Build
// (bounded by SetDNSWarmup), then on their refresh schedule by goroutines
// that run while the cluster is current and stop when it is retired. See
// dns.go.
package upstream
