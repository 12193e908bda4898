package stream

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
)

// Registry maps filter config type names (Envoy type URLs or sluice.* names)
// to compilers, and codec names to codecs. cmd/sluice fills one explicitly;
// the engine only reads it.
type Registry struct {
	mu        sync.RWMutex
	compilers map[string]Compiler
	network   map[string]NetworkCompiler // network filters (network.go)
	servers   map[string]ServerCodec
	clients   map[string]ClientCodec
	muxes     map[string]MuxClientCodec
	caller    atomic.Pointer[HTTPCaller]
	opener    atomic.Pointer[StreamOpener]
}

// HTTPCaller makes a request of a filter's own to a cluster of the running
// config, outside any stream.
type HTTPCaller func(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*HTTPResponse, error)

// SetHTTPCaller installs what HTTPCall uses; the server does it when it is
// created with this registry.
func (r *Registry) SetHTTPCaller(fn HTTPCaller) { r.caller.Store(&fn) }

// HTTPCall is a request outside any stream (proxy-wasm's http_call from a
// root context, a timer): filters are given this method when they are
// registered, before a server exists, and it reaches the server's clusters
// once one runs.
func (r *Registry) HTTPCall(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*HTTPResponse, error) {
	fn := r.caller.Load()
	if fn == nil {
		return nil, fmt.Errorf("stream: http call to %q: no server is running", cluster)
	}
	return (*fn)(ctx, cluster, h, body, timeout)
}

// StreamOpener opens a streaming call of a filter's own to a cluster of
// the running config, outside any stream, as StreamCaller.OpenStream does
// (ctx bounds the stream's life).
type StreamOpener func(ctx context.Context, cluster string, h *header.Map) (CalloutStream, error)

// SetStreamOpener installs what OpenStream uses; the server does it when
// it is created with this registry, next to SetHTTPCaller.
func (r *Registry) SetStreamOpener(fn StreamOpener) { r.opener.Store(&fn) }

// OpenStream is a streaming call outside any stream (proxy-wasm's
// grpc_stream from a root context or a network filter), as
// StreamCaller.OpenStream: filters are given this method when they are
// registered, and it reaches the server's clusters once one runs.
func (r *Registry) OpenStream(ctx context.Context, cluster string, h *header.Map) (CalloutStream, error) {
	fn := r.opener.Load()
	if fn == nil {
		return nil, fmt.Errorf("stream: stream call to %q: no server is running", cluster)
	}
	return (*fn)(ctx, cluster, h)
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{
		compilers: map[string]Compiler{},
		servers:   map[string]ServerCodec{},
		clients:   map[string]ClientCodec{},
		muxes:     map[string]MuxClientCodec{},
	}
}

// RegisterFilter registers the compiler for one or more type names.
func (r *Registry) RegisterFilter(c Compiler, typeNames ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range typeNames {
		r.compilers[n] = c
	}
}

// Filter returns the compiler for a type name.
func (r *Registry) Filter(typeName string) (Compiler, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c, ok := r.compilers[typeName]
	return c, ok
}

// FilterTypes lists the registered filter type names, sorted.
func (r *Registry) FilterTypes() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.compilers))
	for n := range r.compilers {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// RegisterCodec registers a protocol's server and client codecs by name
// ("http1", "http2"). Either may be nil.
func (r *Registry) RegisterCodec(name string, s ServerCodec, c ClientCodec) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s != nil {
		r.servers[name] = s
	}
	if c != nil {
		r.clients[name] = c
	}
}

// ServerCodec returns the server codec registered under name.
func (r *Registry) ServerCodec(name string) (ServerCodec, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if s, ok := r.servers[name]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("stream: no server codec %q registered", name)
}

// ClientCodec returns the client codec registered under name.
func (r *Registry) ClientCodec(name string) (ClientCodec, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if c, ok := r.clients[name]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("stream: no client codec %q registered", name)
}

// RegisterMuxCodec registers the multiplexing client codec of a protocol
// ("http2").
func (r *Registry) RegisterMuxCodec(name string, c MuxClientCodec) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.muxes[name] = c
}

// MuxClientCodec returns the multiplexing client codec registered under name.
func (r *Registry) MuxClientCodec(name string) (MuxClientCodec, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if c, ok := r.muxes[name]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("stream: no multiplexing client codec %q registered", name)
}
