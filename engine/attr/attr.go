// Package attr resolves request attributes by Envoy's names
// (request.path, source.address, xds.route_name, ...). CEL, Lua's
// streamInfo and proxy-wasm's proxy_get_property all read through it, so an
// attribute means the same thing in every filter language. Names are parsed
// to an ID once at config time; Resolve reads the live stream lazily and
// builds no map per request.
package attr

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
)

// Source is what a stream exposes to attribute readers. Implementations
// return zero values for what is not known yet (no response before the
// upstream answered).
type Source interface {
	RequestHeaders() *header.Map // with :method, :path, :authority, :scheme
	ResponseHeaders() *header.Map
	ResponseTrailers() *header.Map
	ResponseCode() int
	RequestID() string
	StartTime() time.Time
	Protocol() string // "HTTP/1.0", "HTTP/1.1", "HTTP/2"
	DownstreamRemote() netip.AddrPort
	DownstreamLocal() netip.AddrPort
	TLS() *tls.ConnectionState
	UpstreamAddress() string
	RouteName() string
	ClusterName() string
	RequestBodySize() int64
	ResponseBodySize() int64
}

// ID names one attribute.
type ID int

// The attributes, with Envoy's names in Names.
const (
	Invalid ID = iota
	RequestPath
	RequestURLPath
	RequestHost
	RequestScheme
	RequestMethod
	RequestHeaders
	RequestReferer
	RequestUserAgent
	RequestTime
	RequestID
	RequestProtocol
	RequestQuery
	RequestSize
	ResponseCode
	ResponseHeaders
	ResponseTrailers
	ResponseSize
	SourceAddress
	SourcePort
	DestinationAddress
	DestinationPort
	ConnectionMTLS
	ConnectionRequestedServerName
	ConnectionTLSVersion
	UpstreamAddress
	XDSRouteName
	XDSClusterName
	numIDs
)

// Names maps IDs to Envoy's attribute names.
var Names = [numIDs]string{
	RequestPath:                   "request.path",
	RequestURLPath:                "request.url_path",
	RequestHost:                   "request.host",
	RequestScheme:                 "request.scheme",
	RequestMethod:                 "request.method",
	RequestHeaders:                "request.headers",
	RequestReferer:                "request.referer",
	RequestUserAgent:              "request.useragent",
	RequestTime:                   "request.time",
	RequestID:                     "request.id",
	RequestProtocol:               "request.protocol",
	RequestQuery:                  "request.query",
	RequestSize:                   "request.size",
	ResponseCode:                  "response.code",
	ResponseHeaders:               "response.headers",
	ResponseTrailers:              "response.trailers",
	ResponseSize:                  "response.size",
	SourceAddress:                 "source.address",
	SourcePort:                    "source.port",
	DestinationAddress:            "destination.address",
	DestinationPort:               "destination.port",
	ConnectionMTLS:                "connection.mtls",
	ConnectionRequestedServerName: "connection.requested_server_name",
	ConnectionTLSVersion:          "connection.tls_version",
	UpstreamAddress:               "upstream.address",
	XDSRouteName:                  "xds.route_name",
	XDSClusterName:                "xds.cluster_name",
}

// Kind is the type of an attribute's value.
type Kind int

const (
	KindString Kind = iota
	KindInt
	KindBool
	KindTime
	KindHeaders // *header.Map, read as map(string, string) with lower-case keys
)

// Kinds gives each attribute's type.
var Kinds = [numIDs]Kind{
	RequestTime: KindTime, RequestSize: KindInt, ResponseCode: KindInt, ResponseSize: KindInt,
	SourcePort: KindInt, DestinationPort: KindInt, ConnectionMTLS: KindBool,
	RequestHeaders: KindHeaders, ResponseHeaders: KindHeaders, ResponseTrailers: KindHeaders,
}

var byName = func() map[string]ID {
	m := make(map[string]ID, numIDs)
	for id, n := range Names {
		if n != "" {
			m[n] = ID(id)
		}
	}
	return m
}()

// Parse returns the ID of an attribute name; it is meant for config time.
func Parse(name string) (ID, error) {
	if id, ok := byName[name]; ok {
		return id, nil
	}
	return Invalid, fmt.Errorf("attr: unknown attribute %q", name)
}

// Value is a resolved attribute. Exactly the field for the attribute's Kind
// is meaningful.
type Value struct {
	Kind    Kind
	Str     string
	Int     int64
	Bool    bool
	Time    time.Time
	Headers *header.Map
}

// Resolve reads one attribute from the stream.
func Resolve(s Source, id ID) Value {
	rh := s.RequestHeaders()
	switch id {
	case RequestPath:
		return str(rh.Value(":path"))
	case RequestURLPath:
		p := rh.Value(":path")
		if i := strings.IndexByte(p, '?'); i >= 0 {
			p = p[:i]
		}
		return str(p)
	case RequestHost:
		return str(rh.Value(":authority"))
	case RequestScheme:
		return str(rh.Value(":scheme"))
	case RequestMethod:
		return str(rh.Value(":method"))
	case RequestHeaders:
		return Value{Kind: KindHeaders, Headers: rh}
	case RequestReferer:
		return str(rh.Value("referer"))
	case RequestUserAgent:
		return str(rh.Value("user-agent"))
	case RequestTime:
		return Value{Kind: KindTime, Time: s.StartTime()}
	case RequestID:
		return str(s.RequestID())
	case RequestProtocol:
		return str(s.Protocol())
	case RequestQuery:
		p := rh.Value(":path")
		if i := strings.IndexByte(p, '?'); i >= 0 {
			return str(p[i+1:])
		}
		return str("")
	case RequestSize:
		return Value{Kind: KindInt, Int: s.RequestBodySize()}
	case ResponseCode:
		return Value{Kind: KindInt, Int: int64(s.ResponseCode())}
	case ResponseHeaders:
		return Value{Kind: KindHeaders, Headers: s.ResponseHeaders()}
	case ResponseTrailers:
		return Value{Kind: KindHeaders, Headers: s.ResponseTrailers()}
	case ResponseSize:
		return Value{Kind: KindInt, Int: s.ResponseBodySize()}
	case SourceAddress:
		return str(addrString(s.DownstreamRemote()))
	case SourcePort:
		return Value{Kind: KindInt, Int: int64(s.DownstreamRemote().Port())}
	case DestinationAddress:
		return str(addrString(s.DownstreamLocal()))
	case DestinationPort:
		return Value{Kind: KindInt, Int: int64(s.DownstreamLocal().Port())}
	case ConnectionMTLS:
		t := s.TLS()
		return Value{Kind: KindBool, Bool: t != nil && len(t.PeerCertificates) > 0}
	case ConnectionRequestedServerName:
		if t := s.TLS(); t != nil {
			return str(t.ServerName)
		}
		return str("")
	case ConnectionTLSVersion:
		if t := s.TLS(); t != nil {
			return str(tls.VersionName(t.Version))
		}
		return str("")
	case UpstreamAddress:
		return str(s.UpstreamAddress())
	case XDSRouteName:
		return str(s.RouteName())
	case XDSClusterName:
		return str(s.ClusterName())
	}
	return Value{}
}

func str(s string) Value { return Value{Kind: KindString, Str: s} }

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.Addr().Unmap().String()
}
