package main

import (
	"log/slog"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-proxy/sluice/dsl/compile"
	"github.com/sluice-proxy/sluice/dsl/expr"
	"github.com/sluice-proxy/sluice/dsl/rules"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/filters/cors"
	"github.com/sluice-proxy/sluice/engine/filters/fault"
	"github.com/sluice-proxy/sluice/engine/filters/headermutation"
	"github.com/sluice-proxy/sluice/engine/filters/istio"
	"github.com/sluice-proxy/sluice/engine/filters/rbac"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/lua"
	"github.com/sluice-proxy/sluice/protocols/http1"
	"github.com/sluice-proxy/sluice/protocols/http2"
	"github.com/sluice-proxy/sluice/wasm"
)

// builtins is the one place that knows every built-in protocol and filter
// kind: the engine only sees the registry. Filters that define metrics
// (Wasm plugins) put them in stats, the store the server renders.
func builtins(stats *observe.Store) *stream.Registry {
	r := stream.NewRegistry()
	r.RegisterCodec("http1", http1.NewServerCodec(), http1.NewClientCodec())
	r.RegisterCodec("http2", http2.NewServerCodec(), nil)
	r.RegisterMuxCodec("http2", http2.NewClientCodec())
	r.RegisterFilter(headermutation.Compiler{}, headermutation.TypeNames...)
	r.RegisterFilter(rbac.Compiler{Stats: stats, Conditions: rbacCondition}, rbac.TypeURLs...)
	r.RegisterNetworkFilter(rbac.Compiler{Stats: stats, Conditions: rbacCondition}, rbac.NetworkTypeURL)
	r.RegisterFilter(fault.Compiler{Stats: stats}, fault.TypeURL)
	r.RegisterFilter(cors.Compiler{Stats: stats}, cors.TypeURL)
	r.RegisterFilter(rules.Compiler{}, rules.TypeURL)
	r.RegisterFilter(compile.SourceCompiler{Env: sharedCELEnv()}, config.TypeRulesSource)
	r.RegisterFilter(lua.Compiler{Log: slog.Default()}, lua.TypeURL, lua.TypeURLPerRoute)
	wc := wasm.Compiler{Log: slog.Default(), Stats: stats, Callout: r.HTTPCall, StreamCallout: r.OpenStream}
	r.RegisterFilter(wc, wasm.TypeURL)
	r.RegisterNetworkFilter(wc, wasm.NetworkTypeURL)
	r.RegisterFilter(istio.Stats{Store: stats, Log: slog.Default()}, config.TypeIstioStats)
	r.RegisterFilter(istio.PeerMetadata{}, config.TypeIstioPeerMetadata)
	r.RegisterFilter(istio.NormalizePath{}, config.TypeNormalizePath)
	r.RegisterFilter(istio.ForwardClientCert{}, config.TypeForwardClientCert)
	r.RegisterNetworkFilter(istio.MetadataExchange{}, config.TypeIstioMetadataExchange)
	return r
}

// rbacCondition compiles an RBAC policy's CEL condition in the DSL's CEL
// environment, so policies read Envoy's attributes as rules do.
func rbacCondition(m proto.Message) (config.Condition, error) {
	celEnvOnce.Do(func() { celEnv, celEnvErr = expr.NewEnv() })
	if celEnvErr != nil {
		return nil, celEnvErr
	}
	return celEnv.ProtoCondition(m)
}

// sharedCELEnv is the DSL's CEL environment, or nil (each config then
// makes its own) if it cannot be built.
func sharedCELEnv() *expr.Env {
	celEnvOnce.Do(func() { celEnv, celEnvErr = expr.NewEnv() })
	return celEnv
}
