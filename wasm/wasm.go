// Package wasm is Sluice's proxy-wasm host: it runs Wasm HTTP and network
// filter modules built for Envoy and Istio (proxy-wasm ABI 0.2.1, 0.2.0 and
// 0.1.0; Go, Rust, C++, TinyGo and AssemblyScript SDKs) on wazero, unchanged.
//
// Compiler compiles Envoy's envoy.extensions.filters.http.wasm.v3.Wasm
// config, and envoy.extensions.filters.network.wasm.v3.Wasm into a network
// filter (netfilter.go, with its own list of differences from Envoy): the
// module is compiled once per sha256 of its bytes, and each filter config
// gets a small pool of VMs (instances with their root context started and
// configured). A stream or connection binds to one VM for its life; every
// call into a VM holds that VM's lock. A trap fails the request or
// connection that hit it (a local 503 or a close, or pass-through with
// fail_open), the VM is replaced by a fresh one, and the other contexts
// of the trapped VM fail the same way at their next callback (their guest
// state went with it), as in Envoy.
//
// Where this host differs from Envoy:
//   - Guest actions map onto the stream.Filter statuses as documented on
//     filter; a body paused mid-stream is handed back whole once, not
//     chunk by chunk.
//   - proxy_http_call goes through Callbacks.HTTPCall from HTTP stream
//     contexts and through Compiler.Callout (the server's clusters) from
//     the root context and network contexts, which get InternalFailure
//     without one; request trailers are dropped.
//   - proxy_grpc_call is a unary gRPC call sent the same way: an HTTP/2
//     POST to /<service>/<method> on the envoy_grpc cluster of the
//     serialized GrpcService (or the bytes as a cluster name, as Envoy
//     accepts); the cluster must speak HTTP/2. An unknown cluster is not
//     refused at the call (ParseFailure in Envoy) but closes it with
//     UNAVAILABLE. google_grpc services are not supported. As in Envoy, an
//     OK call gets only proxy_on_grpc_receive, any other outcome only
//     proxy_on_grpc_close (transport failure UNAVAILABLE, timeout
//     DEADLINE_EXCEEDED, non-200 HTTP mapped as gRPC specifies, OK without
//     a message INTERNAL); no metadata callbacks for unary calls.
//     proxy_get_status reads the status and grpc-message during
//     proxy_on_grpc_close (Envoy reads the root context's), 0 and empty
//     elsewhere. A root-context call without a timeout gets 30 s.
//     proxy_grpc_cancel / proxy_grpc_close end an outstanding call of the
//     current context. proxy_call_foreign_function returns NotFound.
//   - proxy_grpc_stream opens a streaming call through
//     stream.StreamCaller (HTTP stream contexts) or, from the root
//     context and network contexts, through Compiler.StreamCallout;
//     callbacks come in Envoy's order (grpc_stream.go). Unlike Envoy: a
//     stream that never got a response head gets no initial metadata
//     (Envoy delivers its local 503 reply's); an upstream RST_STREAM maps
//     by its code (Envoy: INTERNAL); an unknown cluster in a GrpcService
//     is refused (InternalFailure) without a close callback; a response
//     without grpc-status is INTERNAL (Envoy: UNKNOWN); a send after the
//     guest's own end of stream is BadArgument; received messages are
//     capped at 4 MiB and queued sends at 8 MiB (RESOURCE_EXHAUSTED).
//   - proxy_close_stream answers a local 503 (details wasm_close_stream):
//     the filter contract has no stream reset. On a network context it
//     closes the connection, as Envoy does.
//   - proxy_set_property stores a string in filter state under
//     "wasm.<path>"; proxy_get_property reads Envoy's attribute paths
//     through engine/attr, plugin_name / plugin_root_id / plugin_vm_id,
//     request.headers.<name>, and those filter-state values. Node,
//     metadata and listener properties are NotFound.
//   - Guest metrics are named "wasmcustom.<name>" in /stats and plain
//     <name> in /stats/prometheus, as Envoy exports its custom stat
//     namespace; histograms record the raw values.
//   - Shared queues wake the root context of the VM that registered the
//     queue last; each VM of a pool has its own ticker.
//   - code.remote is fetched directly with net/http (not through
//     http_uri.cluster), checked against its required sha256 and cached
//     under os.UserCacheDir()/sluice/wasm.
package wasm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	wasmnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/wasm/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// TypeURL is the filter config type this package compiles.
const TypeURL = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"

// NetworkTypeURL is the network filter config type this package compiles
// (CompileNetworkFilter).
const NetworkTypeURL = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"

// Compiler compiles proxy-wasm HTTP filter configs (*wasmhttpv3.Wasm, or a
// bare *wasmv3.PluginConfig) and network filter configs (*wasmnetv3.Wasm).
type Compiler struct {
	Log   *slog.Logger
	Stats *observe.Store // guest metrics and per-plugin host stats; nil keeps them private
	// PoolSize is the number of VMs per filter config; 0 means GOMAXPROCS.
	PoolSize int
	// MemoryLimitPages bounds each VM's memory in 64 KiB pages; 0 means
	// DefaultMemoryLimitPages.
	MemoryLimitPages uint32
	// Callout serves proxy_http_call and proxy_grpc_call where there is
	// no HTTP stream to call through (the root context, network filters):
	// cmd/sluice passes the registry's HTTPCall, which reaches the running
	// server's clusters. Nil: such calls fail.
	Callout stream.HTTPCaller
	// StreamCallout serves proxy_grpc_stream there: cmd/sluice passes the
	// registry's OpenStream. Nil: such streams are refused.
	StreamCallout stream.StreamOpener
}

var (
	privateStatsOnce sync.Once
	privateStats     *observe.Store
)

// CompilePerRoute implements stream.Compiler. Envoy's Wasm filter has no
// per-route config.
func (Compiler) CompilePerRoute(any) (any, error) {
	return nil, errors.New("wasm: per-route config is not supported")
}

// Compile implements stream.Compiler: it loads and compiles the module
// (cached by sha256), then starts the plugin's VMs and configures them, so
// a module that traps or refuses its configuration fails here, not on the
// request path.
func (c Compiler) Compile(cfg any) (stream.Factory, error) {
	var pc *wasmv3.PluginConfig
	switch x := cfg.(type) {
	case *wasmhttpv3.Wasm:
		if x != nil {
			pc = x.GetConfig()
		}
	case *wasmv3.PluginConfig:
		pc = x
	case *wasmnetv3.Wasm:
		return nil, errors.New("wasm: envoy.extensions.filters.network.wasm.v3.Wasm is a network filter: it belongs in a filter chain's filters, before tcp_proxy")
	default:
		return nil, fmt.Errorf("wasm: config is %T, want *wasmhttpv3.Wasm", cfg)
	}
	p, err := c.plugin(pc)
	if err != nil {
		return nil, err
	}
	f := &Factory{p: p}
	// The filter contract has no teardown for factories: free the VMs
	// (and stop their tickers) when the config that holds f is dropped.
	runtime.AddCleanup(f, func(p *plugin) { p.close() }, p)
	return f, nil
}

// CompileNetworkFilter implements stream.NetworkCompiler for Envoy's
// network Wasm filter (*wasmnetv3.Wasm, or a bare *wasmv3.PluginConfig):
// the same modules, VM pools and fail policy as the HTTP filter, with one
// stream context per connection (netfilter.go).
func (c Compiler) CompileNetworkFilter(cfg any) (stream.NetworkFactory, error) {
	var pc *wasmv3.PluginConfig
	switch x := cfg.(type) {
	case *wasmnetv3.Wasm:
		if x != nil {
			pc = x.GetConfig()
		}
	case *wasmv3.PluginConfig:
		pc = x
	case *wasmhttpv3.Wasm:
		return nil, errors.New("wasm: envoy.extensions.filters.http.wasm.v3.Wasm is an HTTP filter: it belongs in the http_connection_manager's http_filters")
	default:
		return nil, fmt.Errorf("wasm: network filter config is %T, want *wasmnetv3.Wasm", cfg)
	}
	p, err := c.plugin(pc)
	if err != nil {
		return nil, err
	}
	f := &NetworkFactory{p: p}
	runtime.AddCleanup(f, func(p *plugin) { p.close() }, p)
	return f, nil
}

// plugin loads and compiles a plugin config's module (cached by sha256)
// and starts its pool of VMs, configured. HTTP and network filters share
// it.
func (c Compiler) plugin(pc *wasmv3.PluginConfig) (*plugin, error) {
	if pc == nil {
		return nil, errors.New("wasm: config has no plugin config")
	}
	vmc := pc.GetVmConfig()
	if vmc == nil {
		return nil, errors.New("wasm: plugin config has no vm_config")
	}
	switch rt := vmc.GetRuntime(); rt {
	case "", "envoy.wasm.runtime.v8", "envoy.wasm.runtime.wamr", "envoy.wasm.runtime.wasmtime", "envoy.wasm.runtime.wavm":
		// Every Wasm runtime runs on wazero here.
	case "envoy.wasm.runtime.null":
		return nil, errors.New("wasm: runtime envoy.wasm.runtime.null (native plugins compiled into Envoy) is not supported")
	default:
		return nil, fmt.Errorf("wasm: unknown runtime %q", rt)
	}
	code, source, err := loadCode(vmc.GetCode(), c.Callout, c.Log)
	if err != nil {
		return nil, err
	}
	vmConfig, err := anyBytes(vmc.GetConfiguration())
	if err != nil {
		return nil, fmt.Errorf("wasm: vm_config.configuration: %w", err)
	}
	pluginConfig, err := anyBytes(pc.GetConfiguration())
	if err != nil {
		return nil, fmt.Errorf("wasm: configuration: %w", err)
	}
	limit := c.MemoryLimitPages
	if limit == 0 {
		limit = DefaultMemoryLimitPages
	}
	eng, err := engineFor(limit)
	if err != nil {
		return nil, err
	}
	mod, err := eng.compile(code, source)
	if err != nil {
		return nil, err
	}
	log := c.Log
	if log == nil {
		log = slog.Default()
	}
	st := c.Stats
	if st == nil {
		privateStatsOnce.Do(func() { privateStats = observe.NewStore() })
		st = privateStats
	}
	name := pc.GetName()
	statName := name
	if statName == "" {
		statName = pc.GetRootId()
	}
	if statName == "" {
		statName = "unnamed"
	}
	scope := st.Scope("wasm."+statName+".", "wasm_", observe.Label{Name: "plugin_name", Value: statName})
	p := &plugin{
		name: name, rootID: pc.GetRootId(), vmID: vmc.GetVmId(), source: source,
		vmConfig: vmConfig, pluginConfig: pluginConfig,
		failOpen: pc.GetFailOpen() || pc.GetFailurePolicy() == wasmv3.FailurePolicy_FAIL_OPEN,
		env:      envVars(vmc.GetEnvironmentVariables()),
		eng:      eng, mod: mod, log: log.With("wasm_plugin", statName), metrics: metricsFor(st),
		created: scope.Counter("created"), traps: scope.Counter("traps"), active: scope.Gauge("active"),
		moved:   scope.Counter("streams_moved"),
		callout: c.Callout, streamCallout: c.StreamCallout,
	}
	n := c.PoolSize
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	vms := make([]*vm, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = p.newVM()
		}()
	}
	wg.Wait()
	p.vms = vms
	if err := errors.Join(errs...); err != nil {
		p.close()
		// Every VM fails the same way: report one.
		for _, e := range errs {
			if e != nil {
				return nil, e
			}
		}
	}
	return p, nil
}

// Factory makes the per-stream filters of one compiled Wasm config.
type Factory struct{ p *plugin }

// NewFilter implements stream.Factory. The stream binds to a VM on its
// first callback.
func (f *Factory) NewFilter(cb stream.Callbacks) stream.Filter {
	return &filter{p: f.p, cb: cb}
}

// Close frees the factory's VMs now instead of when it is collected.
func (f *Factory) Close() { f.p.close() }

// loadCode reads the module bytes from vm_config.code.
func loadCode(src *corev3.AsyncDataSource, call stream.HTTPCaller, log *slog.Logger) ([]byte, string, error) {
	if src == nil {
		return nil, "", errors.New("wasm: vm_config has no code")
	}
	if r := src.GetRemote(); r != nil {
		return fetchRemote(r, call, log)
	}
	local := src.GetLocal()
	if local == nil {
		return nil, "", errors.New("wasm: vm_config.code has no local source")
	}
	switch s := local.GetSpecifier().(type) {
	case *corev3.DataSource_Filename:
		b, err := os.ReadFile(s.Filename)
		if err != nil {
			return nil, "", fmt.Errorf("wasm: read module: %w", err)
		}
		return b, s.Filename, nil
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, "inline_bytes", nil
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), "inline_string", nil
	case *corev3.DataSource_EnvironmentVariable:
		return []byte(os.Getenv(s.EnvironmentVariable)), "environment variable " + s.EnvironmentVariable, nil
	}
	return nil, "", errors.New("wasm: vm_config.code.local is empty")
}

// anyBytes turns a configuration Any into the bytes the guest reads:
// StringValue and BytesValue unwrap to their content (Envoy's rule), any
// other message is passed as its serialised bytes.
func anyBytes(a *anypb.Any) ([]byte, error) {
	if a == nil {
		return nil, nil
	}
	switch a.GetTypeUrl() {
	case "type.googleapis.com/google.protobuf.StringValue":
		var s wrapperspb.StringValue
		if err := proto.Unmarshal(a.GetValue(), &s); err != nil {
			return nil, fmt.Errorf("decode StringValue: %w", err)
		}
		return []byte(s.GetValue()), nil
	case "type.googleapis.com/google.protobuf.BytesValue":
		var b wrapperspb.BytesValue
		if err := proto.Unmarshal(a.GetValue(), &b); err != nil {
			return nil, fmt.Errorf("decode BytesValue: %w", err)
		}
		return b.GetValue(), nil
	}
	return a.GetValue(), nil
}

func envVars(e *wasmv3.EnvironmentVariables) [][2]string {
	if e == nil {
		return nil
	}
	var out [][2]string
	for _, k := range e.GetHostEnvKeys() {
		if v, ok := os.LookupEnv(k); ok {
			out = append(out, [2]string{k, v})
		}
	}
	for k, v := range e.GetKeyValues() {
		out = append(out, [2]string{k, v})
	}
	return out
}
