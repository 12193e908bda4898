package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
)

// The xDS client keeps one ADS stream to the control plane and turns what
// arrives into whole snapshots for the engine. Everything it knows is owned
// by the goroutine running Run, so the protocol logic has no locks: stream
// goroutines only receive and hand messages over, and State reads a copy
// published under a mutex.
//
// The protocol, in both variants, is Envoy's: one subscription per type,
// wildcard for listeners and clusters, by name for the rest (the names
// the accepted listeners and clusters refer to). A response is applied as
// a whole or not at all: on success the client ACKs it, on failure it
// NACKs with the error and keeps the previous resources, which keep
// serving. The same error twice in a row for a type is NACKed after a
// growing delay: a state-of-the-world server answers a NACK by resending
// what it has, and the two would otherwise loop as fast as they can.

// Reconnect and repeated-NACK delays.
const (
	defaultMinBackoff = 250 * time.Millisecond
	defaultMaxBackoff = 30 * time.Second
	nackMinDelay      = time.Second
	nackMaxDelay      = 30 * time.Second
)

var (
	// Ignored: the xDS client has its own request pacing (its NACK
	// delay) and no REST polling.
	apiConfigSourceFields = knownFields(&corev3.ApiConfigSource{}, "api_type", "transport_api_version", "grpc_services",
		"set_node_on_first_message_only", "rate_limit_settings", "refresh_delay", "request_timeout")
	dynamicResourcesFields = knownFields(&bootstrapv3.Bootstrap_DynamicResources{}, "lds_config", "cds_config", "ads_config")
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// Bootstrap is the decoded Envoy bootstrap (DecodeBootstrap). Its
	// dynamic_resources.ads_config says how to reach the control plane,
	// node says who is asking, and static_resources are served alongside
	// the dynamic resources.
	Bootstrap *bootstrapv3.Bootstrap
	// Apply installs a snapshot as a whole or not at all
	// (engine/server.Server.Apply). It is only called from Run's
	// goroutine. An error NACKs the response that led to the snapshot.
	Apply func(*config.Snapshot) error
	// Logger receives connection and NACK events; nil: slog.Default().
	Logger *slog.Logger
	// Source names the bootstrap (a file name) in snapshots' Source.
	Source string
	// UserAgentVersion is sent as the node's user_agent_version.
	UserAgentVersion string
	// DialOptions are added after the options the bootstrap implies (a
	// custom dialer in tests, say).
	DialOptions []grpc.DialOption
	// Stats, when set, receives Envoy's update counters
	// (listener_manager.lds.update_success/update_rejected,
	// cluster_manager.cds.*; xds.<rds|eds|sds|ecds>.* for the others) and
	// the control_plane.connected_state gauge, which Istio's pilot-agent
	// reads.
	Stats *observe.Store
	// MinBackoff and MaxBackoff bound the delay between reconnection
	// attempts, which doubles from one to the other with jitter; zero
	// means 250 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
}

// Client is an ADS client. Create it with NewClient and run it with Run.
type Client struct {
	opts      ClientOptions
	log       *slog.Logger
	as        *assembler
	cp        *controlPlane
	node      *corev3.Node
	delta     bool
	nodeOnce  bool
	subscribe [numTypes]bool // wildcard types the bootstrap asks for
	running   atomic.Bool

	minBackoff, maxBackoff time.Duration

	// staticClusters are the bootstrap's, where SDS servers are found;
	// sds are the streams to them and sdsErrors why one could not start
	// (adssds.go). Owned by Run's goroutine.
	staticClusters []*clusterv3.Cluster
	sds            map[string]*sdsStream
	sdsErrors      map[string]string

	// Owned by Run's goroutine.
	st    *store
	last  *assembly // of the snapshot last applied
	since [numTypes]map[string]time.Time
	types [numTypes]typeStatus

	updates   [numTypes]struct{ ok, bad *observe.Counter }
	connected *observe.Gauge

	mu    sync.Mutex
	state ClientState
	// dumped is the store of the snapshot last applied and when each of
	// its resources changed, for /config_dump (stores are immutable).
	dumped  *store
	updated [numTypes]map[string]time.Time
}

// typeStatus is what the client remembers of a type across streams.
type typeStatus struct {
	nackRepeats
}

// nackRepeats tells a new rejection from a repeated one. A server may
// answer a NACK by resending what was NACKed (go-control-plane's state of
// the world cache does): the same error again is NACKed after a doubling
// delay, so the two do not loop as fast as they can.
type nackRepeats struct {
	lastError string
	repeats   int // how many times in a row lastError was NACKed again
}

// rejected records err and returns how long to hold its NACK back (0 the
// first time) and whether the error is new.
func (n *nackRepeats) rejected(err error) (time.Duration, bool) {
	if msg := err.Error(); msg == n.lastError {
		n.repeats++
	} else {
		n.lastError, n.repeats = msg, 0
		return 0, true
	}
	return min(nackMinDelay<<min(n.repeats-1, 10), nackMaxDelay), false
}

// ClientState is a copy of what the client knows, for logs, /config_dump
// and tests.
type ClientState struct {
	Target    string
	Delta     bool
	Connected bool
	// LastError is the last connection or apply error, "" when the last
	// attempt succeeded.
	LastError string
	// Applied is the Version of the last snapshot applied.
	Applied string
	Types   []TypeState
	// Warming says which listeners and clusters wait for what.
	Warming []string
}

// TypeState is the state of one resource type.
type TypeState struct {
	TypeURL string
	// Version is the accepted version ("" before any).
	Version string
	// Nonce is the nonce of the last response on the current stream.
	Nonce string
	// Resources are the names of the accepted resources.
	Resources []string
	// LastError is the message of the last NACK, "" after an ACK.
	LastError string
}

// NewClient checks a bootstrap for the xDS client: dynamic_resources with
// an ads_config of api_type GRPC (state of the world) or DELTA_GRPC,
// lds_config and cds_config (when set) over ADS, and static resources
// that translate. It does not connect; Run does.
func NewClient(opts ClientOptions) (*Client, error) {
	c, err := newClient(opts)
	return c, prefixed(err)
}

func newClient(opts ClientOptions) (*Client, error) {
	b := opts.Bootstrap
	if b == nil {
		return nil, errors.New("no bootstrap")
	}
	if opts.Apply == nil {
		return nil, errors.New("no Apply function")
	}
	if err := validateMsg(b); err != nil {
		return nil, err
	}
	if err := checkBootstrap(b); err != nil {
		return nil, err
	}
	c := &Client{opts: opts, log: opts.Logger, st: &store{}}
	if c.log == nil {
		c.log = slog.Default()
	}
	dr := b.GetDynamicResources()
	if dr.GetAdsConfig() == nil {
		return nil, errors.New("dynamic_resources.ads_config is required")
	}
	if err := dynamicResourcesFields.check(dr); err != nil {
		return nil, inField(err, "dynamic_resources")
	}
	for _, s := range []struct {
		cs    *corev3.ConfigSource
		field string
		t     rtype
	}{{dr.GetLdsConfig(), "lds_config", tListener}, {dr.GetCdsConfig(), "cds_config", tCluster}} {
		if s.cs == nil {
			continue
		}
		if _, err := adsSource(s.cs); err != nil {
			return nil, inField(inField(err, s.field), "dynamic_resources")
		}
		c.subscribe[s.t] = true
	}
	ads := dr.GetAdsConfig()
	if err := apiConfigSourceFields.check(ads); err != nil {
		return nil, inField(err, "dynamic_resources.ads_config")
	}
	switch t := ads.GetApiType(); t {
	case corev3.ApiConfigSource_GRPC:
	case corev3.ApiConfigSource_DELTA_GRPC:
		c.delta = true
	default:
		return nil, inField(unsupportedValue("api_type", t), "dynamic_resources.ads_config")
	}
	if v := ads.GetTransportApiVersion(); v != corev3.ApiVersion_AUTO && v != corev3.ApiVersion_V3 {
		return nil, inField(unsupportedValue("transport_api_version", v), "dynamic_resources.ads_config")
	}
	if n := len(ads.GetGrpcServices()); n != 1 {
		return nil, inField(fmt.Errorf("exactly one grpc_services is required, not %d", n), "dynamic_resources.ads_config")
	}
	c.nodeOnce = ads.GetSetNodeOnFirstMessageOnly()
	sr := b.GetStaticResources()
	cp, err := controlPlaneOf(ads.GetGrpcServices()[0], sr.GetClusters())
	if err != nil {
		return nil, inField(err, "dynamic_resources.ads_config.grpc_services[0]")
	}
	cp.opts = append(cp.opts, opts.DialOptions...)
	c.cp = cp

	if err := staticResourcesFields.check(sr); err != nil {
		return nil, inField(err, "static_resources")
	}
	secrets, err := staticSecrets(sr.GetSecrets())
	if err != nil {
		return nil, inField(err, "static_resources")
	}
	c.staticClusters, c.sds, c.sdsErrors = sr.GetClusters(), map[string]*sdsStream{}, map[string]string{}
	c.as = &assembler{listeners: sr.GetListeners(), secrets: secrets, dynamicClusters: c.subscribe[tCluster],
		source: "ads " + cp.target, node: nodeOf(b.GetNode())}
	if opts.Source != "" {
		c.as.source = opts.Source + " + ads " + cp.target
	}
	// The control plane's cluster carries the ADS stream, not traffic:
	// the engine does not see it (Istio's xds-grpc is a unix pipe, which
	// the engine does not dial).
	adsCluster := ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()
	c.as.clusters = slices.DeleteFunc(slices.Clone(sr.GetClusters()), func(cl *clusterv3.Cluster) bool {
		return adsCluster != "" && cl.GetName() == adsCluster
	})
	if a := b.GetAdmin(); a != nil {
		if c.as.admin, err = translateAdmin(a); err != nil {
			return nil, inField(err, "admin")
		}
	}
	// The static part must translate now, not at Run.
	if _, err := c.as.assemble(c.view(c.st, time.Now()), nil); err != nil {
		return nil, err
	}

	c.node = proto.Clone(b.GetNode()).(*corev3.Node)
	if c.node == nil {
		c.node = &corev3.Node{}
	}
	c.node.UserAgentName = "sluice"
	c.node.UserAgentVersionType = &corev3.Node_UserAgentVersion{UserAgentVersion: opts.UserAgentVersion}
	c.minBackoff, c.maxBackoff = opts.MinBackoff, opts.MaxBackoff
	if c.minBackoff <= 0 {
		c.minBackoff = defaultMinBackoff
	}
	if c.maxBackoff <= 0 {
		c.maxBackoff = defaultMaxBackoff
	}
	c.maxBackoff = max(c.maxBackoff, c.minBackoff)
	c.state = ClientState{Target: cp.target, Delta: c.delta}
	if st := opts.Stats; st != nil {
		for t := range numTypes {
			prefix := "xds." + typeInfo[t].short + "."
			switch t {
			case tListener:
				prefix = "listener_manager.lds."
			case tCluster:
				prefix = "cluster_manager.cds."
			}
			sc := st.Scope(prefix, strings.ReplaceAll(prefix, ".", "_"))
			c.updates[t].ok, c.updates[t].bad = sc.Counter("update_success"), sc.Counter("update_rejected")
		}
		c.connected = st.Scope("control_plane.", "control_plane_").Gauge("connected_state")
		c.connected.Set(0)
	}
	return c, nil
}

// State returns a copy of the client's state. It is safe to call from any
// goroutine.
func (c *Client) State() ClientState {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.state
	s.Types = slices.Clone(s.Types)
	s.Warming = slices.Clone(s.Warming)
	return s
}

// Dump returns the dynamic resources of the snapshot last applied, for
// ConfigDump. It is safe to call from any goroutine.
func (c *Client) Dump() *DynamicDump {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := &DynamicDump{}
	st := c.dumped
	if st == nil {
		return d
	}
	lists := map[rtype]*[]DumpResource{tListener: &d.Listeners, tCluster: &d.Clusters, tRoute: &d.RouteConfigs,
		tSecret: &d.Secrets, tEndpoint: &d.Endpoints}
	for t, list := range lists {
		for _, name := range st.names(t) {
			e := st.res[t][name]
			*list = append(*list, DumpResource{Name: name, Version: e.version, Resource: e.msg, Updated: c.updated[t][name]})
		}
	}
	return d
}

// Run applies the static resources, then connects to the control plane and
// applies what it sends until ctx is done, reconnecting with backoff when
// the stream breaks; the last good config keeps serving meanwhile. It
// returns nil when ctx is done, or an error when the static resources do
// not apply. It may be called once.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xds: Run called twice")
	}
	if err := c.rebuild(time.Now()); err != nil {
		return fmt.Errorf("xds: static resources: %w", err)
	}
	events := make(chan event)
	var (
		wg      sync.WaitGroup
		s       *session
		gen     int
		backoff = c.minBackoff
	)
	defer wg.Wait()
	defer c.stopSDS()
	retry := time.NewTimer(0)
	defer retry.Stop()
	closeSession := func() {
		if s != nil {
			s.cancel()
			s = nil
		}
	}
	defer closeSession()
	// fail ends the session and schedules the next attempt.
	fail := func(err error) {
		if s.responded {
			backoff = c.minBackoff
		}
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, c.maxBackoff)
		c.log.Warn("xds: control plane stream ended", "target", c.cp.target, "err", err, "retry_in", d)
		c.setError(err.Error())
		closeSession()
		retry.Reset(d)
	}
	warm := time.NewTimer(time.Hour)
	defer warm.Stop()
	nack := time.NewTimer(time.Hour)
	defer nack.Stop()
	var failed time.Time // a deadline whose rebuild failed is not retried
	for {
		if c.last.deadline.Equal(failed) {
			c.arm(warm, time.Time{})
		} else {
			c.arm(warm, c.last.deadline)
		}
		c.arm(nack, c.nextSDSNack(s.nextNack()))
		c.syncSDS(ctx, events, &wg)
		c.publish(s)
		select {
		case <-ctx.Done():
			return nil
		case <-retry.C:
			gen++
			s = c.open(ctx, gen, events, &wg)
		case ev := <-events:
			if ev.sds != nil {
				c.onSDSEvent(ev)
				continue
			}
			if s == nil || ev.gen != s.gen {
				continue
			}
			switch {
			case ev.err != nil:
				fail(ev.err)
			case ev.opened:
				s.opened = true
				c.setError("")
				c.log.Info("xds: connected to the control plane", "target", c.cp.target, "delta", c.delta)
				c.sync(s)
			case ev.sotw != nil:
				s.responded = true
				c.onSotwResponse(s, ev.sotw)
			case ev.delta != nil:
				s.responded = true
				c.onDeltaResponse(s, ev.delta)
			}
		case <-warm.C:
			if err := c.rebuild(time.Now()); err != nil {
				failed = c.last.deadline
				c.log.Error("xds: applying after an initial fetch timeout", "err", err)
				c.setError(err.Error())
			}
			if s.ready() {
				c.sync(s)
			}
		case <-nack.C:
			c.sendDueSDSNacks(time.Now())
			if s.ready() {
				c.sendDueNacks(s, time.Now())
				c.sync(s)
			}
		}
		if s != nil && s.broken != nil {
			// A send failed: the stream is over (its goroutine's own
			// report is dropped once the session is closed).
			fail(s.broken)
		}
	}
}

// arm sets t to fire at deadline (never when zero).
func (c *Client) arm(t *time.Timer, deadline time.Time) {
	t.Stop()
	if !deadline.IsZero() {
		t.Reset(max(time.Until(deadline), 0))
	}
}

func (c *Client) view(st *store, now time.Time) *view {
	return &view{st: st, now: now, since: func(t rtype, name string) time.Time {
		if s, ok := c.since[t][name]; ok {
			return s
		}
		return now
	}}
}

// assemble builds the snapshot of st. A panic in translation (a bug, but
// one a control plane could trigger remotely) is turned into an error, so
// the update is NACKed and the proxy keeps serving.
func (c *Client) assemble(st *store, now time.Time) (a *assembly, err error) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("xds: panic while translating", "panic", r, "stack", string(debug.Stack()))
			a, err = nil, fmt.Errorf("xds: internal error while translating: %v", r)
		}
	}()
	a, err = c.as.assemble(c.view(st, now), c.last)
	return a, prefixed(err)
}

// rebuild assembles and applies the current store again (at start, and
// when an initial fetch timeout passes).
func (c *Client) rebuild(now time.Time) error {
	a, err := c.assemble(c.st, now)
	if err != nil {
		return err
	}
	if err := c.opts.Apply(a.snap); err != nil {
		return err
	}
	c.commit(c.st, a, now)
	return nil
}

// maxSetAside bounds how many resources of one response are set aside
// before the whole response is refused.
const maxSetAside = 64

// partialError is handle's error when some resources of a response were
// set aside and the rest applied: the response is NACKed all the same.
type partialError struct{ err error }

func (e *partialError) Error() string { return e.err.Error() }
func (e *partialError) Unwrap() error { return e.err }

// handle applies one response's update: the candidate store is assembled
// and applied; only when that succeeds does it become the store.
//
// As Envoy, the good resources of a partly bad response are applied: when
// the error is blamed on one resource this response changed (see blame,
// config.ResourceError), that resource goes back to its previous version
// (or away, if it is new), the rest is assembled again, and the response
// is NACKed naming what was set aside. The type's version stays the last
// one wholly accepted. An error in a resource this response did not
// change, in a static one, or in one already set aside refuses the whole
// response, as before.
func (c *Client) handle(u update) error {
	now := time.Now()
	cand, changed := c.st.apply(u, c.last.subs[u.typ])
	if !changed {
		// A resend: nothing to apply, but the version is accepted.
		c.st = cand
		return nil
	}
	var aside []error
	reverted := map[resourceRef]bool{}
	for {
		a, err := c.assemble(cand, now)
		if err == nil {
			if err = c.opts.Apply(a.snap); err == nil {
				if len(aside) == 0 {
					c.commit(cand, a, now)
					return nil
				}
				cand.version[u.typ] = c.st.version[u.typ]
				c.commit(cand, a, now)
				c.log.Warn("xds: applied an update without the resources it rejects", "type", typeInfo[u.typ].short, "rejected", len(aside))
				return &partialError{errors.Join(aside...)}
			}
			// The engine's error names the resource; the snapshot's version
			// stays out so a repeated rejection reads the same (see rejected).
			err = fmt.Errorf("xds: apply: %w", err)
		}
		r, ok := culprit(err)
		if !ok || reverted[r] || len(aside) >= maxSetAside {
			return err
		}
		if e := cand.get(r.typ, r.name); e == nil || e == c.st.get(r.typ, r.name) {
			return err
		}
		reverted[r] = true
		aside = append(aside, err)
		cand = cand.revert(r, c.st)
		if cand.sameResources(c.st) {
			// Nothing good was left: a plain NACK, nothing to apply.
			return errors.Join(aside...)
		}
	}
}

// commit makes an applied assembly and its store current, and follows its
// subscriptions: names no longer referred to are dropped from the store.
func (c *Client) commit(st *store, a *assembly, now time.Time) {
	c.last = a
	c.st = st.prune(&a.subs)
	for t := range numTypes {
		if c.since[t] == nil {
			c.since[t] = map[string]time.Time{}
		}
		for name := range a.subs[t] {
			if _, ok := c.since[t][name]; !ok {
				c.since[t][name] = now
			}
		}
		for name := range c.since[t] {
			if !a.subs[t][name] {
				delete(c.since[t], name)
			}
		}
	}
	c.mu.Lock()
	prev := c.dumped
	for t := range numTypes {
		next := map[string]time.Time{}
		for name, e := range c.st.res[t] {
			if prev != nil && prev.res[t][name] == e {
				next[name] = c.updated[t][name]
			} else {
				next[name] = now
			}
		}
		c.updated[t] = next
	}
	c.dumped = c.st
	c.state.Applied = a.snap.Version
	c.state.Warming = a.warming
	c.state.LastError = ""
	c.mu.Unlock()
}

// accepted records an ACK of type t.
func (c *Client) accepted(t rtype) {
	c.types[t] = typeStatus{}
	if u := c.updates[t]; u.ok != nil {
		u.ok.Inc()
	}
}

// rejected records a NACK of type t and returns how long to wait before
// sending it: at once the first time, then a doubling delay while the
// same error repeats.
func (c *Client) rejected(t rtype, err error) time.Duration {
	if u := c.updates[t]; u.bad != nil {
		u.bad.Inc()
	}
	delay, fresh := c.types[t].rejected(err)
	if fresh {
		c.log.Warn("xds: rejected an update", "type", typeInfo[t].short, "err", err.Error())
	}
	return delay
}

func errorDetail(err error) *statuspb.Status {
	return &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
}

func (c *Client) setError(msg string) {
	c.mu.Lock()
	c.state.LastError = msg
	c.mu.Unlock()
}

// publish copies the protocol state for State.
func (c *Client) publish(s *session) {
	types := make([]TypeState, 0, numTypes)
	for t := range numTypes {
		if !c.st.received[t] && c.types[t].lastError == "" && (s == nil || s.sent[t] == nil) {
			continue
		}
		ts := TypeState{TypeURL: typeInfo[t].url, Version: c.st.version[t], Resources: c.st.names(t), LastError: c.types[t].lastError}
		if s != nil {
			ts.Nonce = s.nonce[t]
		}
		types = append(types, ts)
	}
	c.mu.Lock()
	c.state.Connected = s.ready()
	if c.connected != nil {
		connected := int64(0)
		if c.state.Connected {
			connected = 1
		}
		c.connected.Set(connected)
	}
	c.state.Types = types
	c.mu.Unlock()
}
