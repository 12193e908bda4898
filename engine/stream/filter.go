// Package stream is the stream layer: the HTTP stream filter contract, the
// registry of filter-config compilers, the filter chain that runs a stream's
// filters (request path in order, response path in reverse), and the codec
// interfaces through which protocols hand streams to the engine.
package stream

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/header"
)

// Status is what a filter callback tells the chain.
type Status int

const (
	// Continue passes the data on to the next filter.
	Continue Status = iota
	// StopAndBuffer holds this direction at this filter until the whole body
	// has arrived; the filter's body callback then gets it in one piece with
	// endStream set. Headers returned with this status are held (and may still
	// be changed) until the filter continues.
	StopAndBuffer
	// StopAndWait pauses the chain until the filter calls Callbacks.Resume
	// or Callbacks.SendLocalReply, from any goroutine.
	StopAndWait
	// LocalReply means the filter has sent a local reply; the chain stops.
	LocalReply
)

func (s Status) String() string {
	switch s {
	case Continue:
		return "continue"
	case StopAndBuffer:
		return "stop_and_buffer"
	case StopAndWait:
		return "stop_and_wait"
	case LocalReply:
		return "local_reply"
	}
	return "unknown"
}

// Filter is one HTTP stream filter instance, made per stream by a Factory.
// Header maps carry Envoy's pseudo-headers (:method, :path, :authority,
// :scheme on requests, :status on responses) so scripts written for Envoy
// see what they expect.
type Filter interface {
	OnRequestHeaders(h *header.Map, endStream bool) Status
	OnRequestBody(b *Buffer, endStream bool) Status
	OnRequestTrailers(t *header.Map) Status
	OnResponseHeaders(h *header.Map, endStream bool) Status
	OnResponseBody(b *Buffer, endStream bool) Status
	OnResponseTrailers(t *header.Map) Status
	// OnDone is called once when the stream ends, after the last byte was
	// written or the stream was reset; it is the place to log and release.
	OnDone()
}

// PassThrough implements Filter by continuing everywhere; embed it to
// override only the callbacks a filter needs.
type PassThrough struct{}

func (PassThrough) OnRequestHeaders(*header.Map, bool) Status  { return Continue }
func (PassThrough) OnRequestBody(*Buffer, bool) Status         { return Continue }
func (PassThrough) OnRequestTrailers(*header.Map) Status       { return Continue }
func (PassThrough) OnResponseHeaders(*header.Map, bool) Status { return Continue }
func (PassThrough) OnResponseBody(*Buffer, bool) Status        { return Continue }
func (PassThrough) OnResponseTrailers(*header.Map) Status      { return Continue }
func (PassThrough) OnDone()                                    {}

// Callbacks is what a filter may ask of its stream.
type Callbacks interface {
	attr.Source
	// Context is cancelled when the stream ends or is reset.
	Context() context.Context
	// SendLocalReply answers the downstream without (further) upstream
	// involvement. The filter then returns LocalReply (or, when it had
	// returned StopAndWait, the chain stops).
	SendLocalReply(status int, body string, headers []header.Field, details string)
	// Resume continues a chain paused with StopAndWait.
	Resume()
	// ClearRouteCache makes the stream pick its route again after the
	// current callback returns (the filter changed what routes match on).
	ClearRouteCache()
	// FilterOverride returns the per-route config compiled for this filter
	// on the current route, or nil.
	FilterOverride() any
	// StreamID identifies the stream in logs.
	StreamID() uint64

	// HTTPCall sends a request to a cluster and waits for the whole
	// response (Envoy's async HTTP client, behind Lua's httpCall and
	// proxy-wasm's http_call). h needs :method, :path and :authority;
	// timeout 0 means none (ctx still bounds it). It blocks only the
	// calling stream.
	HTTPCall(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*HTTPResponse, error)
	// DynamicMetadata is the stream's dynamic metadata (Envoy's
	// dynamic_metadata), shared by its filters and the access log.
	DynamicMetadata() *Metadata
	// FilterState is the stream's filter state: values by name (the
	// namespace is "").
	FilterState() *Metadata
	// RouteMetadata is the current route's filter_metadata for namespace
	// ns (usually a filter name), or nil.
	RouteMetadata(ns string) map[string]any
	// Logger logs for the stream's filters.
	Logger() *slog.Logger
}

// HTTPResponse is the answer to Callbacks.HTTPCall.
type HTTPResponse struct {
	Headers  header.Map // ":status" first
	Body     []byte
	Trailers header.Map
}

// Metadata holds values by namespace and key (Envoy's dynamic metadata
// and filter state). Safe for concurrent use: an asynchronous call may
// set values while the stream's filters read them.
type Metadata struct {
	mu sync.Mutex
	m  map[string]map[string]any
}

// Get returns the value of key in namespace ns.
func (m *Metadata) Get(ns, key string) (any, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.m[ns][key]
	return v, ok
}

// Set stores v under key in namespace ns.
func (m *Metadata) Set(ns, key string, v any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[string]map[string]any{}
	}
	n := m.m[ns]
	if n == nil {
		n = map[string]any{}
		m.m[ns] = n
	}
	n[key] = v
}

// Namespace returns a copy of one namespace's values.
func (m *Metadata) Namespace(ns string) map[string]any {
	m.mu.Lock()
	defer m.mu.Unlock()
	src := m.m[ns]
	if src == nil {
		return nil
	}
	out := make(map[string]any, len(src))
	for k, v := range src {
		out[k] = v
	}
	return out
}

// Namespaces lists the namespaces that hold values, sorted.
func (m *Metadata) Namespaces() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.m))
	for ns := range m.m {
		out = append(out, ns)
	}
	sort.Strings(out)
	return out
}

// Factory makes filter instances; it is built once per config and must be
// safe for concurrent use.
type Factory interface {
	NewFilter(cb Callbacks) Filter
}

// FactoryFunc adapts a function to Factory.
type FactoryFunc func(cb Callbacks) Filter

func (f FactoryFunc) NewFilter(cb Callbacks) Filter { return f(cb) }

// Compiler turns one filter kind's config into a Factory at config time,
// never on the request path.
type Compiler interface {
	// Compile validates and compiles a filter's config.
	Compile(cfg any) (Factory, error)
	// CompilePerRoute compiles a per-route override (typed_per_filter_config).
	// A compiler without per-route support returns an error.
	CompilePerRoute(cfg any) (any, error)
}

// PerRouteMerger is a Compiler whose per-route configs combine across
// levels instead of replacing each other: a route's config takes what it
// leaves unset from its virtual host's (Envoy's CORS policy). The merge
// runs when the config is applied, never per request.
type PerRouteMerger interface {
	// MergePerRoute returns the route's config given its virtual host's
	// (parent) and its own (child), both from CompilePerRoute.
	MergePerRoute(parent, child any) any
}
