// Package proxy is the proxy layer: the HTTP connection manager that runs a
// stream's filter chain, picks its route and cluster, and exchanges it with
// an upstream (timeouts, retries, circuit breakers), writing the response
// back through the filters.
package proxy

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/proxy/route"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/upstream"
)

// Env is what compiling a connection manager needs from the process.
type Env struct {
	Registry *stream.Registry
	Stats    *observe.Store
	Log      *slog.Logger
	// AccessLog opens (or shares) an access log file.
	AccessLog func(path string, f *observe.Format) (*observe.AccessLogger, error)
}

// defaultBufferLimit bounds a body buffered for a filter or for retries
// (Envoy's default per-connection buffer limit).
const defaultBufferLimit = 1 << 20

// retryBufferLimit bounds the request body kept for replaying on retry.
const retryBufferLimit = 64 << 10

// filterSlot is one compiled HTTP filter of a chain.
type filterSlot struct {
	name     string
	factory  stream.Factory
	compiler stream.Compiler
	disabled bool
}

// override is a filter's per-route setting.
type override struct {
	set      bool
	disabled bool
	config   any
}

// ConnectionManager is a compiled HTTP connection manager: it serves the
// streams of the connections of one filter chain.
type ConnectionManager struct {
	cfg      *config.HTTPConnectionManager
	table    *route.Table
	clusters *upstream.Set
	filters  []filterSlot
	// overrides holds per-route filter settings, indexed like filters; the
	// route's own entry wins over its virtual host's.
	overrides   map[*config.Route][]override
	vhOverrides map[*config.VirtualHost][]override
	routeStats  map[*config.Route]*routeStats
	stats       *hcmStats
	accessLogs  []*observe.AccessLogger
	// opts serve plaintext connections, tlsOpts TLS ones (":scheme"
	// https); both are shared by every connection and never changed.
	opts, tlsOpts stream.ServerOptions
	codec         stream.ServerCodec // the configured codec; HTTP/1 for auto
	h2codec       stream.ServerCodec // auto only: HTTP/2 when detected
	alpn          []string           // default ALPN of a TLS chain
	log           *slog.Logger
	bufferLimit   int
	pool          sync.Pool
}

// requestStats count finished requests by status class, with their time.
type requestStats struct {
	total, class1, class2, class3, class4, class5 *observe.Counter
	time                                          *observe.Histogram
}

func newRequestStats(sc *observe.Scope, prefix string) requestStats {
	return requestStats{
		total:  sc.Counter(prefix + "rq_total"),
		class1: sc.Counter(prefix + "rq_1xx"), class2: sc.Counter(prefix + "rq_2xx"),
		class3: sc.Counter(prefix + "rq_3xx"), class4: sc.Counter(prefix + "rq_4xx"),
		class5: sc.Counter(prefix + "rq_5xx"),
		time:   sc.Histogram(prefix + "rq_time"),
	}
}

func (st *requestStats) record(code int, d time.Duration) {
	st.total.Inc()
	switch statusClass(code) {
	case 1:
		st.class1.Inc()
	case 2:
		st.class2.Inc()
	case 3:
		st.class3.Inc()
	case 4:
		st.class4.Inc()
	default:
		st.class5.Inc()
	}
	st.time.Record(float64(d.Microseconds()) / 1000)
}

type hcmStats struct {
	requestStats
	rqActive                            *observe.Gauge
	noRoute, noCluster, overflow, retry *observe.Counter
	localReply, filterError             *observe.Counter
	mirrored, mirrorSkipped             *observe.Counter
}

type routeStats struct{ requestStats }

func newHCMStats(s *observe.Store, prefix string) *hcmStats {
	sc := s.Scope("http."+prefix+".", "http_", observe.Label{Name: "envoy_http_conn_manager_prefix", Value: prefix})
	return &hcmStats{
		requestStats:  newRequestStats(sc, "downstream_"),
		rqActive:      sc.Gauge("downstream_rq_active"),
		noRoute:       sc.Counter("no_route"),
		noCluster:     sc.Counter("no_cluster"),
		overflow:      sc.Counter("upstream_rq_overflow"),
		retry:         sc.Counter("upstream_rq_retry"),
		localReply:    sc.Counter("local_reply"),
		filterError:   sc.Counter("filter_error"),
		mirrored:      sc.Counter("rq_mirrored"),
		mirrorSkipped: sc.Counter("rq_mirror_skipped_streamed_body"),
	}
}

func newRouteStats(s *observe.Store, vh, rt string) *routeStats {
	sc := s.Scope("vhost."+vh+".route."+rt+".", "vhost_route_",
		observe.Label{Name: "envoy_virtual_host", Value: vh}, observe.Label{Name: "envoy_route", Value: rt})
	return &routeStats{newRequestStats(sc, "")}
}

// CompileConnectionManager compiles an HCM against a snapshot's route
// tables (by name, for RDS) and cluster set. Every filter config is
// compiled here, never on the request path.
func CompileConnectionManager(env *Env, cfg *config.HTTPConnectionManager, tables map[string]*route.Table, clusters *upstream.Set) (*ConnectionManager, error) {
	cm := &ConnectionManager{
		cfg:         cfg,
		clusters:    clusters,
		log:         env.Log,
		bufferLimit: defaultBufferLimit,
		overrides:   map[*config.Route][]override{},
		vhOverrides: map[*config.VirtualHost][]override{},
		routeStats:  map[*config.Route]*routeStats{},
	}
	prefix := cfg.StatPrefix
	if prefix == "" {
		prefix = "ingress_http"
	}
	cm.stats = newHCMStats(env.Stats, prefix)

	if err := cm.compileCodec(env, cfg); err != nil {
		return nil, err
	}

	switch {
	case cfg.RouteConfig != nil:
		t, err := route.Compile(cfg.RouteConfig)
		if err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
		cm.table = t
	case cfg.RDSName != "":
		t, ok := tables[cfg.RDSName]
		if !ok {
			return nil, fmt.Errorf("proxy: route configuration %q not found", cfg.RDSName)
		}
		cm.table = t
	default:
		return nil, fmt.Errorf("proxy: connection manager %q has no route configuration", prefix)
	}

	names := map[string]int{}
	for i, f := range cfg.HTTPFilters {
		c, ok := env.Registry.Filter(f.TypeURL)
		if !ok {
			if f.Optional {
				env.Log.Warn("skipping optional filter of unknown type", "filter", f.Name, "type", f.TypeURL)
				continue
			}
			return nil, fmt.Errorf("proxy: http filter %d (%s): unknown filter type %q", i, f.Name, f.TypeURL)
		}
		var fac stream.Factory
		var err error
		if sc, ok := c.(stream.ScopedCompiler); ok {
			fac, err = sc.CompileScoped(f.Config, stream.CompileScope{StatPrefix: prefix, FilterName: f.Name})
		} else {
			fac, err = c.Compile(f.Config)
		}
		if err != nil {
			return nil, fmt.Errorf("proxy: http filter %d (%s): %w", i, f.Name, err)
		}
		if _, dup := names[f.Name]; dup && f.Name != "" {
			return nil, fmt.Errorf("proxy: http filter %d: duplicate filter name %q", i, f.Name)
		}
		names[f.Name] = len(cm.filters)
		cm.filters = append(cm.filters, filterSlot{name: f.Name, factory: fac, compiler: c, disabled: f.Disabled})
	}

	if err := cm.compileOverrides(env, names); err != nil {
		return nil, err
	}
	for _, al := range cfg.AccessLogs {
		f, err := observe.CompileFormat(al.Format)
		if err != nil {
			return nil, fmt.Errorf("proxy: access log %q: %w", al.Path, err)
		}
		if env.AccessLog == nil {
			continue
		}
		l, err := env.AccessLog(al.Path, f)
		if err != nil {
			return nil, fmt.Errorf("proxy: access log: %w", err)
		}
		cm.accessLogs = append(cm.accessLogs, l)
	}
	cm.pool.New = func() any { return newActiveStream() }
	return cm, nil
}

// compileOverrides compiles typed_per_filter_config of every virtual host
// and route, and the per-route stats.
func (cm *ConnectionManager) compileOverrides(env *Env, names map[string]int) error {
	compile := func(where string, m map[string]*config.FilterOverride) ([]override, error) {
		if len(m) == 0 {
			return nil, nil
		}
		out := make([]override, len(cm.filters))
		for name, o := range m {
			idx, ok := names[name]
			if !ok {
				// Envoy ignores per-route config for filters that are not in
				// the chain; so do we, but say so.
				env.Log.Warn("per-route config names a filter that is not in the chain", "where", where, "filter", name)
				continue
			}
			if o.Disabled {
				out[idx] = override{set: true, disabled: true}
				continue
			}
			if o.Config == nil {
				out[idx] = override{set: true}
				continue
			}
			c, err := cm.filters[idx].compiler.CompilePerRoute(o.Config)
			if err != nil {
				return nil, fmt.Errorf("proxy: %s: per-route config of filter %q: %w", where, name, err)
			}
			out[idx] = override{set: true, config: c}
		}
		return out, nil
	}
	for _, vh := range cm.table.Config().VirtualHosts {
		o, err := compile(fmt.Sprintf("virtual host %q", vh.Name), vh.TypedPerFilterConfig)
		if err != nil {
			return err
		}
		if o != nil {
			cm.vhOverrides[vh] = o
		}
		for i, r := range vh.Routes {
			rn := r.Name
			if rn == "" {
				rn = fmt.Sprintf("route_%d", i)
			}
			o, err := compile(fmt.Sprintf("virtual host %q route %q", vh.Name, rn), r.TypedPerFilterConfig)
			if err != nil {
				return err
			}
			if o != nil {
				cm.mergeOverrides(cm.vhOverrides[vh], o)
				cm.overrides[r] = o
			}
			cm.routeStats[r] = newRouteStats(env.Stats, vh.Name, rn)
		}
	}
	return nil
}

// mergeOverrides lets the route configs of filters whose compiler is a
// stream.PerRouteMerger inherit from their virtual host's.
func (cm *ConnectionManager) mergeOverrides(vh, route []override) {
	if vh == nil {
		return
	}
	for i := range route {
		m, ok := cm.filters[i].compiler.(stream.PerRouteMerger)
		if ok && route[i].config != nil && vh[i].config != nil {
			route[i].config = m.MergePerRoute(vh[i].config, route[i].config)
		}
	}
}

// compileCodec picks the server codecs and builds the codec options.
func (cm *ConnectionManager) compileCodec(env *Env, cfg *config.HTTPConnectionManager) error {
	lookup := func(name string) (stream.ServerCodec, error) {
		c, err := env.Registry.ServerCodec(name)
		if err != nil {
			return nil, fmt.Errorf("proxy: codec %q: %w", name, err)
		}
		return c, nil
	}
	var err error
	switch cfg.Codec {
	case "", config.CodecAuto:
		if cm.codec, err = lookup(string(config.CodecHTTP1)); err != nil {
			return err
		}
		// Without an HTTP/2 codec, auto is HTTP/1 and must not offer h2.
		cm.alpn = []string{"http/1.1"}
		if h2, err := env.Registry.ServerCodec(string(config.CodecHTTP2)); err == nil {
			cm.h2codec = h2
			cm.alpn = []string{"h2", "http/1.1"}
		}
	case config.CodecHTTP1:
		cm.codec, err = lookup(string(cfg.Codec))
		cm.alpn = []string{"http/1.1"}
	case config.CodecHTTP2:
		cm.codec, err = lookup(string(cfg.Codec))
		cm.alpn = []string{"h2"}
	default:
		cm.codec, err = lookup(string(cfg.Codec))
	}
	if err != nil {
		return err
	}
	cm.opts = stream.ServerOptions{
		RequestHeadersTimeout:    cfg.RequestHeadersTimeout,
		IdleTimeout:              cfg.IdleTimeout,
		RequestTimeout:           cfg.RequestTimeout,
		MaxRequestsPerConnection: cfg.MaxRequestsPerConnection,
		MaxConnectionDuration:    cfg.MaxConnectionDuration,
		MaxHeaderBytes:           cfg.MaxRequestHeadersBytes,
		MaxHeaders:               cfg.MaxHeadersCount,
		WriteTimeout:             cfg.StreamIdleTimeout,
		Scheme:                   "http",
		HTTP2: stream.HTTP2Options{
			MaxConcurrentStreams: cfg.HTTP2.MaxConcurrentStreams,
			InitialStreamWindow:  cfg.HTTP2.InitialStreamWindowSize,
			InitialConnWindow:    cfg.HTTP2.InitialConnectionWindowSize,
		},
	}
	cm.tlsOpts = cm.opts
	cm.tlsOpts.Scheme = "https"
	return nil
}

// Codec is the server codec of connections whose protocol is not detected:
// the configured one (HTTP/1 for auto).
func (cm *ConnectionManager) Codec() stream.ServerCodec { return cm.codec }

// DetectsHTTP2 reports whether connections must be inspected for HTTP/2:
// the codec is auto and an "http2" server codec is registered.
func (cm *ConnectionManager) DetectsHTTP2() bool { return cm.h2codec != nil }

// SelectCodec returns the codec for a connection, given whether it was
// detected as HTTP/2 (ALPN h2, or the plaintext preface). Only auto
// managers switch; the others keep their configured codec.
func (cm *ConnectionManager) SelectCodec(h2 bool) stream.ServerCodec {
	if h2 && cm.h2codec != nil {
		return cm.h2codec
	}
	return cm.codec
}

// ALPN is what a TLS chain of this manager offers when its TLS config
// names none: h2 and http/1.1 for auto (http/1.1 alone if no HTTP/2 codec
// is registered), else the configured codec's protocol.
func (cm *ConnectionManager) ALPN() []string { return cm.alpn }

// Options are the server codec limits of this manager's plaintext
// connections.
func (cm *ConnectionManager) Options() *stream.ServerOptions { return &cm.opts }

// ServerOptions are the codec options of a connection: over TLS they say
// ":scheme" https. They are shared and must not be changed.
func (cm *ConnectionManager) ServerOptions(tls bool) *stream.ServerOptions {
	if tls {
		return &cm.tlsOpts
	}
	return &cm.opts
}

// Config returns the manager's config.
func (cm *ConnectionManager) Config() *config.HTTPConnectionManager { return cm.cfg }

// ServeStream implements stream.Handler.
func (cm *ConnectionManager) ServeStream(ss stream.ServerStream) {
	s := cm.pool.Get().(*activeStream)
	s.init(cm, ss)
	if !s.serveSafely() {
		return // the stream's state is unknown: neither finish nor pool it
	}
	s.finish()
	if s.async {
		return // a filter goroutine may still call it: leave it to the GC
	}
	s.reset()
	cm.pool.Put(s)
}

// serveSafely runs the stream, turning a bug in the proxy path into a 500
// for this request (or a reset, once the response has started) instead of
// a dead connection.
func (s *activeStream) serveSafely() (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			s.cm.log.Error("proxy panicked serving a stream", "panic", fmt.Sprint(r), "stream", s.id, "stack", string(debug.Stack()))
			s.done.Store(true)
			if s.headSent {
				s.ss.Reset()
				return
			}
			var h header.Map
			h.Add(":status", "500")
			h.Add("content-length", "0")
			h.Add("connection", "close")
			if s.ss.WriteHeaders(&h, true) != nil {
				s.ss.Reset()
			}
			ok = false
		}
	}()
	s.serve()
	return true
}

func statusClass(code int) int {
	if code < 100 || code > 599 {
		return 5
	}
	return code / 100
}
