// Package config is Sluice's one internal configuration model. The DSL
// compiler, the Envoy bootstrap loader and the xDS client all produce a
// Snapshot; the engine validates it, compiles it into a running graph and
// swaps it in atomically. Shapes follow Envoy's v3 resources one to one so
// translation from xDS loses nothing.
package config

import (
	"net/netip"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/engine/attr"
)

// Snapshot is one complete configuration.
type Snapshot struct {
	// Version identifies the snapshot (an xDS version, a file hash, ...).
	Version string
	// Source says where the snapshot came from, for /config_dump and logs.
	Source string

	Admin        *Admin
	Listeners    []*Listener
	Clusters     []*Cluster
	RouteConfigs []*RouteConfiguration // named route tables (RDS); HCMs refer to them by name

	// DynamicClusters says clusters come from a discovery service (CDS):
	// a route may name a cluster not (yet) in the snapshot, and is answered
	// 503 cluster_not_found at request time, as Envoy does.
	DynamicClusters bool

	// EnvoyDump, when set by the front-end that made the snapshot (an Envoy
	// bootstrap or xDS), renders /config_dump as Envoy's
	// envoy.admin.v3.ConfigDump JSON, so tools made for Envoy (istioctl)
	// read it. Without it /config_dump shows this model.
	EnvoyDump func() ([]byte, error) `json:"-"`
}

// Admin is the admin server's address and access log.
type Admin struct {
	Address       string // host:port
	AccessLogPath string
}

// Listener accepts connections on one address.
type Listener struct {
	Name    string
	Address string // host:port

	FilterChains       []*FilterChain
	DefaultFilterChain *FilterChain

	// MaxConnections caps concurrent downstream connections (0: no cap).
	MaxConnections int
	// PerConnectionBufferLimit bounds buffered bytes per connection (0: default).
	PerConnectionBufferLimit int
	// TrafficDirection is Envoy's traffic_direction (TrafficInbound,
	// TrafficOutbound or ""): /drain_listeners?inboundonly drains only the
	// inbound ones, so a sidecar's outbound calls keep working while it drains.
	TrafficDirection string

	// OriginalDst restores each connection's destination from before an
	// iptables redirect (Envoy's original_dst listener filter, Linux's
	// SO_ORIGINAL_DST): chain matching, the hand-off and ORIGINAL_DST
	// clusters then see it.
	OriginalDst bool
	// UseOriginalDst hands each connection to the listener whose address is
	// its destination (exactly, else the wildcard address with its port),
	// when there is one; otherwise this listener serves it (Istio's
	// virtualOutbound).
	UseOriginalDst bool
	// NoBind is Envoy's bind_to_port false: no socket is opened; the
	// listener serves connections handed off by a UseOriginalDst listener.
	NoBind bool
}

// Listener traffic directions (Listener.TrafficDirection).
const (
	TrafficInbound  = "INBOUND"
	TrafficOutbound = "OUTBOUND"
)

// FilterChain is a match on connection properties and the network filters
// that serve matching connections: NetworkFilters in order, then exactly
// one terminal filter, HTTP or TCP (Envoy's filters list, whose last entry
// is http_connection_manager or tcp_proxy).
type FilterChain struct {
	Name  string
	Match FilterChainMatch
	// TLS, when set, terminates TLS on matching connections (Envoy's
	// DownstreamTlsContext transport socket); chains without it serve
	// plaintext.
	TLS *DownstreamTLS
	// NetworkFilters see the connection's bytes (after TLS) before the
	// terminal filter; only TCP proxy chains take them so far.
	NetworkFilters []*NetworkFilter
	HTTP           *HTTPConnectionManager
	TCP            *TCPProxy
}

// NetworkFilter is one network (L4) filter of a chain. TypeURL selects the
// compiler registered for network filters; Config is whatever it
// understands (a protobuf message from xDS).
type NetworkFilter struct {
	Name    string
	TypeURL string
	Config  any
}

// TCPProxy is Envoy's tcp_proxy network filter: each downstream connection
// is joined to a new connection to a host of the cluster, bytes copied
// both ways.
type TCPProxy struct {
	StatPrefix string
	// Exactly one of Cluster and WeightedClusters is set; a weighted split
	// picks one cluster per connection.
	Cluster          string
	WeightedClusters []*TCPWeightedCluster
	// IdleTimeout closes a connection with no bytes either way for this
	// long (0: never; front-ends apply Envoy's 1h default).
	IdleTimeout time.Duration
	// MaxConnectAttempts bounds upstream connect tries, each to a host not
	// tried before while there is one (1 when zero).
	MaxConnectAttempts int
	// MaxConnectionDuration closes a connection after this long (0: never).
	MaxConnectionDuration time.Duration
	// HashPolicy feeds ring_hash and maglev clusters; only SourceIP applies.
	HashPolicy []HashPolicy
	AccessLogs []*AccessLog
}

// TCPWeightedCluster is one branch of a TCP proxy's weighted split.
type TCPWeightedCluster struct {
	Name   string
	Weight uint32
}

// TypeTCPProxy is the type URL of Envoy's tcp_proxy network filter.
const TypeTCPProxy = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

// DataSource is Envoy's DataSource: inline bytes or a file read when the
// snapshot is compiled (so a reload picks up renewed certificates).
type DataSource struct {
	Filename string
	Inline   []byte
}

// IsZero reports whether neither a file nor inline bytes are set.
func (d DataSource) IsZero() bool { return d.Filename == "" && d.Inline == nil }

// Certificate is a certificate chain and its private key, both PEM.
type Certificate struct {
	Chain DataSource
	Key   DataSource
}

// TLSParams are protocol versions and cipher suites (Envoy's
// TlsParameters); zero values mean crypto/tls defaults (TLS 1.2-1.3).
type TLSParams struct {
	MinVersion   string // "TLSv1_2", "TLSv1_3" (Envoy's enum names)
	MaxVersion   string
	CipherSuites []string // OpenSSL/Envoy names, TLS 1.2 only
}

// DownstreamTLS terminates TLS for a filter chain.
type DownstreamTLS struct {
	// Certificates are served by SNI: the first whose names match the
	// client's server name, else the first.
	Certificates []Certificate
	// ALPN protocols offered, in preference order. Empty: chosen from the
	// connection manager's codec (h2 and http/1.1 for auto).
	ALPN   []string
	Params TLSParams
	// ClientCA, when set, verifies client certificates against it;
	// RequireClientCertificate refuses clients without one.
	ClientCA                 DataSource
	RequireClientCertificate bool
	// ClientSubjectAltNames, when set (with ClientCA), must match one of
	// a client certificate's SANs, or the handshake fails (Envoy's
	// match_subject_alt_names and match_typed_subject_alt_names on a
	// server's validation context; Istio checks the peer's trust domain
	// this way). A client without a certificate is not checked: that is
	// RequireClientCertificate's business.
	ClientSubjectAltNames []SANMatcher
}

// SANKind says which subject alt names of a certificate a SANMatcher
// tests.
type SANKind int

const (
	// SANAny tests DNS names and URIs (Envoy's untyped
	// match_subject_alt_names, which tests every SAN; Sluice's
	// certificates carry those two kinds).
	SANAny SANKind = iota
	SANDNS
	SANURI
)

// SANMatcher matches a certificate's subject alt names of one kind.
type SANMatcher struct {
	Kind  SANKind
	Match StringMatcher
}

// UpstreamTLS originates TLS to a cluster's endpoints (Envoy's
// UpstreamTlsContext).
type UpstreamTLS struct {
	// SNI is the server name sent; empty: none (Envoy's default).
	SNI string
	// CA verifies the upstream's certificate; without it the certificate
	// is not verified, as in Envoy with no validation_context.
	CA          DataSource
	Certificate *Certificate // client certificate for mTLS
	// ALPN offered to the upstream; empty: from the cluster's protocol.
	ALPN   []string
	Params TLSParams
	// SubjectAltNames, when set, must contain one of the certificate's
	// DNS or URI SANs (Envoy's match_typed_subject_alt_names, exact).
	SubjectAltNames []string
	// HTTP1ALPN and HTTP2ALPN, when set, replace ALPN on the connections
	// of the HTTP/1 and the HTTP/2 pool (raw TCP proxy connections keep
	// ALPN): this is how Istio's istio.alpn filter tells the peer sidecar
	// which protocol its requests use ("istio-http/1.1", "istio-h2").
	HTTP1ALPN []string
	HTTP2ALPN []string
}

// Upstream protocols of a cluster (Cluster.Protocol).
const (
	ProtocolHTTP1      = "http1"
	ProtocolHTTP2      = "http2"
	ProtocolDownstream = "downstream"
	ProtocolAuto       = "auto"
)

// HTTP2Options are HTTP/2 protocol settings (Envoy's Http2ProtocolOptions).
// Zero values mean the codec's defaults.
type HTTP2Options struct {
	MaxConcurrentStreams        uint32
	InitialStreamWindowSize     uint32
	InitialConnectionWindowSize uint32
	// ConnectionKeepaliveInterval sends PINGs on an idle upstream
	// connection; ConnectionKeepaliveTimeout closes it when unanswered.
	ConnectionKeepaliveInterval time.Duration
	ConnectionKeepaliveTimeout  time.Duration
}

// FilterChainMatch selects a filter chain (Envoy's filter_chain_match).
type FilterChainMatch struct {
	DestinationPort      uint32
	ServerNames          []string
	TransportProtocol    string
	ApplicationProtocols []string
	PrefixRanges         []netip.Prefix
	SourcePrefixRanges   []netip.Prefix
}

// Codec names the HTTP codec of a connection manager.
type Codec string

const (
	CodecAuto  Codec = "auto"
	CodecHTTP1 Codec = "http1"
	CodecHTTP2 Codec = "http2"
)

// HTTPConnectionManager is Envoy's HCM: the network filter that turns bytes
// into HTTP streams, runs HTTP filters and routes.
type HTTPConnectionManager struct {
	StatPrefix string
	// Codec is the downstream protocol: auto tells HTTP/2 (the connection
	// preface, or ALPN h2) from HTTP/1.1.
	Codec Codec
	HTTP2 HTTP2Options

	// Exactly one of RDSName and RouteConfig is set.
	RDSName     string
	RouteConfig *RouteConfiguration

	HTTPFilters []*HTTPFilter
	AccessLogs  []*AccessLog

	// RequestHeadersTimeout bounds reading one request's header block
	// (slowloris). IdleTimeout closes a connection with no active stream.
	// RequestTimeout bounds reading a whole request. Zero disables each.
	RequestHeadersTimeout time.Duration
	IdleTimeout           time.Duration
	RequestTimeout        time.Duration
	StreamIdleTimeout     time.Duration
	// DrainTimeout bounds how long a draining connection may linger.
	DrainTimeout time.Duration
	// MaxConnectionDuration closes long-lived connections (0: never).
	MaxConnectionDuration time.Duration
	// MaxRequestsPerConnection closes a connection after so many (0: no cap).
	MaxRequestsPerConnection int

	MaxRequestHeadersBytes int // whole header block; default 60 KiB
	MaxHeadersCount        int // default 100

	UseRemoteAddress          bool
	XFFNumTrustedHops         uint32
	SkipXFFAppend             bool
	GenerateRequestID         bool
	PreserveExternalRequestID bool
	// ServerName, when set, overwrites the server header of every
	// response (Envoy's server_name with its default
	// server_header_transformation, OVERWRITE).
	ServerName string
}

// HTTPFilter is one HTTP stream filter in a chain. TypeURL selects the
// registered compiler; Config is whatever that compiler understands (a
// protobuf message from xDS, a struct from the DSL).
type HTTPFilter struct {
	Name     string
	TypeURL  string
	Config   any
	Disabled bool // present but off unless a route enables it
	Optional bool // an unknown optional filter is skipped, not an error
}

// FilterOverride is per-route filter config (Envoy's typed_per_filter_config),
// keyed by filter name.
type FilterOverride struct {
	TypeURL  string
	Config   any
	Disabled bool
}

// AccessLog writes one line per finished stream.
type AccessLog struct {
	Path   string // file path; "/dev/stdout" and "/dev/stderr" are the standard streams
	Format string // Envoy %COMMAND% format; empty means the default format
}

// RouteConfiguration is a route table.
type RouteConfiguration struct {
	Name         string
	VirtualHosts []*VirtualHost
	HeaderMutations
}

// HeaderMutations adds and removes headers; it appears at route table,
// virtual host, route and weighted cluster level, applied innermost first
// like Envoy.
type HeaderMutations struct {
	RequestHeadersToAdd     []HeaderValueOption
	RequestHeadersToRemove  []string
	ResponseHeadersToAdd    []HeaderValueOption
	ResponseHeadersToRemove []string
}

// AppendAction is Envoy's HeaderValueOption.append_action.
type AppendAction int

const (
	AppendIfExistsOrAdd AppendAction = iota
	AddIfAbsent
	OverwriteIfExistsOrAdd
	OverwriteIfExists
)

// HeaderValueOption is one header to add.
type HeaderValueOption struct {
	Key    string
	Value  string
	Action AppendAction
}

// VirtualHost groups routes by domain.
type VirtualHost struct {
	Name    string
	Domains []string // exact, "*.suffix", "prefix.*" or "*"
	Routes  []*Route
	HeaderMutations
	RetryPolicy          *RetryPolicy
	TypedPerFilterConfig map[string]*FilterOverride
}

// Route is one match and its action. Exactly one of Action, DirectResponse
// and Redirect is set.
type Route struct {
	Name  string
	Match RouteMatch

	Action         *RouteAction
	DirectResponse *DirectResponse
	Redirect       *Redirect

	HeaderMutations
	TypedPerFilterConfig map[string]*FilterOverride
	// Metadata is the route's filter_metadata: values by namespace
	// (usually a filter name), as filters read them (Lua's metadata()).
	Metadata map[string]map[string]any
}

// RouteMatch is Envoy's RouteMatch. Exactly one path specifier is set, or
// none (matches every path).
type RouteMatch struct {
	Prefix              string
	Path                string
	SafeRegex           string
	PathSeparatedPrefix string
	CaseInsensitive     bool // Envoy's case_sensitive=false

	Headers         []HeaderMatcher
	QueryParameters []QueryParameterMatcher

	// Condition, when set, must hold too. It is evaluated after the cheap
	// matchers above, so a front-end that lifts what it can into them (the
	// DSL compiles `request.path.startsWith("/api/")` to a prefix) pays for
	// a program only where it must.
	Condition Condition
}

// Condition is a request predicate compiled at config time (a CEL program
// from the DSL or an RBAC policy). An evaluation error fails the request.
type Condition interface {
	Eval(src attr.Source) (bool, error)
}

// StringMatchKind says how a StringMatcher compares.
type StringMatchKind int

const (
	MatchExact StringMatchKind = iota
	MatchPrefix
	MatchSuffix
	MatchContains
	MatchRegex
)

// StringMatcher is Envoy's type.matcher.v3.StringMatcher.
type StringMatcher struct {
	Kind       StringMatchKind
	Value      string
	IgnoreCase bool
}

// HeaderMatcher matches one request header (":method", ":authority" and
// ":path" included). With Match nil it tests presence (Present).
type HeaderMatcher struct {
	Name        string
	Match       *StringMatcher
	Present     bool
	InvertMatch bool
}

// QueryParameterMatcher matches one query parameter; with Match nil it tests
// presence.
type QueryParameterMatcher struct {
	Name  string
	Match *StringMatcher
}

// RouteAction forwards to a cluster.
type RouteAction struct {
	Cluster          string
	WeightedClusters []*WeightedCluster
	ClusterHeader    string

	// Timeout bounds the whole upstream exchange including retries (0: none).
	Timeout     time.Duration
	IdleTimeout time.Duration

	PrefixRewrite      string
	RegexRewrite       *RegexRewrite
	HostRewriteLiteral string
	HostRewriteHeader  string
	AutoHostRewrite    bool

	RetryPolicy  *RetryPolicy
	HashPolicy   []HashPolicy
	MirrorPolicy []MirrorPolicy
}

// WeightedCluster is one branch of a weighted split.
type WeightedCluster struct {
	Name   string
	Weight uint32
	HeaderMutations
	TypedPerFilterConfig map[string]*FilterOverride
}

// RegexRewrite rewrites the path with an RE2 pattern.
type RegexRewrite struct {
	Pattern      string
	Substitution string
}

// RetryPolicy is Envoy's RetryPolicy.
type RetryPolicy struct {
	// RetryOn holds the conditions: "5xx", "gateway-error", "connect-failure",
	// "reset", "retriable-status-codes", "refused-stream", ...
	RetryOn              []string
	NumRetries           uint32
	PerTryTimeout        time.Duration
	RetriableStatusCodes []uint32
	// RetryOtherHosts makes a retry avoid hosts already tried (Envoy's
	// previous_hosts retry host predicate).
	RetryOtherHosts               bool
	HostSelectionRetryMaxAttempts int
	BackoffBase                   time.Duration
	BackoffMax                    time.Duration
}

// HashPolicy feeds consistent-hash load balancers.
type HashPolicy struct {
	Header         string
	SourceIP       bool
	QueryParameter string
	Cookie         string
	Terminal       bool
}

// MirrorPolicy shadows requests to another cluster.
type MirrorPolicy struct {
	Cluster string
	Percent float64 // 0..100
}

// DirectResponse answers locally.
type DirectResponse struct {
	Status int
	Body   string
}

// Redirect answers with a redirect built from the request.
type Redirect struct {
	SchemeRedirect string
	HostRedirect   string
	PortRedirect   uint32
	PathRedirect   string
	PrefixRewrite  string
	ResponseCode   int // 301 when zero
	StripQuery     bool
}

// LBPolicy names a load balancing policy.
type LBPolicy string

const (
	LBRoundRobin   LBPolicy = "round_robin"
	LBLeastRequest LBPolicy = "least_request"
	LBRandom       LBPolicy = "random"
	LBRingHash     LBPolicy = "ring_hash"
	LBMaglev       LBPolicy = "maglev"
)

// Cluster is a set of upstream endpoints.
type Cluster struct {
	Name           string
	Type           string // STATIC, STRICT_DNS, EDS, ...
	ConnectTimeout time.Duration
	LBPolicy       LBPolicy
	Endpoints      []*Endpoint

	CircuitBreakers CircuitBreakers

	// Protocol is the upstream HTTP protocol: "http1" (default), "http2",
	// "downstream" (the protocol the request arrived on: Envoy's
	// use_downstream_protocol_config) or "auto" (ALPN: h2 when the TLS
	// upstream negotiates it, else HTTP/1.1).
	Protocol string
	HTTP2    HTTP2Options
	// TLS, when set, dials endpoints over TLS.
	TLS *UpstreamTLS
	// TransportSocketMatches are per-endpoint alternatives to TLS
	// (Envoy's transport_socket_matches, which the front-end resolves
	// against each endpoint's metadata): an endpoint whose
	// TransportSocket names one of them connects with its TLS, or in
	// plaintext when that is nil, instead of with the cluster's.
	TransportSocketMatches []*TransportSocketMatch
	// SourceAddress, when set, is the local IP address upstream
	// connections are made from (Envoy's upstream_bind_config; Istio
	// binds inbound traffic to 127.0.0.6 so that its iptables rules let
	// it through to the application).
	SourceAddress string
	// Metadata is the cluster's filter_metadata, values by namespace, as
	// filters read it (Istio's "istio" namespace names the services
	// behind a cluster).
	Metadata map[string]map[string]any
	// IdleTimeout closes pooled upstream connections idle this long.
	IdleTimeout              time.Duration
	MaxRequestsPerConnection int
	// CleanupInterval removes an ORIGINAL_DST cluster's hosts unused this
	// long (Envoy's cleanup_interval; 0: 5 s).
	CleanupInterval time.Duration

	// DNS resolution of STRICT_DNS and LOGICAL_DNS clusters (Envoy's
	// dns_* cluster fields); other types ignore them.
	DNS DNSOptions

	RingHashMinSize   uint64
	RingHashMaxSize   uint64
	MaglevTableSize   uint64
	LeastRequestCount int // choices for least_request; 2 by default

	// Outlier is passive health checking (Envoy's outlier_detection):
	// hosts whose responses fail are ejected for a while; nil: none.
	Outlier *OutlierDetection
	// HealthyPanicThreshold is the percentage of hosts that must not be
	// ejected for ejections to count: under it, the load balancer picks
	// among every host (Envoy's common_lb_config.healthy_panic_threshold;
	// nil: 50; 0: never).
	HealthyPanicThreshold *float64
}

// OutlierDetection is Envoy's outlier_detection with every default filled
// in (the front-end's job): percentages are 0..100, times are durations.
type OutlierDetection struct {
	Interval         time.Duration // between ejection analyses (10 s)
	BaseEjectionTime time.Duration // times the host's ejection count (30 s)
	MaxEjectionTime  time.Duration // cap of an ejection (300 s)
	// MaxEjectionPercent bounds the share of hosts ejected at once (10);
	// AlwaysEjectOneHost lets one host be ejected whatever the share.
	MaxEjectionPercent uint32
	AlwaysEjectOneHost bool

	// Consecutive errors: the count that ejects, and the percentage of
	// detections that eject (enforcing_*).
	Consecutive5xx                         uint32 // 5
	EnforcingConsecutive5xx                uint32 // 100
	ConsecutiveGatewayFailure              uint32 // 5 (502, 503, 504)
	EnforcingConsecutiveGatewayFailure     uint32 // 0
	SplitExternalLocalOriginErrors         bool   // connect failures, resets and timeouts count apart
	ConsecutiveLocalOriginFailure          uint32 // 5
	EnforcingConsecutiveLocalOriginFailure uint32 // 100

	// Success rate, per interval: hosts with at least RequestVolume
	// requests, when at least MinimumHosts have, below mean - stdev *
	// StdevFactor/1000.
	EnforcingSuccessRate            uint32 // 100
	EnforcingLocalOriginSuccessRate uint32 // 100
	SuccessRateMinimumHosts         uint32 // 5
	SuccessRateRequestVolume        uint32 // 100
	SuccessRateStdevFactor          uint32 // 1900

	// Failure percentage, per interval: hosts at or over Threshold percent
	// of failures.
	FailurePercentageThreshold            uint32 // 85
	EnforcingFailurePercentage            uint32 // 0
	EnforcingFailurePercentageLocalOrigin uint32 // 0
	FailurePercentageMinimumHosts         uint32 // 5
	FailurePercentageRequestVolume        uint32 // 50
}

// Cluster types whose endpoints are host names resolved by DNS: every
// address a STRICT_DNS endpoint's name resolves to is a host; a
// LOGICAL_DNS cluster has one endpoint and one host, which connects to the
// first address of the latest answer.
const (
	ClusterStrictDNS  = "STRICT_DNS"
	ClusterLogicalDNS = "LOGICAL_DNS"
)

// DNSOptions say when and how a DNS cluster resolves its names.
type DNSOptions struct {
	// RefreshRate is the time between resolutions of a name (0: 5 s).
	RefreshRate time.Duration
	// FailureRefreshBase and FailureRefreshMax bound the jittered
	// exponential backoff after a failed resolution (Envoy's
	// dns_failure_refresh_rate); a zero max is ten times the base. With
	// a zero base a failure is retried after RefreshRate, as in Envoy.
	FailureRefreshBase time.Duration
	FailureRefreshMax  time.Duration
	// Jitter adds a random delay up to this to every refresh.
	Jitter time.Duration
	// RespectTTL asks for the answer's TTL as the refresh rate. Go's
	// resolver does not report TTLs, so RefreshRate is used; the field
	// is kept so a config that sets it is accepted.
	RespectTTL bool
	// LookupFamily is Envoy's dns_lookup_family: DNSV4Only, DNSV6Only,
	// DNSAuto (IPv6 addresses if the name has any, else IPv4),
	// DNSV4Preferred (IPv4 if any, else IPv6) or DNSAll. Empty is
	// DNSV4Preferred, so a name like "localhost" that also resolves to
	// ::1 reaches a server listening on 127.0.0.1 only; the xDS
	// translator passes Envoy's default, AUTO, explicitly.
	LookupFamily string
}

// DNS lookup families (Envoy's Cluster.DnsLookupFamily names).
const (
	DNSAuto        = "AUTO"
	DNSV4Only      = "V4_ONLY"
	DNSV6Only      = "V6_ONLY"
	DNSV4Preferred = "V4_PREFERRED"
	DNSAll         = "ALL"
)

// ClusterOriginalDst is the cluster type whose one host is each
// downstream connection's original destination (Envoy's ORIGINAL_DST);
// such a cluster lists no endpoints. The TCP proxy supports it.
const ClusterOriginalDst = "ORIGINAL_DST"

// Endpoint is one upstream host.
type Endpoint struct {
	// Address is "host:port", or a unix socket: "unix:" then a path
	// ("unix:/run/app.sock", or relative to the working directory as in
	// "unix:./var/run/app.sock") or, on Linux, "unix:@name" for a name in
	// the abstract namespace (Envoy's pipe addresses).
	Address  string
	Weight   uint32 // 1 when zero
	Priority uint32
	Healthy  bool
	// TransportSocket names the entry of the cluster's
	// TransportSocketMatches this endpoint connects with; "" is the
	// cluster's own TLS (or plaintext).
	TransportSocket string
}

// UnixAddressPrefix starts an Endpoint address that is a unix socket.
const UnixAddressPrefix = "unix:"

// TransportSocketMatch is one named transport socket of a cluster, for
// the endpoints whose metadata selected it (Envoy's
// transport_socket_matches; Istio's "tlsMode-istio" mTLS and
// "tlsMode-disabled" plaintext).
type TransportSocketMatch struct {
	Name string
	// TLS originates TLS to the endpoints that use this match; nil is
	// plaintext.
	TLS *UpstreamTLS
}

// CircuitBreakers are per-cluster limits (Envoy's default thresholds).
type CircuitBreakers struct {
	MaxConnections     int
	MaxPendingRequests int
	MaxRequests        int
	MaxRetries         int
	// RetryBudgetPercent, when > 0, caps active retries to this percentage of
	// active requests, but never below MinRetryConcurrency.
	RetryBudgetPercent  float64
	MinRetryConcurrency int
}

// DefaultCircuitBreakers are Envoy's defaults.
func DefaultCircuitBreakers() CircuitBreakers {
	return CircuitBreakers{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}
}

// TypeHeaderMutation is the type URL of Envoy's header_mutation filter, which
// Sluice implements natively; its config (and per-route override) is a
// *HeaderMutationConfig.
const (
	TypeHeaderMutation         = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
	TypeHeaderMutationPerRoute = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
	// TypeRouter is Envoy's terminal router filter; the proxy layer is the
	// router, so translators drop it after checking it is last.
	TypeRouter = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
)

// TypeRulesSource is the type of a Sluice rule-language filter given as
// source text, the way an xDS control plane sends one: an
// xds.type.v3.TypedStruct whose type_url is this and whose value is
// {"source": "on request ... { } ...", "name": "label for errors"}. Its
// config is a *RulesSource, compiled by the rule language's compiler.
const TypeRulesSource = "type.googleapis.com/sluice.filters.rules.v1.Rules"

// RulesSource is a rules filter in the rule language's source form: `on
// request` and `on response` blocks (routes come by RDS).
type RulesSource struct {
	Name   string // labels errors ("name:line:col"); the filter's name when empty
	Source string
}

// HeaderMutationConfig configures the native header mutation filter.
type HeaderMutationConfig struct {
	HeaderMutations
}

// StructField reads a TypedStruct field (UndecodedConfig.Fields) by its
// proto name or its JSON (lowerCamelCase) name: control planes send either.
func StructField(m map[string]any, name string) (any, bool) {
	if v, ok := m[name]; ok {
		return v, true
	}
	parts := strings.Split(name, "_")
	for i := 1; i < len(parts); i++ {
		if parts[i] != "" {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
	}
	v, ok := m[strings.Join(parts, "")]
	return v, ok
}

// UndecodedConfig is the config of a filter whose protobuf type is not
// linked into Sluice (Istio's istio.stats, istio.metadata_exchange, ...):
// a front-end accepts it by type URL and hands it on as it came, for the
// native compiler registered under TypeURL to read.
type UndecodedConfig struct {
	TypeURL string
	// Value is the serialized message (an Any's value); nil when the
	// config came as a TypedStruct.
	Value []byte
	// Fields is a TypedStruct's value (xds.type.v3 or udpa.type.v1) as
	// Go values in protobuf's JSON mapping (map[string]any, []any,
	// string, float64, bool).
	Fields map[string]any
	// Node is the proxy's identity (the bootstrap's node), which Istio's
	// filters report to their peers and in their metrics; nil: unknown.
	Node *Node
	// TrafficDirection is that of the listener the filter belongs to
	// (TrafficInbound, TrafficOutbound or "").
	TrafficDirection string
	// ClusterMetadata is the Metadata of every cluster of the snapshot
	// by cluster name, for filters that describe the upstream a request
	// went to (Istio's stats read the "istio" namespace).
	ClusterMetadata map[string]map[string]map[string]any
}

// Node is the proxy's identity, Envoy's bootstrap node.
type Node struct {
	ID       string
	Cluster  string
	Metadata map[string]any
}

// Type URLs of Istio's filters. Their protobuf types are not in
// go-control-plane, so their configs are *UndecodedConfig.
const (
	TypeIstioALPN             = "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"
	TypeIstioStats            = "type.googleapis.com/stats.PluginConfig"
	TypeIstioPeerMetadata     = "type.googleapis.com/io.istio.http.peer_metadata.Config"
	TypeIstioMetadataExchange = "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"
	TypeIstioNetworkAuthn     = "type.googleapis.com/io.istio.network.authn.Config"
)

// Connection manager features that the native filters of
// engine/filters/istio implement; a front-end puts them first in an HCM's
// filter chain, where Envoy's connection manager applies them before any
// filter.
const (
	// TypeNormalizePath normalizes the request path (Envoy's
	// normalize_path and merge_slashes); config *NormalizePathConfig.
	TypeNormalizePath = "sluice.normalize_path"
	// TypeForwardClientCert handles x-forwarded-client-cert (Envoy's
	// forward_client_cert_details); config *ForwardClientCertConfig.
	TypeForwardClientCert = "sluice.forward_client_cert"
)

// NormalizePathConfig configures TypeNormalizePath.
type NormalizePathConfig struct {
	// Normalize applies RFC 3986 normalization: percent-encoded
	// unreserved characters decoded, dot segments removed.
	Normalize bool
	// MergeSlashes collapses runs of "/" into one.
	MergeSlashes bool
}

// ForwardClientCertConfig configures TypeForwardClientCert.
type ForwardClientCertConfig struct {
	// Mode is Envoy's forward_client_cert_details: "SANITIZE",
	// "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET" or
	// "ALWAYS_FORWARD_ONLY".
	Mode string
	// What APPEND_FORWARD and SANITIZE_SET add about the client's
	// certificate (set_current_client_cert_details); the hash is always
	// added.
	Subject, Cert, Chain, DNS, URI bool
}
