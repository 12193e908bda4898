// Package server runs a Sluice instance: it compiles config snapshots into
// a serving graph (listeners → filter chains → connection managers, route
// tables, clusters), swaps the graph in atomically, keeps unchanged
// listeners and connection pools across swaps, drains what was removed, and
// serves the admin endpoints.
package server

import (
	"context"
	ctls "crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/netio"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/proxy"
	"github.com/sluice-proxy/sluice/engine/proxy/route"
	"github.com/sluice-proxy/sluice/engine/stream"
	enginetls "github.com/sluice-proxy/sluice/engine/tls"
	"github.com/sluice-proxy/sluice/engine/upstream"
)

// Options configure a Server.
type Options struct {
	Registry *stream.Registry
	// Stats is the store the server's and its filters' statistics go to
	// (filters that define metrics, like Wasm plugins, were given it when
	// registered); nil: a new one.
	Stats   *observe.Store
	Log     *slog.Logger
	Version string
	// AdminAddress overrides the snapshot's admin address when set.
	AdminAddress string
	// DrainTimeout bounds a graceful drain (default 10s).
	DrainTimeout time.Duration
	// DrainTime is how long /drain_listeners?graceful keeps listeners
	// accepting (every connection told to close after its request) before
	// it stops them (Envoy's --drain-time-s; default 10s).
	DrainTime time.Duration
	// WaitForInit keeps the server INITIALIZING after its first config
	// until MarkInitialized: an xDS-fed proxy is not ready (/ready 503,
	// server.state 3, listener_manager.workers_started 0 — what Istio's
	// pilot-agent probes) before the control plane's first resources are
	// in, though the static listeners already serve.
	WaitForInit bool
	// Resolver resolves the names of STRICT_DNS and LOGICAL_DNS clusters
	// (nil: Go's resolver, net.DefaultResolver).
	Resolver upstream.Resolver
}

// State of the server, as /ready reports it.
const (
	StatePreInitializing = "PRE_INITIALIZING"
	StateInitializing    = "INITIALIZING"
	StateLive            = "LIVE"
	StateDraining        = "DRAINING"
)

// envoyState numbers the states as Envoy's server.state gauge does.
var envoyState = map[string]int64{StateLive: 0, StateDraining: 1, StatePreInitializing: 2, StateInitializing: 3}

func (s *Server) setState(st string) {
	s.state.Store(st)
	s.stateGauge.Set(envoyState[st])
	live := int64(0)
	if st == StateLive {
		live = 1
	}
	s.liveGauge.Set(live)
}

// Server is one running proxy.
type Server struct {
	opts      Options
	log       *slog.Logger
	stats     *observe.Store
	upstreams *upstream.Manager
	env       *proxy.Env

	applyMu   sync.Mutex
	current   atomic.Pointer[graph]
	listeners map[string]*netio.Listener // by listener name
	state     atomic.Value               // string
	started   time.Time

	admin      adminServer
	logsMu     sync.Mutex
	accessLogs map[string]*observe.AccessLogger

	applied, rejected *observe.Counter
	// Envoy's server and listener-manager gauges: Istio's pilot-agent
	// reads server.state and listener_manager.workers_started for readiness.
	stateGauge, liveGauge, workersStarted, activeListeners, activeClusters *observe.Gauge
	lastError                                                              atomic.Pointer[string]
	quit                                                                   chan struct{}
	quitOnce                                                               sync.Once
}

// graph is one compiled snapshot.
type graph struct {
	snap      *config.Snapshot
	clusters  *upstream.Set
	listeners map[string]*listenerGraph
	applied   time.Time
	logKeys   map[string]bool // access logs this graph writes
	// byAddr names the listener of each address, for the hand-off of
	// connections from a use_original_dst listener.
	byAddr map[netip.AddrPort]string
}

type listenerGraph struct {
	cfg    *config.Listener
	chains []*chainGraph // parallel to cfg.FilterChains
	def    *chainGraph
	// sniffTLS is set when some chain terminates TLS: the first byte of
	// each connection then tells TLS from plaintext.
	sniffTLS bool
	// sniffHTTP is set when some chain matches application protocols: a
	// plaintext connection's first bytes then tell which HTTP it speaks
	// (Envoy's http_inspector).
	sniffHTTP bool
	// detectTimeout bounds TLS detection and the handshake: the longest
	// request-headers timeout of the chains.
	detectTimeout time.Duration
}

// chainGraph is one compiled filter chain: its terminal network filter,
// an HTTP connection manager or a TCP proxy, and its TLS server config
// (nil: plaintext).
type chainGraph struct {
	cm  *proxy.ConnectionManager
	tcp *proxy.TCPProxy
	tls *ctls.Config
	// tlsNoALPN is tls without ALPN, for clients that offer none of its
	// protocols: Envoy (BoringSSL) then goes on without ALPN where
	// crypto/tls would fail the handshake (Istio's sidecars offer their
	// own protocols, "istio", "istio-peer-exchange").
	tlsNoALPN *ctls.Config
}

// defaultDetectTimeout bounds protocol detection and the TLS handshake
// when the connection manager sets no request-headers timeout (Envoy's
// listener_filters_timeout).
const defaultDetectTimeout = 15 * time.Second

func detectTimeout(ch *chainGraph) time.Duration {
	if ch.cm != nil {
		if d := ch.cm.Config().RequestHeadersTimeout; d > 0 {
			return d
		}
	}
	return defaultDetectTimeout
}

// pick returns the chain serving a connection, or nil when no chain
// matches.
func (lg *listenerGraph) pick(info *stream.ConnInfo, t *netio.Transport) *chainGraph {
	if i := netio.MatchChainTransport(lg.cfg.FilterChains, info, t); i >= 0 {
		return lg.chains[i]
	}
	return lg.def
}

// New returns a server with no config.
func New(opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	stats := opts.Stats
	if stats == nil {
		stats = observe.NewStore()
	}
	s := &Server{
		opts:       opts,
		log:        opts.Log,
		stats:      stats,
		upstreams:  newUpstreams(stats, opts),
		listeners:  map[string]*netio.Listener{},
		started:    time.Now(),
		accessLogs: map[string]*observe.AccessLogger{},
		quit:       make(chan struct{}),
	}
	if opts.Registry != nil {
		opts.Registry.SetHTTPCaller(s.HTTPCall)
		opts.Registry.SetStreamOpener(s.OpenStream)
	}
	sc := stats.Scope("server.", "server_")
	s.applied = sc.Counter("config_applied")
	s.rejected = sc.Counter("config_rejected")
	s.stateGauge = sc.Gauge("state")
	s.liveGauge = sc.Gauge("live")
	sc.Gauge("concurrency").Set(int64(runtime.GOMAXPROCS(0)))
	lm := stats.Scope("listener_manager.", "listener_manager_")
	s.workersStarted = lm.Gauge("workers_started")
	s.workersStarted.Set(0)
	s.activeListeners = lm.Gauge("total_listeners_active")
	s.activeClusters = stats.Scope("cluster_manager.", "cluster_manager_").Gauge("active_clusters")
	s.setState(StatePreInitializing)
	s.env = &proxy.Env{Registry: opts.Registry, Stats: stats, Log: opts.Log, AccessLog: s.openAccessLog}
	return s
}

func newUpstreams(stats *observe.Store, opts Options) *upstream.Manager {
	m := upstream.NewManager(stats, opts.Registry, opts.Log)
	if opts.Resolver != nil {
		m.SetResolver(opts.Resolver)
	}
	return m
}

// Stats returns the metric store.
func (s *Server) Stats() *observe.Store { return s.stats }

// State returns PRE_INITIALIZING, LIVE or DRAINING.
func (s *Server) State() string { return s.state.Load().(string) }

// Done is closed when /quitquitquit asked the server to stop.
func (s *Server) Done() <-chan struct{} { return s.quit }

// openAccessLog shares one logger per path and format across snapshots, so
// a reload neither reopens files nor loses buffered lines.
func (s *Server) openAccessLog(path string, f *observe.Format) (*observe.AccessLogger, error) {
	key := path + "\x00" + f.String()
	s.logsMu.Lock()
	defer s.logsMu.Unlock()
	if l, ok := s.accessLogs[key]; ok {
		return l, nil
	}
	l, err := observe.OpenAccessLog(path, f)
	if err != nil {
		return nil, err
	}
	s.accessLogs[key] = l
	return l, nil
}

// closeUnusedAccessLogs closes, after the drain timeout (streams of the old
// graph may still log), the loggers the current graph does not use.
func (s *Server) closeUnusedAccessLogs() {
	time.AfterFunc(s.opts.DrainTimeout, func() {
		g := s.current.Load()
		s.logsMu.Lock()
		defer s.logsMu.Unlock()
		for key, l := range s.accessLogs {
			if g == nil || !g.logKeys[key] {
				l.Close()
				delete(s.accessLogs, key)
			}
		}
	})
}

// Apply validates and compiles a snapshot and swaps it in. On any error the
// running config is untouched and keeps serving.
func (s *Server) Apply(snap *config.Snapshot) (err error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	defer func() {
		if err != nil {
			s.rejected.Inc()
			msg := err.Error()
			s.lastError.Store(&msg)
			return
		}
		s.applied.Inc()
		s.lastError.Store(nil)
	}()
	g, err := s.compile(snap, s.env)
	if err != nil {
		return err
	}
	set := g.clusters

	// Bind what is new before committing anything, so a port in use
	// rejects the snapshot instead of half-applying it.
	old := s.current.Load()
	fresh := map[string]*netio.Listener{}
	for _, l := range snap.Listeners {
		if l.NoBind {
			continue // served by hand-off only
		}
		if running, ok := s.listeners[l.Name]; ok && (sameAddress(old, l) || running.Addr().String() == l.Address) && !running.Draining() {
			continue
		}
		name := l.Name
		ln, err := netio.Listen(name, l.Address, func(ctx context.Context, c net.Conn, info *stream.ConnInfo) {
			s.serveConn(name, ctx, c, info)
		}, s.stats, s.log)
		if err != nil {
			for _, f := range fresh {
				f.Close()
			}
			return config.Blame(fmt.Errorf("server: %w", err), config.KindListener, name)
		}
		fresh[name] = ln
	}

	// Commit.
	s.current.Store(g)
	s.upstreams.Commit(set)
	for _, l := range snap.Listeners {
		if l.NoBind {
			if ln, ok := s.listeners[l.Name]; ok { // it was bound before
				delete(s.listeners, l.Name)
				go s.drainListener(ln)
			}
			continue
		}
		if ln, ok := fresh[l.Name]; ok {
			if prev, ok := s.listeners[l.Name]; ok {
				go s.drainListener(prev)
			}
			s.listeners[l.Name] = ln
			ln.Start()
			s.log.Info("listening", "listener", l.Name, "address", ln.Addr().String())
		}
		s.listeners[l.Name].SetMaxConnections(l.MaxConnections)
	}
	for name, ln := range s.listeners {
		if lg, ok := g.listeners[name]; !ok || lg.cfg.NoBind {
			delete(s.listeners, name)
			go s.drainListener(ln)
		}
	}
	s.closeUnusedAccessLogs()
	if s.State() == StatePreInitializing {
		if s.opts.WaitForInit {
			s.setState(StateInitializing)
		} else {
			s.setState(StateLive)
			s.workersStarted.Set(1)
		}
	}
	s.activeListeners.Set(int64(len(s.listeners)))
	s.activeClusters.Set(int64(len(snap.Clusters)))
	if err := s.startAdmin(snap); err != nil {
		s.log.Error("admin server", "err", err)
	}
	s.log.Info("config applied", "version", snap.Version, "source", snap.Source, "listeners", len(snap.Listeners), "clusters", len(snap.Clusters))
	return nil
}

// compile builds the serving graph of a snapshot without touching what is
// running.
func (s *Server) compile(snap *config.Snapshot, env *proxy.Env) (*graph, error) {
	if err := Validate(snap); err != nil {
		return nil, err
	}
	set, err := s.upstreams.Build(snap.Clusters)
	if err != nil {
		return nil, err
	}
	g := &graph{snap: snap, clusters: set, listeners: map[string]*listenerGraph{}, applied: time.Now(), logKeys: map[string]bool{},
		byAddr: map[netip.AddrPort]string{}}
	if env.AccessLog != nil {
		shared := env.AccessLog
		e := *env
		e.AccessLog = func(path string, f *observe.Format) (*observe.AccessLogger, error) {
			g.logKeys[path+"\x00"+f.String()] = true
			return shared(path, f)
		}
		env = &e
	}
	tables := map[string]*route.Table{}
	for _, rc := range snap.RouteConfigs {
		t, err := route.Compile(rc)
		if err != nil {
			return nil, config.Blame(fmt.Errorf("server: route configuration %q: %w", rc.Name, err), config.KindRouteConfig, rc.Name)
		}
		tables[rc.Name] = t
	}
	for _, l := range snap.Listeners {
		lg := &listenerGraph{cfg: l, chains: make([]*chainGraph, len(l.FilterChains))}
		for i, fc := range l.FilterChains {
			ch, err := compileChain(env, fc, tables, set)
			if err != nil {
				return nil, config.Blame(fmt.Errorf("server: listener %q: filter chain %d: %w", l.Name, i, err), config.KindListener, l.Name)
			}
			lg.chains[i] = ch
			lg.addChain(ch)
			lg.sniffHTTP = lg.sniffHTTP || len(fc.Match.ApplicationProtocols) > 0
		}
		if l.DefaultFilterChain != nil {
			ch, err := compileChain(env, l.DefaultFilterChain, tables, set)
			if err != nil {
				return nil, config.Blame(fmt.Errorf("server: listener %q: default filter chain: %w", l.Name, err), config.KindListener, l.Name)
			}
			lg.def = ch
			lg.addChain(ch)
		}
		g.listeners[l.Name] = lg
		if ap, err := netip.ParseAddrPort(l.Address); err == nil {
			g.byAddr[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = l.Name
		}
	}
	return g, nil
}

// Check compiles a snapshot as Apply would, without binding ports or
// opening log files: what 'sluice validate' runs.
func Check(snap *config.Snapshot, reg *stream.Registry) error {
	s := New(Options{Registry: reg, Log: slog.New(slog.DiscardHandler)})
	s.upstreams.SetDNSWarmup(0) // validation needs no DNS
	env := *s.env
	env.AccessLog = nil
	_, err := s.compile(snap, &env)
	return err
}

func sameAddress(old *graph, l *config.Listener) bool {
	if old == nil {
		return false
	}
	prev, ok := old.listeners[l.Name]
	return ok && prev.cfg.Address == l.Address
}

// compileChain compiles a chain's terminal filter, an HTTP connection
// manager or a TCP proxy (with the network filters before it), and its TLS
// config. A TCP chain's TLS offers only the ALPN protocols it names.
func compileChain(env *proxy.Env, fc *config.FilterChain, tables map[string]*route.Table, set *upstream.Set) (*chainGraph, error) {
	ch := &chainGraph{}
	var alpn []string
	var err error
	switch {
	case fc.HTTP != nil && fc.TCP != nil:
		return nil, errors.New("both an HTTP connection manager and a TCP proxy: a chain has one terminal filter")
	case fc.HTTP != nil:
		if len(fc.NetworkFilters) > 0 {
			return nil, fmt.Errorf("network filter %q before the HTTP connection manager: %w", fc.NetworkFilters[0].TypeURL, errors.ErrUnsupported)
		}
		if ch.cm, err = proxy.CompileConnectionManager(env, fc.HTTP, tables, set); err != nil {
			return nil, err
		}
		alpn = ch.cm.ALPN()
	case fc.TCP != nil:
		if ch.tcp, err = proxy.CompileTCPProxy(env, fc.TCP, fc.NetworkFilters, set); err != nil {
			return nil, err
		}
	default:
		return nil, errors.New("no network filter: a chain ends in an HTTP connection manager or a TCP proxy")
	}
	if fc.TLS != nil {
		if ch.tls, err = enginetls.ServerConfig(fc.TLS, alpn); err != nil {
			return nil, err
		}
		ch.tlsNoALPN = ch.tls.Clone()
		ch.tlsNoALPN.NextProtos = nil
	}
	return ch, nil
}

func (lg *listenerGraph) addChain(ch *chainGraph) {
	if ch.tls != nil {
		lg.sniffTLS = true
	}
	lg.detectTimeout = max(lg.detectTimeout, detectTimeout(ch))
}

func (s *Server) drainListener(ln *netio.Listener) {
	ln.Drain()
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.DrainTimeout)
	defer cancel()
	if !ln.Wait(ctx) {
		s.log.Warn("drain timeout: closed remaining connections", "listener", ln.Name())
	}
}

// serveConn serves one connection with the current graph. Each stream looks
// the graph up again, so a swap applies to the next request even on
// long-lived keep-alive connections, while a stream in flight finishes on
// the graph it started with.
func (s *Server) serveConn(listener string, ctx context.Context, c net.Conn, info *stream.ConnInfo) {
	listener = s.handOff(listener, c, info)
	h := &connHandler{s: s, listener: listener, info: info}
	c, ch, h2, err := s.accept(ctx, c, h)
	if err != nil {
		s.log.Debug("connection refused", "listener", listener, "remote", info.Remote.String(), "err", err)
		return
	}
	if ch.tcp != nil {
		if err := ch.tcp.Serve(ctx, c, info); err != nil {
			s.log.Debug("tcp connection ended", "listener", listener, "remote", info.Remote.String(), "err", err)
		}
		return
	}
	cm := ch.cm
	if err := cm.SelectCodec(h2).ServeConn(ctx, c, info, h, cm.ServerOptions(info.TLS != nil)); err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("connection ended", "listener", listener, "err", err)
	}
}

// originalDst finds a connection's destination before a redirect; tests
// replace it (a real redirect needs iptables).
var originalDst = netio.OriginalDst

// handOff applies a listener's original_dst filter (info.Local becomes the
// destination from before the redirect) and use_original_dst: it returns
// the listener to serve the connection, the one bound to that destination
// (exactly, else the wildcard address with its port) when there is one.
// The connection stays counted and drained with the listener that
// accepted it.
func (s *Server) handOff(listener string, c net.Conn, info *stream.ConnInfo) string {
	g := s.current.Load()
	lg := g.listeners[listener]
	if lg == nil {
		return listener
	}
	if lg.cfg.OriginalDst {
		if ap, err := originalDst(c); err == nil && ap.IsValid() {
			info.Local = ap
		} else {
			s.log.Debug("no original destination", "listener", listener, "err", err)
		}
	}
	if !lg.cfg.UseOriginalDst {
		return listener
	}
	dst := netip.AddrPortFrom(info.Local.Addr().Unmap(), info.Local.Port())
	name, ok := g.byAddr[dst]
	if !ok {
		wild := netip.IPv4Unspecified()
		if dst.Addr().Is6() {
			wild = netip.IPv6Unspecified()
		}
		name, ok = g.byAddr[netip.AddrPortFrom(wild, dst.Port())]
	}
	if !ok || name == listener {
		return listener
	}
	return name
}

// aLongTimeAgo is a deadline that has passed: it interrupts blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// accept runs what comes before the codec, each step bounded by a
// deadline so a silent client cannot hold the connection: TLS detection,
// the filter-chain match (on the ClientHello's SNI and ALPN, as Envoy's
// tls_inspector allows), the handshake, and HTTP/2 detection for auto
// managers. It returns the connection the chain reads (TLS, or one that
// replays peeked bytes), the chain, and whether the connection speaks
// HTTP/2.
func (s *Server) accept(ctx context.Context, c net.Conn, h *connHandler) (net.Conn, *chainGraph, bool, error) {
	g := s.current.Load()
	lg := g.listeners[h.listener]
	if lg == nil {
		return nil, nil, false, errors.New("server: listener removed")
	}
	start := time.Now()
	var stop func() bool // set once a step may block
	// A connection accepted while its listener drains gracefully is served
	// (one request, then closed), so draining must not cut its detection.
	lateInDrain := ctx.Err() != nil
	bound := func(d time.Duration) {
		if stop == nil && !lateInDrain {
			// Draining interrupts detection and the handshake.
			raw := c
			stop = context.AfterFunc(ctx, func() { raw.SetDeadline(aLongTimeAgo) })
		}
		c.SetDeadline(start.Add(d))
	}
	defer func() {
		if stop != nil {
			stop()
		}
	}()

	h.transport.Protocol = netio.TransportRaw
	isTLS := false
	if lg.sniffTLS {
		bound(lg.detectTimeout)
		var err error
		if c, isTLS, err = netio.SniffTLS(c); err != nil {
			return nil, nil, false, err
		}
	}
	var ch *chainGraph
	h2 := false
	if isTLS {
		// The chain is matched on the ClientHello; its compiled config
		// serves the handshake. The config built here only carries the
		// callback for this connection.
		base := &ctls.Config{GetConfigForClient: func(hello *ctls.ClientHelloInfo) (*ctls.Config, error) {
			h.transport = netio.Transport{Protocol: netio.TransportTLS,
				ServerName: strings.ToLower(hello.ServerName), ALPN: slices.Clone(hello.SupportedProtos)}
			m := lg.pick(h.info, &h.transport)
			switch {
			case m == nil:
				return nil, errors.New("server: no filter chain matches")
			case m.tls == nil:
				return nil, errors.New("server: TLS client matched a filter chain without TLS")
			}
			ch = m
			if len(hello.SupportedProtos) > 0 && !slices.ContainsFunc(hello.SupportedProtos, func(p string) bool {
				return slices.Contains(m.tls.NextProtos, p)
			}) {
				return m.tlsNoALPN, nil
			}
			return m.tls, nil
		}}
		tc := ctls.Server(c, base)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, nil, false, fmt.Errorf("server: TLS handshake: %w", err)
		}
		st := tc.ConnectionState()
		h.info.TLS = &st
		c, h2 = tc, st.NegotiatedProtocol == "h2"
	} else {
		if lg.sniffHTTP {
			bound(lg.detectTimeout)
			var proto string
			var err error
			if c, proto, err = netio.SniffHTTP(c); err != nil {
				return nil, nil, false, err
			}
			if proto != "" {
				h.transport.ALPN = []string{proto}
			}
		}
		if ch = lg.pick(h.info, &h.transport); ch == nil {
			return nil, nil, false, errors.New("server: no filter chain matches")
		}
		if ch.tls != nil {
			return nil, nil, false, errors.New("server: plaintext client matched a filter chain with TLS")
		}
		if ch.cm != nil && ch.cm.DetectsHTTP2() {
			bound(detectTimeout(ch))
			var err error
			if c, h2, err = netio.SniffHTTP2(c); err != nil {
				return nil, nil, false, err
			}
		}
	}
	if stop != nil {
		if !stop() {
			return nil, nil, false, errors.New("server: draining")
		}
		c.SetDeadline(time.Time{}) // the codec sets its own
	}
	if ch.cm != nil {
		h.cur.Store(&resolved{g: g, cm: ch.cm})
	}
	return c, ch, h2, nil
}

// connHandler serves the streams of one connection. HTTP/2 codecs call
// ServeStream from a goroutine per stream, so the chain resolved for the
// current graph is kept in an atomic pointer to an immutable pair: the
// common case (no swap since) is one load and no allocation.
type connHandler struct {
	s        *Server
	listener string
	info     *stream.ConnInfo
	// transport is what the chain was matched on at accept (the
	// ClientHello's SNI and ALPN list); written before the codec starts.
	transport netio.Transport
	cur       atomic.Pointer[resolved]
}

type resolved struct {
	g  *graph
	cm *proxy.ConnectionManager
}

func (h *connHandler) resolve() *proxy.ConnectionManager {
	g := h.s.current.Load()
	if r := h.cur.Load(); r != nil && r.g == g {
		return r.cm
	}
	r := &resolved{g: g}
	if lg := g.listeners[h.listener]; lg != nil {
		ch := lg.pick(h.info, &h.transport)
		// A connection stays with the kind of chain it was accepted on:
		// after a swap, a TLS connection must not be served by a
		// plaintext chain, nor a plaintext one by a chain that demands TLS
		// (nor an HTTP connection by a TCP proxy).
		if ch != nil && ch.cm != nil && (ch.tls != nil) == (h.info.TLS != nil) {
			r.cm = ch.cm
		}
	}
	// Concurrent streams may both resolve after a swap; either result
	// is the same.
	h.cur.Store(r)
	return r.cm
}

func (h *connHandler) ServeStream(ss stream.ServerStream) {
	cm := h.resolve()
	if cm == nil {
		// The listener or its chain went away: refuse politely; the
		// connection is being drained.
		var rh header.Map
		rh.Add(":status", "503")
		rh.Add("content-length", "0")
		rh.Add("connection", "close")
		ss.WriteHeaders(&rh, true)
		return
	}
	cm.ServeStream(ss)
}

// Drain stops accepting on every listener, lets streams in flight finish
// (bounded by the drain timeout) and reports when done.
func (s *Server) Drain() {
	s.setState(StateDraining)
	s.applyMu.Lock()
	lns := make([]*netio.Listener, 0, len(s.listeners))
	for _, ln := range s.listeners {
		lns = append(lns, ln)
	}
	s.applyMu.Unlock()
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.drainListener(ln)
		}()
	}
	wg.Wait()
}

// MarkInitialized ends INITIALIZING (Options.WaitForInit): the server is
// LIVE from now on. It does nothing in any other state.
func (s *Server) MarkInitialized() {
	// A compare-and-swap: a drain that began meanwhile stays a drain.
	if s.state.CompareAndSwap(StateInitializing, StateLive) {
		s.stateGauge.Set(envoyState[StateLive])
		s.liveGauge.Set(1)
		s.workersStarted.Set(1)
	}
}

// DrainListeners is the admin's POST /drain_listeners: it drains the
// inbound listeners only (traffic_direction INBOUND) or all of them. With
// graceful, connections are first told to close after their request (HTTP/1
// Connection: close, HTTP/2 GOAWAY) while the listeners keep accepting for
// DrainTime; then the listeners stop. It returns at once.
func (s *Server) DrainListeners(inboundOnly, graceful bool) {
	s.setState(StateDraining)
	inbound := map[string]bool{}
	if snap := s.Snapshot(); snap != nil {
		for _, l := range snap.Listeners {
			inbound[l.Name] = l.TrafficDirection == config.TrafficInbound
		}
	}
	s.applyMu.Lock()
	var lns []*netio.Listener
	for name, ln := range s.listeners {
		if !inboundOnly || inbound[name] {
			lns = append(lns, ln)
		}
	}
	s.applyMu.Unlock()
	for _, ln := range lns {
		go func() {
			if graceful {
				ln.DrainConnections()
				time.Sleep(s.drainTime())
			}
			s.drainListener(ln)
		}()
	}
}

func (s *Server) drainTime() time.Duration {
	if s.opts.DrainTime > 0 {
		return s.opts.DrainTime
	}
	return 10 * time.Second
}

// Shutdown drains and then closes everything, the admin server last.
func (s *Server) Shutdown() {
	s.Drain()
	// Stops the idle reaper and the DNS clusters' resolvers; connections
	// still busy close when released.
	s.upstreams.Close()
	s.closeAdmin()
	s.logsMu.Lock()
	for _, l := range s.accessLogs {
		l.Close()
	}
	s.logsMu.Unlock()
}

// Quit asks the process to stop (the admin's /quitquitquit).
func (s *Server) Quit() { s.quitOnce.Do(func() { close(s.quit) }) }

// ListenerAddr returns the bound address of a listener, for tests and the
// admin's /listeners.
func (s *Server) ListenerAddr(name string) net.Addr {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if ln, ok := s.listeners[name]; ok {
		return ln.Addr()
	}
	return nil
}

// ListenerNames returns the running listeners, sorted.
func (s *Server) ListenerNames() []string {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	out := make([]string, 0, len(s.listeners))
	for n := range s.listeners {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Snapshot returns the config being served, or nil.
func (s *Server) Snapshot() *config.Snapshot {
	if g := s.current.Load(); g != nil {
		return g.snap
	}
	return nil
}

// LastError returns the error of the last rejected snapshot, if the last
// attempt was rejected.
func (s *Server) LastError() string {
	if p := s.lastError.Load(); p != nil {
		return *p
	}
	return ""
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// HTTPCall sends a request of a filter's own to a cluster of the current
// config, outside any stream (proxy-wasm's http_call from a root context,
// for instance): the cluster's pools, stats and circuit breakers apply.
func (s *Server) HTTPCall(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*stream.HTTPResponse, error) {
	g := s.current.Load()
	if g == nil || g.clusters == nil {
		return nil, fmt.Errorf("server: http call to %q: no config applied yet: %w", cluster, proxy.ErrUnknownCluster)
	}
	return proxy.HTTPCall(ctx, g.clusters, 0, cluster, h, body, timeout)
}

// OpenStream opens a streaming call of a filter's own to a cluster of the
// current config, outside any stream (proxy-wasm's grpc_stream from a root
// context or a network filter): see proxy.OpenStream.
func (s *Server) OpenStream(ctx context.Context, cluster string, h *header.Map) (stream.CalloutStream, error) {
	g := s.current.Load()
	if g == nil || g.clusters == nil {
		return nil, fmt.Errorf("server: stream call to %q: no config applied yet", cluster)
	}
	cs, err := proxy.OpenStream(ctx, g.clusters, cluster, h)
	if err != nil {
		return nil, err
	}
	return cs, nil
}
