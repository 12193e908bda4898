package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy/route"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/upstream"
)

// Response flags, Envoy's %RESPONSE_FLAGS% short codes.
const (
	flagNoRoute uint32 = 1 << iota
	flagNoCluster
	flagNoHealthyUpstream
	flagUpstreamConnectFailure
	flagUpstreamOverflow
	flagUpstreamRetryLimit
	flagUpstreamTimeout
	flagUpstreamReset
	flagDownstreamTerminated
	flagLocalReset
	flagDownstreamProtocolError
	flagFilterError
)

var flagCodes = [...]string{"NR", "NC", "UH", "UF", "UO", "URX", "UT", "UC", "DC", "LR", "DPE", "FE"}

var streamIDs atomic.Uint64

// localReply is a reply the proxy or a filter decided to send.
type localReply struct {
	status  int
	body    string
	headers []header.Field
	details string
}

// activeStream is one request/response exchange with its filters. It is
// pooled per connection manager and reused across requests.
type activeStream struct {
	cm    *ConnectionManager
	ss    stream.ServerStream
	id    uint64
	start time.Time

	req       *header.Map
	resp      header.Map
	respTrail header.Map
	reqID     string

	route     *route.Route
	routeDirt bool
	routeErr  bool // a route condition failed to evaluate
	cluster   *upstream.Cluster
	wc        *config.WeightedCluster
	host      *upstream.Host

	filters   []stream.Filter
	callbacks []filterCallbacks
	reached   int // filters whose request headers callback has run

	resume   chan struct{}
	reply    atomic.Pointer[localReply] // sent by a filter, maybe from another goroutine
	done     atomic.Bool                // the stream ended: late filter calls are ignored
	async    bool                       // a filter may still hold the stream: do not pool it
	pending  *localReply
	replied  bool // a local reply was decided
	headSent bool
	code     int
	flags    uint32
	details  string

	reqBytes, respBytes int64
	firstByte           time.Duration
	attempts            int

	ctx    context.Context
	cancel context.CancelFunc

	// up carries a downstream reset to the upstream exchange (HTTP/2
	// downstreams only); downH2 and grpc describe the request.
	up     *upstreamLink
	downH2 bool
	grpc   bool
	// duplex is set while the request body moves on its own goroutine
	// (HTTP/2 upstreams: bidirectional streaming); fmu then serialises
	// filter callbacks.
	duplex bool
	fmu    sync.Mutex

	dynMeta, filterState *stream.Metadata // made on first use

	// Per-stream working state kept here, not on the stack, because it is
	// reached through pointers the compiler cannot prove stay local.
	reqPhase phase
	ex       exchange
	lb       upstream.LBContext

	scratch []byte
}

func newActiveStream() *activeStream {
	return &activeStream{resume: make(chan struct{}, 1)}
}

func (s *activeStream) init(cm *ConnectionManager, ss stream.ServerStream) {
	s.cm = cm
	s.ss = ss
	s.id = streamIDs.Add(1)
	s.start = time.Now()
	s.req = ss.RequestHeaders()
	if rn, ok := ss.(stream.ResetNotifier); ok {
		s.up = &upstreamLink{}
		rn.NotifyReset(s.up.onReset)
		s.downH2 = ss.Protocol() == "HTTP/2"
	}
	s.grpc = IsGRPC(s.req)
	n := len(cm.filters)
	if cap(s.filters) < n {
		s.filters = make([]stream.Filter, n)
		s.callbacks = make([]filterCallbacks, n)
	}
	s.filters = s.filters[:n]
	s.callbacks = s.callbacks[:n]
	for i := range s.callbacks {
		s.callbacks[i] = filterCallbacks{activeStream: s, idx: i}
	}
}

func (s *activeStream) reset() {
	clear(s.filters)
	r := s.resume
	scratch := s.scratch[:0]
	resp, trail := s.resp, s.respTrail
	resp.Reset()
	trail.Reset()
	filters, callbacks := s.filters[:0], s.callbacks[:0]
	*s = activeStream{resume: r, scratch: scratch, resp: resp, respTrail: trail, filters: filters, callbacks: callbacks}
	select {
	case <-r:
	default:
	}
}

// serve runs the whole exchange.
func (s *activeStream) serve() {
	cm := s.cm
	cm.stats.rqActive.Inc()
	defer cm.stats.rqActive.Dec()

	s.prepareRequest()
	s.matchRoute()

	p := &s.reqPhase
	*p = phase{s: s, dir: dirRequest, n: len(s.filters), end: !s.ss.HasBody(), src: s.ss.Body()}
	defer p.release()
	if !p.headers(s.req) {
		s.finishLocal(p.stoppedAt)
		return
	}
	if s.routeDirt {
		s.refreshRoute()
	}
	if s.routeErr {
		s.sendLocal(500, "route condition failed\n", "route_condition_error")
		s.finishLocal(s.reached)
		return
	}
	if s.route == nil {
		s.flags |= flagNoRoute
		cm.stats.noRoute.Inc()
		s.sendLocal(404, "", "route_not_found")
		s.finishLocal(s.reached)
		return
	}
	rc := s.route.Config
	switch {
	case rc.DirectResponse != nil:
		s.directResponse(rc.DirectResponse)
		return
	case rc.Redirect != nil:
		code, loc := s.route.RedirectLocation(s.req)
		s.pending = &localReply{status: code, headers: []header.Field{{Name: "location", Value: loc}}, details: "redirect"}
		s.replied = true
		s.finishLocal(s.reached)
		return
	}
	s.forward(p)
}

// prepareRequest applies the connection manager's request rules: hop-by-hop
// headers, x-forwarded-for/-proto and x-request-id.
func (s *activeStream) prepareRequest() {
	cfg := s.cm.cfg
	h := s.req
	stripHopByHop(h, isUpgrade(h))
	h.Del("expect") // the codec answered 100-continue itself
	if p := h.Value(":path"); len(p) > 0 && p[0] != '/' && p != "*" {
		h.Set(":path", originForm(p))
	}
	if cfg.UseRemoteAddress && !cfg.SkipXFFAppend {
		remote := s.ss.Conn().Remote
		if remote.IsValid() {
			b := s.scratch[:0]
			if v, ok := h.Get("x-forwarded-for"); ok {
				b = append(b, v...)
				b = append(b, ", "...)
			}
			b = appendAddr(b, remote)
			h.Set("x-forwarded-for", string(b))
			s.scratch = b
		}
	}
	scheme := s.req.Value(":scheme")
	if cfg.UseRemoteAddress || !h.Has("x-forwarded-proto") {
		h.Set("x-forwarded-proto", scheme)
	}
	if cfg.GenerateRequestID {
		id, ok := h.Get("x-request-id")
		if !ok || id == "" || (cfg.UseRemoteAddress && !cfg.PreserveExternalRequestID) {
			id = newRequestID()
			h.Set("x-request-id", id)
		}
		s.reqID = id
	} else {
		s.reqID = h.Value("x-request-id")
	}
}

// originForm turns an absolute-form request target ("http://h/p?q", sent
// to proxies) into the origin form ("/p?q") that routes match; the codec
// already took :authority from it.
func originForm(target string) string {
	i := strings.Index(target, "://")
	if i < 0 {
		return target
	}
	rest := target[i+3:]
	j := strings.IndexAny(rest, "/?")
	switch {
	case j < 0:
		return "/"
	case rest[j] == '?':
		return "/" + rest[j:]
	}
	return rest[j:]
}

func (s *activeStream) refreshRoute() {
	s.routeDirt = false
	s.matchRoute()
}

// matchRoute picks the route. A route condition that fails to evaluate
// fails the request (it must not silently fall through to another route).
func (s *activeStream) matchRoute() {
	r, err := s.cm.table.MatchSource(s)
	s.routeErr = err != nil
	if err != nil {
		s.cm.log.Error("route condition failed", "err", err, "stream", s.id)
		s.flags |= flagFilterError
	}
	s.route = r
}

func (s *activeStream) directResponse(d *config.DirectResponse) {
	s.pending = &localReply{status: d.Status, body: d.Body, details: "direct_response"}
	s.replied = true
	s.finishLocal(s.reached)
}

// sendLocal records a local reply decided by the proxy itself.
func (s *activeStream) sendLocal(status int, body, details string) {
	if body == "" {
		body = defaultBody(status, details)
	}
	s.pending = &localReply{status: status, body: body, details: details}
	s.replied = true
}

func defaultBody(status int, details string) string {
	switch details {
	case "route_not_found":
		return ""
	case "":
		return ""
	}
	return details + "\n"
}

// finishLocal writes the pending local reply through the response filters
// of the first n filters, in reverse order.
func (s *activeStream) finishLocal(n int) {
	lr := s.pending
	if lr == nil {
		// A filter stopped the chain without replying: that is a filter bug.
		s.flags |= flagFilterError
		s.cm.stats.filterError.Inc()
		lr = &localReply{status: 500, body: "filter stopped the request without a reply\n", details: "filter_error"}
	}
	s.cm.stats.localReply.Inc()
	if s.headSent {
		s.ss.Reset()
		s.flags |= flagLocalReset
		return
	}
	s.details = lr.details
	h := &s.resp
	h.Reset()
	h.Add(":status", strconv.Itoa(lr.status))
	for _, f := range lr.headers {
		h.Add(f.Name, f.Value)
	}
	if lr.body != "" && !h.Has("content-type") {
		h.Add("content-type", "text/plain; charset=utf-8")
	}
	h.Add("content-length", strconv.Itoa(len(lr.body)))
	if s.route != nil && s.route.Config.DirectResponse != nil || s.route != nil && s.route.Config.Redirect != nil {
		s.route.ApplyResponseMutations(h, nil)
	}
	s.code = lr.status // response.code for the response filters
	body := stream.GetBuffer()
	defer stream.PutBuffer(body)
	if s.grpc && lr.status >= 300 {
		grpcLocalReply(h, lr.status, lr.body, lr.details)
	} else {
		body.SetString(lr.body)
	}
	s.pending = nil
	p := phase{s: s, dir: dirResponse, n: n, end: body.Len() == 0, localBody: body}
	if !p.headers(h) {
		// A response filter replaced the reply with another local reply.
		if s.pending != nil && !s.headSent {
			s.finishLocal(0)
		}
		return
	}
	if s.pending != nil {
		s.finishLocal(0)
		return
	}
	s.code = statusOf(h)
	s.setServer(h)
	if err := s.ss.WriteHeaders(h, p.end); err != nil {
		s.flags |= flagDownstreamTerminated
		return
	}
	s.headSent = true
	if !p.end {
		p.finishBody(body)
	}
}

// setServer overwrites the response's server header with the connection
// manager's server name, after the response filters, as Envoy does with
// its default server_header_transformation (OVERWRITE) on every response,
// proxied or local. Without a name (the DSL's default) the header is left
// as it is.
func (s *activeStream) setServer(h *header.Map) {
	if n := s.cm.cfg.ServerName; n != "" {
		h.Set("server", n)
	}
}

// statusOf reads :status after filters may have changed it.
func statusOf(h *header.Map) int {
	v := h.Value(":status")
	n := 0
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0
		}
		n = n*10 + int(v[i]-'0')
	}
	return n
}

// forward sends the request to the route's cluster and the response back.
func (s *activeStream) forward(p *phase) {
	ra := s.route.Config.Action
	name, wc := s.route.ClusterFor(s.req, randUint32())
	cl := s.cm.clusters.Get(name)
	if cl == nil {
		s.flags |= flagNoCluster
		s.cm.stats.noCluster.Inc()
		s.sendLocal(503, "", "cluster_not_found")
		s.finishLocal(s.reached)
		return
	}
	s.cluster, s.wc = cl, wc
	path := s.req.Value(":path")
	if np := s.route.RewritePath(path); np != path {
		s.req.Set("x-envoy-original-path", path)
		s.req.Set(":path", np)
	}
	s.route.RewriteHost(s.req)
	s.route.ApplyRequestMutations(s.req, wc)

	done, ok := cl.TryStartRequest()
	if !ok {
		s.flags |= flagUpstreamOverflow
		s.cm.stats.overflow.Inc()
		s.sendLocal(503, "", "upstream_overflow")
		s.finishLocal(s.reached)
		return
	}
	defer done()
	s.mirror(ra, p)
	ex := &s.ex
	*ex = exchange{s: s, p: p, ra: ra, cl: cl}
	ex.run()
}

// filterCallbacks is the stream as one filter sees it.
type filterCallbacks struct {
	*activeStream
	idx int
}

func (c *filterCallbacks) FilterOverride() any {
	s := c.activeStream
	if s.route == nil {
		return nil
	}
	// As Envoy, the most specific level with a config wins; a route that
	// only enables the filter (a FilterConfig without config) has none.
	if o := s.cm.overrides[s.route.Config]; o != nil && o[c.idx].config != nil {
		return o[c.idx].config
	}
	if o := s.cm.vhOverrides[s.route.VirtualHost.Config]; o != nil && o[c.idx].config != nil {
		return o[c.idx].config
	}
	return nil
}

// filterAt returns the filter at index i, creating it on first use; nil when
// it is disabled for this stream's route.
func (s *activeStream) filterAt(i int) stream.Filter {
	if f := s.filters[i]; f != nil {
		return f
	}
	slot := &s.cm.filters[i]
	disabled := slot.disabled
	if s.route != nil {
		if o := s.cm.overrides[s.route.Config]; o != nil && o[i].set {
			disabled = o[i].disabled
		} else if o := s.cm.vhOverrides[s.route.VirtualHost.Config]; o != nil && o[i].set {
			disabled = o[i].disabled
		}
	}
	if disabled {
		return nil
	}
	f := slot.factory.NewFilter(&s.callbacks[i])
	s.filters[i] = f
	return f
}

// settle collects a reply a filter sent and turns StopAndWait into the
// status the filter resumed with.
func (s *activeStream) settle(st stream.Status) stream.Status {
	if p := s.reply.Swap(nil); p != nil {
		s.pending, s.replied = p, true
		return stream.LocalReply
	}
	if st != stream.StopAndWait {
		if st == stream.LocalReply && s.pending == nil {
			s.flags |= flagFilterError
		}
		return st
	}
	// A goroutine of the filter may hold this stream from now on: it is
	// not reused from the pool afterwards.
	s.async = true
	timeout := s.cm.cfg.StreamIdleTimeout
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.resume:
	case <-t.C:
		s.done.Store(true) // a late Resume or reply is ignored
		s.sendLocal(504, "", "filter_wait_timeout")
		return stream.LocalReply
	}
	if p := s.reply.Swap(nil); p != nil {
		s.pending, s.replied = p, true
		return stream.LocalReply
	}
	return stream.Continue
}

// Callbacks of stream.Callbacks shared by all filters.

func (s *activeStream) Context() context.Context {
	if s.ctx == nil {
		s.async = true // the context may outlive the callback
		s.ctx, s.cancel = context.WithCancel(context.Background())
	}
	return s.ctx
}

// SendLocalReply may be called from the filter's callback or, after it
// returned StopAndWait, from any goroutine; calls after the stream ended
// are ignored.
func (s *activeStream) SendLocalReply(status int, body string, headers []header.Field, details string) {
	if s.done.Load() {
		return
	}
	if details == "" {
		details = "filter_local_reply"
	}
	s.reply.Store(&localReply{status: status, body: body, headers: headers, details: details})
	select {
	case s.resume <- struct{}{}:
	default:
	}
}

func (s *activeStream) Resume() {
	if s.done.Load() {
		return
	}
	select {
	case s.resume <- struct{}{}:
	default:
	}
}

func (s *activeStream) ClearRouteCache() { s.routeDirt = true }
func (s *activeStream) StreamID() uint64 { return s.id }

// attr.Source and observe.LogEntry.

func (s *activeStream) RequestHeaders() *header.Map   { return s.req }
func (s *activeStream) ResponseHeaders() *header.Map  { return &s.resp }
func (s *activeStream) ResponseTrailers() *header.Map { return &s.respTrail }
func (s *activeStream) ResponseCode() int             { return s.code }
func (s *activeStream) RequestID() string             { return s.reqID }
func (s *activeStream) StartTime() time.Time          { return s.start }
func (s *activeStream) Protocol() string              { return s.ss.Protocol() }
func (s *activeStream) DownstreamRemote() netip.AddrPort {
	return s.ss.Conn().Remote
}
func (s *activeStream) DownstreamLocal() netip.AddrPort { return s.ss.Conn().Local }
func (s *activeStream) TLS() *tls.ConnectionState       { return s.ss.Conn().TLS }
func (s *activeStream) UpstreamAddress() string {
	if s.host == nil {
		return ""
	}
	if s.host.Hostname() != "" {
		// A DNS host: a LOGICAL_DNS one's address is its name; this is
		// the address its new connections go to.
		return s.host.DialAddress()
	}
	return s.host.Address()
}
func (s *activeStream) RouteName() string {
	if s.route == nil {
		return ""
	}
	return s.route.Name()
}
func (s *activeStream) ClusterName() string {
	if s.cluster == nil {
		return ""
	}
	return s.cluster.Name()
}
func (s *activeStream) RequestBodySize() int64          { return s.reqBytes }
func (s *activeStream) ResponseBodySize() int64         { return s.respBytes }
func (s *activeStream) Duration() time.Duration         { return time.Since(s.start) }
func (s *activeStream) RequestDuration() time.Duration  { return -1 }
func (s *activeStream) ResponseDuration() time.Duration { return s.firstByteOrUnknown() }
func (s *activeStream) ResponseCodeDetails() string     { return s.details }
func (s *activeStream) BytesReceived() int64            { return s.reqBytes }
func (s *activeStream) BytesSent() int64                { return s.respBytes }
func (s *activeStream) UpstreamTransportFailureReason() string {
	return ""
}
func (s *activeStream) ConnectionID() uint64 { return s.ss.Conn().ID }
func (s *activeStream) AttemptCount() int    { return s.attempts }

func (s *activeStream) firstByteOrUnknown() time.Duration {
	if s.firstByte == 0 {
		return -1
	}
	return s.firstByte
}

func (s *activeStream) ResponseFlags() string {
	if s.flags == 0 {
		return "-"
	}
	b := s.scratch[:0]
	for i, c := range flagCodes {
		if s.flags&(1<<i) != 0 {
			if len(b) > 0 {
				b = append(b, ',')
			}
			b = append(b, c...)
		}
	}
	s.scratch = b
	return string(b)
}

// finish logs, counts and lets the filters go.
func (s *activeStream) finish() {
	s.done.Store(true)
	if s.up != nil {
		s.up.finish()
	}
	for _, f := range s.filters {
		if f != nil {
			s.safeDone(f)
		}
	}
	if s.cancel != nil {
		s.cancel()
	}
	d := time.Since(s.start)
	code := s.code
	if code == 0 {
		code = 500
	}
	s.cm.stats.record(code, d)
	if s.route != nil {
		if rs := s.cm.routeStats[s.route.Config]; rs != nil {
			rs.record(code, d)
		}
	}
	for _, l := range s.cm.accessLogs {
		l.Log(s)
	}
}

func (s *activeStream) safeDone(f stream.Filter) {
	defer func() {
		if r := recover(); r != nil {
			s.cm.log.Error("filter panicked in OnDone", "panic", fmt.Sprint(r), "stream", s.id)
		}
	}()
	f.OnDone()
}

var errBodyTooLarge = errors.New("proxy: body exceeds the buffer limit")

// readAll appends the rest of r to b, bounded by limit.
func readAll(b *stream.Buffer, r io.Reader, limit int) error {
	for {
		if b.Len() > limit {
			return errBodyTooLarge
		}
		_, err := b.AppendFrom(r, 32<<10)
		if err == io.EOF {
			if b.Len() > limit {
				return errBodyTooLarge
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}
