// Package fault is Envoy's HTTP fault injection filter
// (envoy.filters.http.fault, what Istio's VirtualService `fault` becomes):
// it delays and/or aborts a share of the requests that match its header
// matchers, with the delay, the abort status and the shares fixed in the
// config or taken from request headers (x-envoy-fault-delay-request,
// x-envoy-fault-abort-request, x-envoy-fault-abort-grpc-request and their
// -percentage headers). As Envoy, the delay comes first, then the abort.
//
// Istio adds the filter empty to every connection manager and puts the
// real config per route (typed_per_filter_config), which replaces the
// filter's config on that route; an empty config does nothing.
//
// Stats: http.<stat_prefix>.fault.aborts_injected, delays_injected,
// faults_overflow and the gauge active_faults.
package fault

import (
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/engine/filters/envoymatch"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	commonfaultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/proxy"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// TypeURL is the config type URL of the filter and of its per-route config.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

// DefaultStatPrefix is the connection manager stat prefix used outside a
// connection manager (Compile rather than CompileScoped).
const DefaultStatPrefix = "ingress_http"

// AbortBody is the body of Envoy's abort reply; AbortDetails its response
// code details.
const (
	AbortBody    = "fault filter abort"
	AbortDetails = "fault_filter_abort"
)

// Request headers that control faults when the config says header_abort
// or header_delay (Envoy's names).
const (
	HeaderDelay           = "x-envoy-fault-delay-request"
	HeaderDelayPercentage = "x-envoy-fault-delay-request-percentage"
	HeaderAbort           = "x-envoy-fault-abort-request"
	HeaderAbortGRPC       = "x-envoy-fault-abort-grpc-request"
	HeaderAbortPercentage = "x-envoy-fault-abort-request-percentage"
)

var (
	// The *_runtime fields name runtime keys whose defaults are the config's
	// own values: Sluice has no runtime, so they change nothing (as in an
	// Envoy without those keys). disable_downstream_cluster_stats turns
	// off stats Sluice does not keep.
	faultFields = envoymatch.KnownFields(&faultv3.HTTPFault{}, "delay", "abort", "headers", "max_active_faults",
		"upstream_cluster", "downstream_nodes", "response_rate_limit",
		"delay_percent_runtime", "abort_percent_runtime", "delay_duration_runtime", "abort_http_status_runtime",
		"max_active_faults_runtime", "response_rate_limit_percent_runtime", "abort_grpc_status_runtime",
		"disable_downstream_cluster_stats")
	abortFields = envoymatch.KnownFields(&faultv3.FaultAbort{}, "http_status", "grpc_status", "header_abort", "percentage", "response_body")
	delayFields = envoymatch.KnownFields(&commonfaultv3.FaultDelay{}, "fixed_delay", "header_delay", "percentage")
)

// percentage compiles an abort or delay percentage: 100/HUNDRED when
// absent, as Envoy (a -percentage header then lowers it to n/100).
func percentage(p *typev3.FractionalPercent) (envoymatch.Fraction, error) {
	return envoymatch.CompileFraction(p, envoymatch.Fraction{Num: 100, Den: 100})
}

// withHeader is Envoy's HeaderPercentageProvider: a -percentage header
// lowers the numerator (never raises it), over the config's denominator.
func withHeader(f envoymatch.Fraction, h *header.Map, name string) envoymatch.Fraction {
	v, ok := h.Get(name)
	if !ok {
		return f
	}
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return f
	}
	return envoymatch.Fraction{Num: min(n, f.Num), Den: f.Den}
}

type abortSpec struct {
	httpStatus int // 0: none
	grpcStatus int // -1: none
	fromHeader bool
	pct        envoymatch.Fraction
	body       string
}

type delaySpec struct {
	fixed      time.Duration
	fromHeader bool
	pct        envoymatch.Fraction
}

// settings is one compiled HTTPFault: the filter's or a route's.
type settings struct {
	abort     *abortSpec
	delay     *delaySpec
	headers   []*envoymatch.HeaderMatcher
	maxActive int64 // < 0: no limit
}

// noop reports whether the settings can never inject a fault.
func (s *settings) noop() bool { return s.abort == nil && s.delay == nil }

func compileSettings(cfg any) (*settings, error) {
	m, ok := cfg.(*faultv3.HTTPFault)
	if !ok || m == nil {
		return nil, fmt.Errorf("fault: config is %T, want *envoy.extensions.filters.http.fault.v3.HTTPFault", cfg)
	}
	s, err := compileHTTPFault(m)
	if err != nil {
		return nil, fmt.Errorf("fault: %w", err)
	}
	return s, nil
}

func compileHTTPFault(m *faultv3.HTTPFault) (*settings, error) {
	if err := faultFields.Check(m); err != nil {
		return nil, err
	}
	if m.GetUpstreamCluster() != "" {
		return nil, envoymatch.At("upstream_cluster", fmt.Errorf("faults limited to an upstream cluster are %w", envoymatch.ErrUnsupported))
	}
	if len(m.GetDownstreamNodes()) > 0 {
		return nil, envoymatch.At("downstream_nodes", fmt.Errorf("faults limited to downstream nodes are %w", envoymatch.ErrUnsupported))
	}
	if m.GetResponseRateLimit() != nil {
		return nil, envoymatch.At("response_rate_limit", fmt.Errorf("response rate limiting is %w", envoymatch.ErrUnsupported))
	}
	s := &settings{maxActive: -1}
	if v := m.GetMaxActiveFaults(); v != nil {
		s.maxActive = int64(v.GetValue())
	}
	for i, hm := range m.GetHeaders() {
		c, err := envoymatch.CompileHeader(hm)
		if err != nil {
			return nil, envoymatch.AtIndex("headers", i, err)
		}
		s.headers = append(s.headers, c)
	}
	if a := m.GetAbort(); a != nil {
		if err := abortFields.Check(a); err != nil {
			return nil, envoymatch.At("abort", err)
		}
		as := &abortSpec{grpcStatus: -1, body: a.GetResponseBody()}
		if as.body == "" {
			as.body = AbortBody
		}
		switch e := a.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			if e.HttpStatus < 200 || e.HttpStatus >= 600 {
				return nil, envoymatch.At("abort.http_status", fmt.Errorf("status %d is not in [200, 600)", e.HttpStatus))
			}
			as.httpStatus = int(e.HttpStatus)
		case *faultv3.FaultAbort_GrpcStatus:
			as.grpcStatus = int(e.GrpcStatus)
		case *faultv3.FaultAbort_HeaderAbort_:
			as.fromHeader = true
		default:
			return nil, envoymatch.At("abort", errors.New("one of http_status, grpc_status or header_abort is required"))
		}
		var err error
		if as.pct, err = percentage(a.GetPercentage()); err != nil {
			return nil, envoymatch.At("abort.percentage", err)
		}
		s.abort = as
	}
	if d := m.GetDelay(); d != nil {
		if err := delayFields.Check(d); err != nil {
			return nil, envoymatch.At("delay", err)
		}
		ds := &delaySpec{}
		switch e := d.GetFaultDelaySecifier().(type) {
		case *commonfaultv3.FaultDelay_FixedDelay:
			if err := e.FixedDelay.CheckValid(); err != nil || e.FixedDelay.AsDuration() < 0 {
				return nil, envoymatch.At("delay.fixed_delay", fmt.Errorf("invalid duration %v", e.FixedDelay))
			}
			ds.fixed = e.FixedDelay.AsDuration()
		case *commonfaultv3.FaultDelay_HeaderDelay_:
			ds.fromHeader = true
		default:
			return nil, envoymatch.At("delay", errors.New("one of fixed_delay or header_delay is required"))
		}
		var err error
		if ds.pct, err = percentage(d.GetPercentage()); err != nil {
			return nil, envoymatch.At("delay.percentage", err)
		}
		s.delay = ds
	}
	return s, nil
}

// Compiler compiles *faultv3.HTTPFault, for the filter and per route. It
// implements stream.ScopedCompiler: stats go under
// http.<stat_prefix>.fault.
type Compiler struct {
	// Stats receives the filter's stats; nil keeps them in a store of the
	// compiler's own.
	Stats *observe.Store
	// Rand returns a uniform number in [0, n); nil uses math/rand/v2,
	// whose global source is per-thread and takes no lock.
	Rand func(n uint64) uint64
}

// Compile implements stream.Compiler, with stats under DefaultStatPrefix.
func (c Compiler) Compile(cfg any) (stream.Factory, error) {
	return c.CompileScoped(cfg, stream.CompileScope{StatPrefix: DefaultStatPrefix})
}

// CompileScoped implements stream.ScopedCompiler.
func (c Compiler) CompileScoped(cfg any, scope stream.CompileScope) (stream.Factory, error) {
	s, err := compileSettings(cfg)
	if err != nil {
		return nil, err
	}
	st := observe.OrDetached(c.Stats)
	prefix := scope.StatPrefix
	if prefix == "" {
		prefix = DefaultStatPrefix
	}
	sc := st.Scope("http."+prefix+".fault.", "http_fault_",
		observe.Label{Name: "envoy_http_conn_manager_prefix", Value: prefix})
	rnd := c.Rand
	if rnd == nil {
		rnd = rand.Uint64N
	}
	return &factory{
		base:    s,
		rand:    rnd,
		aborts:  sc.Counter("aborts_injected"),
		delays:  sc.Counter("delays_injected"),
		over:    sc.Counter("faults_overflow"),
		activeG: sc.Gauge("active_faults"),
	}, nil
}

// CompilePerRoute implements stream.Compiler: the config replaces the
// filter's on the route.
func (c Compiler) CompilePerRoute(cfg any) (any, error) { return compileSettings(cfg) }

type factory struct {
	base                 *settings
	rand                 func(uint64) uint64
	aborts, delays, over *observe.Counter
	activeG              *observe.Gauge
	active               atomic.Int64 // faults in progress, for max_active_faults
}

func (f *factory) NewFilter(cb stream.Callbacks) stream.Filter {
	return &filter{f: f, cb: cb}
}

type filter struct {
	stream.PassThrough
	f      *factory
	cb     stream.Callbacks
	active bool // this stream counts in active_faults
}

func (x *filter) settings() *settings {
	if o, ok := x.cb.FilterOverride().(*settings); ok && o != nil {
		return o
	}
	return x.f.base
}

func (x *filter) OnRequestHeaders(h *header.Map, _ bool) stream.Status {
	s := x.settings()
	if s.noop() {
		return stream.Continue
	}
	for _, m := range s.headers {
		if !m.MatchHeaders(h) {
			return stream.Continue
		}
	}
	var delay time.Duration
	if d := s.delay; d != nil && withHeader(d.pct, h, HeaderDelayPercentage).Hit(x.f.rand) {
		delay = d.fixed
		if d.fromHeader {
			delay = 0
			if v, ok := h.Get(HeaderDelay); ok {
				if ms, err := strconv.ParseUint(strings.TrimSpace(v), 10, 63); err == nil {
					delay = time.Duration(min(ms, uint64(1<<63-1)/uint64(time.Millisecond))) * time.Millisecond
				}
			}
		}
	}
	status, grpcStatus, abort := 0, -1, false
	if a := s.abort; a != nil && withHeader(a.pct, h, HeaderAbortPercentage).Hit(x.f.rand) {
		status, grpcStatus = a.httpStatus, a.grpcStatus
		if a.fromHeader {
			if v, ok := h.Get(HeaderAbort); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 200 && n < 600 {
					status = n
				}
			}
			if status == 0 {
				if v, ok := h.Get(HeaderAbortGRPC); ok {
					if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 31); err == nil {
						grpcStatus = int(n)
					}
				}
			}
		}
		abort = status != 0 || grpcStatus >= 0
	}
	if delay <= 0 && !abort {
		return stream.Continue
	}
	if !x.begin(s) {
		return stream.Continue
	}
	if delay > 0 {
		x.f.delays.Inc()
		if !x.sleep(delay) {
			// The stream ended during the delay: nobody reads a reply.
			x.cb.SendLocalReply(503, "", nil, "downstream_remote_disconnect")
			return stream.LocalReply
		}
	}
	if !abort {
		return stream.Continue
	}
	x.f.aborts.Inc()
	a := s.abort
	if status == 0 {
		// A gRPC status alone: Envoy's abort is 200 with grpc-status, a
		// trailers-only reply for gRPC requests.
		status = 200
	}
	var hs []header.Field
	if grpcStatus >= 0 && proxy.IsGRPC(h) {
		hs = []header.Field{{Name: "grpc-status", Value: strconv.Itoa(grpcStatus)}}
	}
	x.cb.SendLocalReply(status, a.body, hs, AbortDetails)
	return stream.LocalReply
}

// begin counts the stream as an active fault unless max_active_faults is
// reached (then nothing is injected, as Envoy).
func (x *filter) begin(s *settings) bool {
	n := x.f.active.Add(1)
	if s.maxActive >= 0 && n > s.maxActive {
		x.f.active.Add(-1)
		x.f.over.Inc()
		return false
	}
	x.active = true
	x.f.activeG.Inc()
	return true
}

// sleep waits d, blocking only this stream's goroutine; it returns false
// when the stream's context ends first.
func (x *filter) sleep(d time.Duration) bool {
	ctx := x.cb.Context()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (x *filter) OnDone() {
	if x.active {
		x.active = false
		x.f.active.Add(-1)
		x.f.activeG.Dec()
	}
}
