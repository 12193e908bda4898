package istio

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Stats compiles stats.PluginConfig, Istio's istio.stats HTTP filter: each
// finished request counts in istio_requests_total and is timed in
// istio_request_duration_milliseconds, with Istio's standard labels, in
// the store /stats/prometheus renders.
//
// Who the source and the destination are comes from the node (this
// proxy) and from the peer that the metadata exchange filter found; the
// destination service from the cluster's "istio" metadata, else its
// outbound|port|subset|host name, else (unless
// disable_host_header_fallback) the request's host. Not emulated:
// response_flags is always "-"; destination_principal is "unknown" on
// inbound and source_principal on outbound (the local certificate and the
// upstream's are not visible to filters); metric overrides that need
// expressions (dimensions, definitions) are ignored with a log line
// (drop and tags_to_remove are honoured); request and response size
// histograms and TCP metrics are not kept.
type Stats struct {
	Store *observe.Store
	Log   *slog.Logger
}

// CompilePerRoute implements stream.Compiler: no per-route config.
func (Stats) CompilePerRoute(any) (any, error) {
	return nil, fmt.Errorf("istio: %s takes no per-route config", config.TypeIstioStats)
}

// The standard labels of istio_requests_total, in Istio's order.
var statsLabels = []string{"reporter", "source_workload", "source_canonical_service", "source_canonical_revision",
	"source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_version", "destination_service", "destination_canonical_service", "destination_canonical_revision",
	"destination_service_name", "destination_service_namespace", "destination_cluster", "request_protocol",
	"response_code", "grpc_response_status", "response_flags", "connection_security_policy"}

const (
	metricRequests = "requests_total"
	metricDuration = "request_duration_milliseconds"
	unknown        = "unknown"
)

type statsConfig struct {
	store          *observe.Store
	outbound       bool // reporter=source
	reporter       string
	noHostFallback bool
	drop           map[string]bool            // metric names not reported
	removed        map[string]map[string]bool // metric -> label names removed
	local          Workload
	clusters       map[string]map[string]map[string]any
	series         sync.Map // label key -> *series
}

type series struct {
	requests *observe.Counter
	duration *observe.Histogram
}

// Compile implements stream.Compiler.
func (s Stats) Compile(cfg any) (stream.Factory, error) {
	u, err := undecoded(cfg, config.TypeIstioStats)
	if err != nil {
		return nil, err
	}
	if s.Store == nil {
		return nil, fmt.Errorf("istio: stats: no metric store")
	}
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	sc := &statsConfig{store: s.Store, local: localWorkload(u.Node), clusters: u.ClusterMetadata,
		drop: map[string]bool{}, removed: map[string]map[string]bool{}}
	gatewayReporter, err := sc.parse(u, log)
	if err != nil {
		return nil, fmt.Errorf("istio: stats: %w", err)
	}
	switch {
	case gatewayReporter:
		sc.reporter = "waypoint"
	case u.TrafficDirection == config.TrafficInbound:
		sc.reporter = "destination"
	default:
		sc.reporter, sc.outbound = "source", true
	}
	return stream.FactoryFunc(func(cb stream.Callbacks) stream.Filter { return &statsFilter{c: sc, cb: cb} }), nil
}

// parse reads the PluginConfig fields Sluice uses:
// disable_host_header_fallback (6), metrics (8: MetricConfig { map
// dimensions = 1; name = 2; repeated tags_to_remove = 3; match = 4; drop
// = 5 }), definitions (9), reporter (10: UNSPECIFIED, SERVER_GATEWAY).
func (sc *statsConfig) parse(u *config.UndecodedConfig, log *slog.Logger) (gateway bool, _ error) {
	type override struct {
		name       string
		remove     []string
		drop       bool
		dimensions bool
	}
	var overrides []override
	definitions := 0
	if u.Fields != nil {
		var err error
		if sc.noHostFallback, err = boolField(u.Fields, "disable_host_header_fallback"); err != nil {
			return false, err
		}
		switch r, _ := config.StructField(u.Fields, "reporter"); r {
		case nil, "UNSPECIFIED", float64(0):
		case "SERVER_GATEWAY", float64(1):
			gateway = true
		default:
			return false, fmt.Errorf("reporter: unknown value %v", r)
		}
		metrics, err := listField(u.Fields, "metrics")
		if err != nil {
			return false, err
		}
		for i, e := range metrics {
			m, ok := e.(map[string]any)
			if !ok {
				return false, fmt.Errorf("metrics[%d]: not an object", i)
			}
			var o override
			o.name, _ = m["name"].(string)
			if o.drop, err = boolField(m, "drop"); err != nil {
				return false, fmt.Errorf("metrics[%d]: %w", i, err)
			}
			tags, err := listField(m, "tags_to_remove")
			if err != nil {
				return false, fmt.Errorf("metrics[%d]: %w", i, err)
			}
			for _, t := range tags {
				if s, ok := t.(string); ok {
					o.remove = append(o.remove, s)
				}
			}
			if d, ok := m["dimensions"].(map[string]any); ok && len(d) > 0 {
				o.dimensions = true
			}
			overrides = append(overrides, o)
		}
		defs, err := listField(u.Fields, "definitions")
		if err != nil {
			return false, err
		}
		definitions = len(defs)
	} else {
		err := walk(u.Value, func(num protowire.Number, v uint64, b []byte, isBytes bool) error {
			switch {
			case num == 6 && !isBytes:
				sc.noHostFallback = v != 0
			case num == 10 && !isBytes:
				switch v {
				case 0:
				case 1:
					gateway = true
				default:
					return fmt.Errorf("reporter: unknown value %d", v)
				}
			case num == 9 && isBytes:
				definitions++
			case num == 8 && isBytes:
				var o override
				err := walk(b, func(f protowire.Number, v uint64, s []byte, isBytes bool) error {
					switch {
					case f == 1 && isBytes:
						o.dimensions = true
					case f == 2 && isBytes:
						o.name = string(s)
					case f == 3 && isBytes:
						o.remove = append(o.remove, string(s))
					case f == 5 && !isBytes:
						o.drop = v != 0
					}
					return nil
				})
				if err != nil {
					return err
				}
				overrides = append(overrides, o)
			}
			return nil
		})
		if err != nil {
			return false, err
		}
	}
	for _, o := range overrides {
		names := []string{o.name}
		if o.name == "" {
			names = []string{metricRequests, metricDuration}
		}
		for _, n := range names {
			if o.drop {
				sc.drop[n] = true
			}
			for _, t := range o.remove {
				if sc.removed[n] == nil {
					sc.removed[n] = map[string]bool{}
				}
				sc.removed[n][t] = true
			}
		}
		if o.dimensions {
			log.Warn("istio: stats: metric dimension overrides are not supported and are ignored", "metric", o.name)
		}
	}
	if definitions > 0 {
		log.Warn("istio: stats: custom metric definitions are not supported and are ignored", "count", definitions)
	}
	return gateway, nil
}

type statsFilter struct {
	stream.PassThrough
	c  *statsConfig
	cb stream.Callbacks
}

func (f *statsFilter) OnDone() {
	c := f.c
	if c.drop[metricRequests] && c.drop[metricDuration] {
		return
	}
	cb := f.cb
	values := f.labels()
	key := strings.Join(values, "\x00")
	v, ok := c.series.Load(key)
	if !ok {
		v, _ = c.series.LoadOrStore(key, c.newSeries(values))
	}
	s := v.(*series)
	if s.requests != nil {
		s.requests.Inc()
	}
	if s.duration != nil {
		s.duration.Record(float64(time.Since(cb.StartTime()).Microseconds()) / 1000)
	}
}

// newSeries makes (or finds, after a reload) the metrics of one label set.
func (c *statsConfig) newSeries(values []string) *series {
	s := &series{}
	scope := func(metric string) *observe.Scope {
		var labels []observe.Label
		var b strings.Builder
		for i, name := range statsLabels {
			if c.removed[metric][name] {
				continue
			}
			labels = append(labels, observe.Label{Name: name, Value: values[i]})
			b.WriteString(";" + name + "=" + values[i])
		}
		return c.store.LabeledScope("istiocustom.", b.String(), labels...)
	}
	if !c.drop[metricRequests] {
		s.requests = scope(metricRequests).Counter("istio_" + metricRequests)
	}
	if !c.drop[metricDuration] {
		s.duration = scope(metricDuration).Histogram("istio_" + metricDuration)
	}
	return s
}

// labels computes the standard label values, in statsLabels' order.
func (f *statsFilter) labels() []string {
	c, cb := f.c, f.cb
	stateKey := StateDownstreamPeer
	if c.outbound {
		stateKey = StateUpstreamPeer
	}
	var peer Workload
	if v, ok := cb.FilterState().Get("", stateKey); ok {
		peer, _ = v.(Workload)
	}
	src, dst := peer, c.local
	if c.outbound {
		src, dst = c.local, peer
	}
	or := func(s string) string {
		if s == "" {
			return unknown
		}
		return s
	}
	srcPrincipal, dstPrincipal, policy := unknown, unknown, unknown
	if !c.outbound {
		policy = "none"
		if st := cb.TLS(); st != nil && len(st.PeerCertificates) > 0 {
			policy = "mutual_tls"
			srcPrincipal = uriSAN(st)
		}
	}
	svcHost, svcName, svcNS := f.service()
	rq := cb.RequestHeaders()
	protocol, grpcStatus := "http", ""
	if strings.HasPrefix(rq.Value("content-type"), "application/grpc") {
		protocol = "grpc"
		grpcStatus = unknown
		if t := cb.ResponseTrailers(); t != nil && t.Has("grpc-status") {
			grpcStatus = t.Value("grpc-status")
		} else if h := cb.ResponseHeaders(); h != nil && h.Has("grpc-status") {
			grpcStatus = h.Value("grpc-status")
		}
	}
	dstCanonical := or(dst.CanonicalName)
	if c.outbound && dst.CanonicalName == "" && svcName != unknown {
		// No peer (a server without a sidecar): Istio names the service.
		dstCanonical = svcName
	}
	return []string{
		c.reporter,
		or(src.WorkloadName), or(src.CanonicalName), or(src.CanonicalRevision), or(src.Namespace), srcPrincipal,
		or(src.App), or(src.Version), or(src.Cluster),
		or(dst.WorkloadName), or(dst.Namespace), dstPrincipal, or(dst.App), or(dst.Version),
		svcHost, dstCanonical, or(dst.CanonicalRevision), svcName, svcNS, or(dst.Cluster),
		protocol, strconv.Itoa(cb.ResponseCode()), grpcStatus, "-", policy,
	}
}

// service is the destination service's host, name and namespace.
func (f *statsFilter) service() (host, name, ns string) {
	c, cb := f.c, f.cb
	cluster := cb.ClusterName()
	if svcs, ok := c.clusters[cluster]["istio"]["services"].([]any); ok && len(svcs) > 0 {
		if s, ok := svcs[0].(map[string]any); ok {
			host, _ = s["host"].(string)
			name, _ = s["name"].(string)
			ns, _ = s["namespace"].(string)
		}
	}
	if host == "" {
		// outbound|9080|v1|reviews.default.svc.cluster.local
		if parts := strings.Split(cluster, "|"); len(parts) == 4 && parts[0] == "outbound" {
			host = parts[3]
		}
	}
	if host == "" && !c.noHostFallback {
		host = cb.RequestHeaders().Value(":authority")
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	if host == "" {
		return unknown, unknown, unknown
	}
	labels := strings.Split(host, ".")
	if name == "" {
		name = labels[0]
	}
	if ns == "" {
		ns = unknown
		if len(labels) > 2 && labels[2] == "svc" {
			ns = labels[1]
		}
	}
	return host, name, ns
}

func uriSAN(st *tls.ConnectionState) string {
	if len(st.PeerCertificates) > 0 && len(st.PeerCertificates[0].URIs) > 0 {
		return st.PeerCertificates[0].URIs[0].String()
	}
	return unknown
}
