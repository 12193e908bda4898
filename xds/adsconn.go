package xds

import (
	ctls "crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	enginetls "github.com/sluice-proxy/sluice/engine/tls"
)

// defaultMaxADSMessage bounds one message from the control plane. Envoy
// sets no bound; gRPC's default (4 MiB) is too small for the CDS or EDS
// response of a large mesh.
const defaultMaxADSMessage = 256 << 20

var (
	// timeout and retry_policy are ignored: they bound and retry unary
	// calls, and the ADS stream is retried by the client's own backoff.
	grpcServiceFields = knownFields(&corev3.GrpcService{}, "envoy_grpc", "google_grpc", "initial_metadata",
		"timeout", "retry_policy")
	// skip_envoy_headers is honoured: Sluice sends no x-envoy-* headers.
	envoyGrpcFields  = knownFields(&corev3.GrpcService_EnvoyGrpc{}, "cluster_name", "authority", "max_receive_message_length", "skip_envoy_headers")
	googleGrpcFields = knownFields(&corev3.GrpcService_GoogleGrpc{}, "target_uri", "channel_credentials", "stat_prefix")
	sslCredsFields   = knownFields(&corev3.GrpcService_GoogleGrpc_SslCredentials{}, "root_certs", "private_key", "cert_chain")
	// The control plane's cluster is dialled by the xDS client, not the
	// engine: only what the dial uses is known.
	adsClusterFields = knownFields(&clusterv3.Cluster{}, "name", "type", "connect_timeout", "load_assignment",
		"transport_socket",
		// Ignored: gRPC is HTTP/2 whatever they say, and the rest tunes
		// the engine's pools, which do not carry the ADS stream.
		"typed_extension_protocol_options", "http2_protocol_options", "lb_policy", "circuit_breakers", "upstream_connection_options", "alt_stat_name", "metadata",
		"dns_lookup_family", "dns_refresh_rate", "respect_dns_ttl", "common_lb_config", "max_requests_per_connection",
		"per_connection_buffer_limit_bytes")
)

// controlPlane says how to reach the control plane.
type controlPlane struct {
	target string
	opts   []grpc.DialOption
	md     metadata.MD
}

// controlPlaneOf reads ads_config.grpc_services[0]: envoy_grpc names a
// static cluster whose first endpoint (a TCP address or a unix pipe) is
// dialled, over TLS when the cluster has an UpstreamTlsContext (Envoy's
// verification rules, see engine/tls.ClientConfig); google_grpc gives a
// gRPC target URI, over TLS with ssl_credentials (gRPC's rules: the
// server's name is verified).
func controlPlaneOf(gs *corev3.GrpcService, clusters []*clusterv3.Cluster) (*controlPlane, error) {
	if err := grpcServiceFields.check(gs); err != nil {
		return nil, err
	}
	cp := &controlPlane{md: metadata.MD{}}
	for i, h := range gs.GetInitialMetadata() {
		if h.GetRawValue() != nil {
			return nil, inIndex(unsupported("raw_value"), "initial_metadata", i)
		}
		cp.md.Append(strings.ToLower(h.GetKey()), h.GetValue())
	}
	maxMsg := defaultMaxADSMessage
	switch s := gs.GetTargetSpecifier().(type) {
	case *corev3.GrpcService_EnvoyGrpc_:
		eg := s.EnvoyGrpc
		if err := envoyGrpcFields.check(eg); err != nil {
			return nil, inField(err, "envoy_grpc")
		}
		var c *clusterv3.Cluster
		for _, sc := range clusters {
			if sc.GetName() == eg.GetClusterName() {
				c = sc
			}
		}
		if c == nil {
			return nil, inField(fmt.Errorf("no static cluster %q", eg.GetClusterName()), "envoy_grpc.cluster_name")
		}
		target, opts, err := dialCluster(c)
		if err != nil {
			return nil, inField(inNamed(err, "cluster", c.GetName()), "envoy_grpc.cluster_name")
		}
		cp.target, cp.opts = target, opts
		if a := eg.GetAuthority(); a != "" {
			cp.opts = append(cp.opts, grpc.WithAuthority(a))
		}
		if n := eg.GetMaxReceiveMessageLength(); n != nil && n.GetValue() > 0 {
			maxMsg = int(min(n.GetValue(), 1<<31-1))
		}
	case *corev3.GrpcService_GoogleGrpc_:
		gg := s.GoogleGrpc
		if err := googleGrpcFields.check(gg); err != nil {
			return nil, inField(err, "google_grpc")
		}
		creds, err := googleCredentials(gg.GetChannelCredentials())
		if err != nil {
			return nil, inField(inField(err, "channel_credentials"), "google_grpc")
		}
		cp.target = gg.GetTargetUri()
		cp.opts = []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	default:
		return nil, errors.New("envoy_grpc or google_grpc is required")
	}
	cp.opts = append(cp.opts, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg)))
	return cp, nil
}

// dialCluster returns the gRPC target and dial options of a static
// cluster's first endpoint.
func dialCluster(c *clusterv3.Cluster) (string, []grpc.DialOption, error) {
	if err := adsClusterFields.check(c); err != nil {
		return "", nil, err
	}
	switch t := c.GetType(); t {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
	default:
		return "", nil, unsupportedValue("type", t)
	}
	var target string
	ep := c.GetLoadAssignment().GetEndpoints()
	if len(ep) == 0 || len(ep[0].GetLbEndpoints()) == 0 {
		return "", nil, inField(errors.New("an endpoint is required"), "load_assignment")
	}
	addr := ep[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
	where := func(err error) error {
		return inField(err, "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address")
	}
	switch a := addr.GetAddress().(type) {
	case *corev3.Address_SocketAddress:
		sa := a.SocketAddress
		if err := socketAddressFields.check(sa); err != nil {
			return "", nil, where(inField(err, "socket_address"))
		}
		if sa.GetProtocol() != corev3.SocketAddress_TCP || sa.GetAddress() == "" {
			return "", nil, where(errors.New("socket_address: a TCP address is required"))
		}
		target = "dns:///" + net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10))
	case *corev3.Address_Pipe:
		p := a.Pipe.GetPath()
		switch {
		case strings.HasPrefix(p, "@"):
			target = "unix-abstract:" + p[1:]
		case strings.HasPrefix(p, "/"):
			target = "unix://" + p
		default:
			target = "unix:" + p
		}
	default:
		return "", nil, where(errors.New("a socket_address or pipe is required"))
	}
	timeout, err := durationField(c.GetConnectTimeout(), defaultConnectTimeout, "connect_timeout")
	if err != nil {
		return "", nil, err
	}
	creds := insecure.NewCredentials()
	if ts := c.GetTransportSocket(); ts != nil {
		tt, err := transportSocket(ts)
		if err != nil {
			return "", nil, inField(err, "transport_socket")
		}
		if m, ok := tt.msg.(*tlsv3.UpstreamTlsContext); ok {
			u, err := upstreamTLS(m, nil, nil)
			if err != nil {
				return "", nil, inField(inField(err, "typed_config"), "transport_socket")
			}
			cfg, err := enginetls.ClientConfig(u, []string{"h2"})
			if err != nil {
				return "", nil, inField(err, "transport_socket")
			}
			creds = credentials.NewTLS(cfg)
		} else if tt.msg != nil {
			return "", nil, inField(fmt.Errorf("%s: a cluster takes %s or %s", tt.url, nameUpstreamTLS, nameRawBuffer), "transport_socket")
		}
	}
	return target, []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: max(timeout, time.Second)}),
	}, nil
}

// googleCredentials builds google_grpc channel credentials: none
// (plaintext), or ssl_credentials (the system's roots unless root_certs).
func googleCredentials(cc *corev3.GrpcService_GoogleGrpc_ChannelCredentials) (credentials.TransportCredentials, error) {
	switch c := cc.GetCredentialSpecifier().(type) {
	case nil, *corev3.GrpcService_GoogleGrpc_ChannelCredentials_LocalCredentials:
		return insecure.NewCredentials(), nil
	case *corev3.GrpcService_GoogleGrpc_ChannelCredentials_SslCredentials:
		ssl := c.SslCredentials
		if err := sslCredsFields.check(ssl); err != nil {
			return nil, inField(err, "ssl_credentials")
		}
		cfg := &ctls.Config{MinVersion: ctls.VersionTLS12}
		if ssl.GetRootCerts() != nil {
			pem, err := dataSource(ssl.GetRootCerts(), maxDataSourceFile)
			if err != nil {
				return nil, inField(inField(err, "root_certs"), "ssl_credentials")
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM([]byte(pem)) {
				return nil, inField(inField(errors.New("no PEM certificate"), "root_certs"), "ssl_credentials")
			}
		}
		if (ssl.GetCertChain() == nil) != (ssl.GetPrivateKey() == nil) {
			return nil, inField(errors.New("cert_chain and private_key go together"), "ssl_credentials")
		}
		if ssl.GetCertChain() != nil {
			chain, err := dataSource(ssl.GetCertChain(), maxDataSourceFile)
			if err != nil {
				return nil, inField(inField(err, "cert_chain"), "ssl_credentials")
			}
			key, err := dataSource(ssl.GetPrivateKey(), maxDataSourceFile)
			if err != nil {
				return nil, inField(inField(err, "private_key"), "ssl_credentials")
			}
			cert, err := ctls.X509KeyPair([]byte(chain), []byte(key))
			if err != nil {
				return nil, inField(err, "ssl_credentials")
			}
			cfg.Certificates = []ctls.Certificate{cert}
		}
		return credentials.NewTLS(cfg), nil
	default:
		r := cc.ProtoReflect()
		return nil, unsupported(string(r.WhichOneof(r.Descriptor().Oneofs().ByName("credential_specifier")).Name()))
	}
}
