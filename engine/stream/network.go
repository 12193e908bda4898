package stream

// The network filter contract: filters that see a connection's bytes, not
// HTTP streams (Envoy's network read/write filters, proxy-wasm's network
// context). They run before a chain's terminal filter, the TCP proxy, so
// any language that can implement an HTTP filter (native Go, Wasm, ...)
// can also inspect, rewrite, or refuse raw connections.
//
// The model, per connection:
//
//   - OnNewConnection is called on every filter, in chain order, before the
//     upstream connection is opened. Continue lets the next filter run;
//     StopIteration stops the chain and closes the connection (a filter
//     that must wait for something, an authorization call say, blocks in
//     the callback instead: Go lets it, and only this connection waits).
//   - Downstream bytes (read from the client) pass the filters in chain
//     order through OnDownstreamData; upstream bytes (read from the
//     server, written to the client) pass them in reverse order through
//     OnUpstreamData, like the response path of HTTP filters. A filter may
//     change the buffer (Set, Append, Prepend, Reset); what is left after
//     the last filter is written to the other side.
//   - NetworkStopIteration holds this direction's bytes at the filter: the
//     next bytes (having passed the filters before it) are appended and the
//     filter is called again with the whole, as Envoy and proxy-wasm do on
//     a paused network filter. endStream is set once, with the last bytes
//     (possibly none) of a direction: the peer half-closed. Stopping at
//     endStream leaves nothing to wait for, so the held bytes are dropped
//     and the connection is closed.
//   - OnClose is called once, after both connections are closed.
//
// The callbacks of one connection are never concurrent (the two
// directions take turns under a per-connection lock, as on Envoy's event
// loop), so a filter needs no locking of its own state. A chain without
// network filters never pays for any of this: the TCP proxy then copies
// between the sockets directly (splice on Linux).

import (
	"context"
	"log/slog"
	"sort"

	"github.com/sluice-proxy/sluice/engine/attr"
)

// NetworkStatus is what a network filter callback tells the chain.
type NetworkStatus uint8

const (
	// NetworkContinue passes the bytes (or the new connection) on to the
	// next filter.
	NetworkContinue NetworkStatus = iota
	// NetworkStopIteration holds the bytes at this filter until more
	// arrive; from OnNewConnection it refuses the connection.
	NetworkStopIteration
)

func (s NetworkStatus) String() string {
	switch s {
	case NetworkContinue:
		return "continue"
	case NetworkStopIteration:
		return "stop_iteration"
	}
	return "unknown"
}

// NetworkFilter is one network filter instance, made per connection by a
// NetworkFactory.
type NetworkFilter interface {
	// OnNewConnection is called once, before any data and before the
	// upstream connection is opened.
	OnNewConnection() NetworkStatus
	// OnDownstreamData sees bytes from the client on their way upstream.
	OnDownstreamData(b *Buffer, endStream bool) NetworkStatus
	// OnUpstreamData sees bytes from the upstream on their way to the
	// client.
	OnUpstreamData(b *Buffer, endStream bool) NetworkStatus
	// OnClose is called once when the connection has ended, both sides
	// closed; it is the place to log and release.
	OnClose()
}

// NetworkPassThrough implements NetworkFilter by continuing everywhere;
// embed it to override only the callbacks a filter needs.
type NetworkPassThrough struct{}

func (NetworkPassThrough) OnNewConnection() NetworkStatus               { return NetworkContinue }
func (NetworkPassThrough) OnDownstreamData(*Buffer, bool) NetworkStatus { return NetworkContinue }
func (NetworkPassThrough) OnUpstreamData(*Buffer, bool) NetworkStatus   { return NetworkContinue }
func (NetworkPassThrough) OnClose()                                     {}

// NetworkCallbacks is what a network filter may ask of its connection. The
// attribute source gives the downstream addresses (source.address is the
// client, destination.address the address it connected to), the
// downstream TLS state (connection.mtls, requested_server_name, ...), and,
// once connected, upstream.address and xds.cluster_name; HTTP attributes
// read empty.
type NetworkCallbacks interface {
	attr.Source
	// ConnectionID identifies the downstream connection in logs.
	ConnectionID() uint64
	// Context is cancelled when the connection ends.
	Context() context.Context
	// WriteDownstream writes p to the client now, seen by no filter
	// (Envoy's connection().write()). Safe from any goroutine.
	WriteDownstream(p []byte) error
	// WriteUpstream writes p to the upstream, seen by no filter. Before
	// the upstream is connected (from OnNewConnection) the bytes are
	// queued and sent first once it is. Safe from any goroutine.
	WriteUpstream(p []byte) error
	// Close closes both connections; the current callback's bytes are not
	// forwarded. Safe from any goroutine.
	Close()
	// DynamicMetadata is the connection's dynamic metadata, shared by its
	// filters.
	DynamicMetadata() *Metadata
	// Logger logs for the connection's filters.
	Logger() *slog.Logger
}

// NetworkFactory makes network filter instances, one per connection; it is
// built once per config and must be safe for concurrent use.
type NetworkFactory interface {
	NewNetworkFilter(cb NetworkCallbacks) NetworkFilter
}

// NetworkFactoryFunc adapts a function to NetworkFactory.
type NetworkFactoryFunc func(cb NetworkCallbacks) NetworkFilter

func (f NetworkFactoryFunc) NewNetworkFilter(cb NetworkCallbacks) NetworkFilter { return f(cb) }

// NetworkCompiler turns one network filter kind's config into a factory at
// config time. The method name differs from Compiler's so one type (a
// language runtime, say) can implement both.
type NetworkCompiler interface {
	CompileNetworkFilter(cfg any) (NetworkFactory, error)
}

// NetworkCompilerFunc adapts a function to NetworkCompiler.
type NetworkCompilerFunc func(cfg any) (NetworkFactory, error)

func (f NetworkCompilerFunc) CompileNetworkFilter(cfg any) (NetworkFactory, error) { return f(cfg) }

// RegisterNetworkFilter registers the network filter compiler for one or
// more type names.
func (r *Registry) RegisterNetworkFilter(c NetworkCompiler, typeNames ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.network == nil {
		r.network = map[string]NetworkCompiler{}
	}
	for _, n := range typeNames {
		r.network[n] = c
	}
}

// NetworkFilter returns the network filter compiler for a type name.
func (r *Registry) NetworkFilter(typeName string) (NetworkCompiler, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c, ok := r.network[typeName]
	return c, ok
}

// NetworkFilterTypes lists the registered network filter type names,
// sorted.
func (r *Registry) NetworkFilterTypes() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.network))
	for n := range r.network {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
