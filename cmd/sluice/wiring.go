package main

import (
	"log/slog"

	"github.com/sluice-proxy/sluice/dsl/rules"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/filters/headermutation"
	"github.com/sluice-proxy/sluice/engine/filters/istio"
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
	r.RegisterFilter(rules.Compiler{}, rules.TypeURL)
	r.RegisterFilter(lua.Compiler{Log: slog.Default()}, lua.TypeURL, lua.TypeURLPerRoute)
	r.RegisterFilter(wasm.Compiler{Log: slog.Default(), Stats: stats, Callout: r.HTTPCall}, wasm.TypeURL, wasm.NetworkTypeURL)
	r.RegisterFilter(istio.Stats{Store: stats, Log: slog.Default()}, config.TypeIstioStats)
	r.RegisterFilter(istio.PeerMetadata{}, config.TypeIstioPeerMetadata)
	r.RegisterFilter(istio.NormalizePath{}, config.TypeNormalizePath)
	r.RegisterFilter(istio.ForwardClientCert{}, config.TypeForwardClientCert)
	r.RegisterNetworkFilter(istio.MetadataExchange{}, config.TypeIstioMetadataExchange)
	return r
}
