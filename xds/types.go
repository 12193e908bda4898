package xds

import (
	"errors"
	"fmt"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	// Types that appear inside Anys in typical bootstraps and xDS resources.
	// Linking them registers them with protoregistry.GlobalTypes, which is how
	// protojson and anypb resolve type URLs; a type not listed here (or
	// linked by another package) is reported as unknown.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	// Filters and extensions Istio's control plane sends (see istio.go).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_stats/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/request_id/uuid/v3"
	// Istio's bootstrap compresses the prometheus listener's responses
	// (accepted, not run: see translateHTTPFilter).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/compression/brotli/compressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/compression/gzip/compressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/compression/zstd/compressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/compressor/v3"
	// Istio's bootstrap's overload_manager (ignored) caps downstream
	// connections with this monitor (at 2^31-1).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
)

// typePrefix is the canonical type URL prefix; translated configs always
// carry it, whatever prefix the input used.
const typePrefix = "type.googleapis.com/"

// Full names of the messages the translator handles itself.
const (
	nameHCM                 = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	nameRouter              = "envoy.extensions.filters.http.router.v3.Router"
	nameHeaderMutation      = "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
	nameHeaderMutationRoute = "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
	nameFilterConfig        = "envoy.config.route.v3.FilterConfig"
	nameFileAccessLog       = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
	nameStdoutAccessLog     = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
	nameStderrAccessLog     = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
	nameTLSInspector        = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
	nameHTTPInspector       = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
	nameRawBuffer           = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
	nameDownstreamTLS       = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
	nameUpstreamTLS         = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	namePreviousHosts       = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
	nameUpstreamHTTPOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	nameUUIDRequestID       = "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"
	nameGRPCStats           = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
	nameFault               = "envoy.extensions.filters.http.fault.v3.HTTPFault"
	nameCORS                = "envoy.extensions.filters.http.cors.v3.Cors"
)

// errUnknownType is wrapped by errors about a type URL no linked package
// registers.
var errUnknownType = errors.New("unknown type")

// typed is an unpacked Any: the message and its canonical type URL (for a
// TypedStruct, the URL of the message it describes).
type typed struct {
	url string
	msg proto.Message
}

func (t typed) name() protoreflect.FullName { return t.msg.ProtoReflect().Descriptor().FullName() }

// unpack decodes an Any into a message of the type its URL names, resolving
// xds.type.v3.TypedStruct and udpa.type.v1.TypedStruct to the message they
// describe, and checks the message's protoc-gen-validate rules.
func unpack(a *anypb.Any) (typed, error) {
	if a == nil {
		return typed{}, errors.New("typed_config is required")
	}
	m, err := newMessage(a.GetTypeUrl())
	if err != nil {
		return typed{}, err
	}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return typed{}, fmt.Errorf("decoding %s: %w", a.GetTypeUrl(), err)
	}
	t := typed{url: typePrefix + string(m.ProtoReflect().Descriptor().FullName()), msg: m}
	switch ts := m.(type) {
	case *xdstypev3.TypedStruct:
		t, err = fromTypedStruct(ts.GetTypeUrl(), ts.GetValue())
	case *udpatypev1.TypedStruct:
		t, err = fromTypedStruct(ts.GetTypeUrl(), ts.GetValue())
	}
	if err != nil {
		return typed{}, err
	}
	if err := validateMsg(t.msg); err != nil {
		return typed{}, err
	}
	return t, nil
}

// newMessage returns an empty message of the type a type URL names.
func newMessage(url string) (proto.Message, error) {
	name := (&anypb.Any{TypeUrl: url}).MessageName()
	if name == "" {
		return nil, fmt.Errorf("invalid type URL %q", url)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if err != nil {
		return nil, fmt.Errorf("%w %q: not linked into sluice", errUnknownType, url)
	}
	return mt.New().Interface(), nil
}

// fromTypedStruct decodes a TypedStruct's JSON-like value into the message
// its type URL names, strictly (unknown fields are errors).
func fromTypedStruct(url string, value *structpb.Struct) (typed, error) {
	m, err := newMessage(url)
	if err != nil {
		return typed{}, inField(err, "type_url")
	}
	if value != nil {
		b, err := protojson.Marshal(value)
		if err != nil {
			return typed{}, inField(err, "value")
		}
		if err := protojson.Unmarshal(b, m); err != nil {
			return typed{}, inField(fmt.Errorf("as %s: %w", url, err), "value")
		}
	}
	return typed{url: typePrefix + string(m.ProtoReflect().Descriptor().FullName()), msg: m}, nil
}
