package xds

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-proxy/sluice/engine/config"
)

var (
	downstreamTLSFields = knownFields(&tlsv3.DownstreamTlsContext{},
		"common_tls_context", "require_client_certificate",
		// Checked below: only false is accepted.
		"require_sni",
		// Honoured as is: a crypto/tls server keeps no session cache, so
		// stateful resumption is always off.
		"disable_stateful_session_resumption",
		// Ignored: crypto/tls chooses cipher suites by its own order
		// whatever either side prefers; OCSP stapling policy only matters
		// with staples, which are rejected; Sluice always looks at every
		// certificate's names when it selects by SNI.
		"prefer_client_ciphers", "ocsp_staple_policy", "full_scan_certs_on_sni_mismatch")
	upstreamTLSFields = knownFields(&tlsv3.UpstreamTlsContext{},
		"common_tls_context", "sni",
		// Checked below: auto_host_sni is applied when every endpoint has
		// the same host name.
		"auto_host_sni",
		// Ignored: the size of the client session cache (performance).
		"max_session_keys")
	// key_log is ignored: it only writes session keys for debugging.
	commonTLSFields = knownFields(&tlsv3.CommonTlsContext{},
		"tls_params", "tls_certificates", "tls_certificate_sds_secret_configs", "validation_context",
		"validation_context_sds_secret_config", "combined_validation_context", "alpn_protocols", "key_log")
	tlsParamsFields      = knownFields(&tlsv3.TlsParameters{}, "tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites")
	tlsCertificateFields = knownFields(&tlsv3.TlsCertificate{}, "certificate_chain", "private_key")
	// Both are required by the proto's validation rules.
	combinedValidationFields = knownFields(&tlsv3.CommonTlsContext_CombinedCertificateValidationContext{},
		"default_validation_context", "validation_context_sds_secret_config")
	// Downstream validation: the CA and subject alt names of client
	// certificates (Istio's inbound listeners check the peer's trust
	// domain with a prefix match).
	downstreamValidationFields = knownFields(&tlsv3.CertificateValidationContext{}, "trusted_ca",
		"match_typed_subject_alt_names", "match_subject_alt_names")
	upstreamValidationFields = knownFields(&tlsv3.CertificateValidationContext{}, "trusted_ca",
		"match_typed_subject_alt_names", "match_subject_alt_names")
	sanMatcherFields  = knownFields(&tlsv3.SubjectAltNameMatcher{}, "san_type", "matcher")
	tlsDataSourceKeys = knownFields(&corev3.DataSource{}, "filename", "inline_bytes", "inline_string")
)

// downstreamTLS translates a filter chain's DownstreamTlsContext.
func downstreamTLS(m *tlsv3.DownstreamTlsContext, d *deps) (*config.DownstreamTLS, error) {
	if err := downstreamTLSFields.check(m); err != nil {
		return nil, err
	}
	if boolean(m.GetRequireSni(), false) {
		return nil, unsupportedValue("require_sni", true)
	}
	out := &config.DownstreamTLS{RequireClientCertificate: boolean(m.GetRequireClientCertificate(), false)}
	ctx := m.GetCommonTlsContext()
	if ctx == nil {
		return nil, inField(errors.New("tls_certificates: a certificate is required"), "common_tls_context")
	}
	err := func() error {
		if err := commonTLSFields.check(ctx); err != nil {
			return err
		}
		out.ALPN = slices.Clone(ctx.GetAlpnProtocols())
		var err error
		if out.Params, err = tlsParams(ctx.GetTlsParams()); err != nil {
			return inField(err, "tls_params")
		}
		if out.Certificates, err = certificates(ctx, d); err != nil {
			return err
		}
		if len(out.Certificates) == 0 {
			return errors.New("tls_certificates: a certificate is required")
		}
		vc, within, err := validationContext(ctx, d)
		if err != nil || vc == nil {
			return err
		}
		if err := downstreamValidationFields.check(vc); err != nil {
			return within(err)
		}
		if vc.GetTrustedCa() != nil {
			if out.ClientCA, err = tlsDataSource(vc.GetTrustedCa()); err != nil {
				return within(inField(err, "trusted_ca"))
			}
		}
		if out.ClientSubjectAltNames, err = clientSANs(vc); err != nil {
			return within(err)
		}
		if len(out.ClientSubjectAltNames) > 0 && vc.GetTrustedCa() == nil {
			// Envoy would then check the names of a certificate it did not
			// verify; Sluice asks for client certificates only with a CA.
			return within(fmt.Errorf("match_subject_alt_names without trusted_ca: %w", ErrUnsupported))
		}
		return nil
	}()
	if err != nil {
		return nil, inField(err, "common_tls_context")
	}
	return out, nil
}

// upstreamTLS translates a cluster's UpstreamTlsContext. endpoints are the
// cluster's, for auto_host_sni.
func upstreamTLS(m *tlsv3.UpstreamTlsContext, endpoints []*config.Endpoint, d *deps) (*config.UpstreamTLS, error) {
	if err := upstreamTLSFields.check(m); err != nil {
		return nil, err
	}
	out := &config.UpstreamTLS{SNI: m.GetSni()}
	if m.GetAutoHostSni() && out.SNI == "" {
		sni, err := sharedHostName(endpoints)
		if err != nil {
			return nil, inField(err, "auto_host_sni")
		}
		out.SNI = sni
	}
	ctx := m.GetCommonTlsContext()
	if ctx == nil {
		// Envoy's default: TLS without a client certificate or
		// verification of the upstream's.
		return out, nil
	}
	err := func() error {
		if err := commonTLSFields.check(ctx); err != nil {
			return err
		}
		out.ALPN = slices.Clone(ctx.GetAlpnProtocols())
		var err error
		if out.Params, err = tlsParams(ctx.GetTlsParams()); err != nil {
			return inField(err, "tls_params")
		}
		certs, err := certificates(ctx, d)
		if err != nil {
			return err
		}
		switch len(certs) {
		case 0:
		case 1:
			out.Certificate = &certs[0]
		default:
			return inField(errors.New("an upstream TLS context takes at most one client certificate"), "tls_certificates")
		}
		vc, within, err := validationContext(ctx, d)
		if err != nil || vc == nil {
			return err
		}
		return within(upstreamValidation(vc, out))
	}()
	if err != nil {
		return nil, inField(err, "common_tls_context")
	}
	return out, nil
}

// sharedHostName is auto_host_sni for the config model, whose SNI is one
// name per cluster: it works when every endpoint has the same host name.
func sharedHostName(endpoints []*config.Endpoint) (string, error) {
	name := ""
	for _, e := range endpoints {
		host, _, err := net.SplitHostPort(e.Address)
		if err != nil {
			return "", err
		}
		if _, err := netip.ParseAddr(host); err == nil || (name != "" && host != name) {
			name = ""
			break
		}
		name = host
	}
	if name == "" {
		return "", fmt.Errorf("the endpoints do not all have the same host name (the SNI of a cluster is one name): %w", ErrUnsupported)
	}
	return name, nil
}

// certificates returns a context's certificates: tls_certificates, then
// those of the secrets tls_certificate_sds_secret_configs names. A secret
// that has not arrived yet counts as a zero certificate: the resource
// waits for it (see deps) and its translation is not used meanwhile.
func certificates(ctx *tlsv3.CommonTlsContext, d *deps) ([]config.Certificate, error) {
	var out []config.Certificate
	for i, c := range ctx.GetTlsCertificates() {
		cert, err := tlsCertificate(c)
		if err != nil {
			return nil, inIndex(err, "tls_certificates", i)
		}
		out = append(out, cert)
	}
	for i, sc := range ctx.GetTlsCertificateSdsSecretConfigs() {
		cert, err := func() (config.Certificate, error) {
			s, err := d.secret(sc)
			if err != nil || s == nil {
				return config.Certificate{}, err
			}
			if s.GetTlsCertificate() == nil {
				return config.Certificate{}, blame(inNamed(errors.New("a tls_certificate is required"), "secret", s.GetName()), tSecret, s.GetName())
			}
			if err := secretFields.check(s); err != nil {
				return config.Certificate{}, blame(inNamed(err, "secret", s.GetName()), tSecret, s.GetName())
			}
			cert, err := tlsCertificate(s.GetTlsCertificate())
			return cert, blame(inNamed(inField(err, "tls_certificate"), "secret", s.GetName()), tSecret, s.GetName())
		}()
		if err != nil {
			return nil, inIndex(err, "tls_certificate_sds_secret_configs", i)
		}
		out = append(out, cert)
	}
	return out, nil
}

// validationContext returns the certificate validation context of a TLS
// context: validation_context; the validation_context of the secret
// validation_context_sds_secret_config names; or, for
// combined_validation_context, its default_validation_context with its
// secret's merged over it (Envoy's rule: fields set in the secret win,
// lists are joined). within locates errors in the returned context (nil
// stays nil). A
// secret that has not arrived yet gives a nil context: the resource waits
// for it.
func validationContext(ctx *tlsv3.CommonTlsContext, d *deps) (_ *tlsv3.CertificateValidationContext, within func(error) error, _ error) {
	fromSecret := func(sc *tlsv3.SdsSecretConfig) (*tlsv3.CertificateValidationContext, func(error) error, error) {
		s, err := d.secret(sc)
		if err != nil || s == nil {
			return nil, nil, err
		}
		in := func(err error) error {
			return blame(inNamed(inField(err, "validation_context"), "secret", s.GetName()), tSecret, s.GetName())
		}
		if s.GetValidationContext() == nil {
			return nil, nil, blame(inNamed(errors.New("a validation_context is required"), "secret", s.GetName()), tSecret, s.GetName())
		}
		if err := secretFields.check(s); err != nil {
			return nil, nil, blame(inNamed(err, "secret", s.GetName()), tSecret, s.GetName())
		}
		return s.GetValidationContext(), in, nil
	}
	switch vc := ctx.GetValidationContextType().(type) {
	case nil:
		return nil, nil, nil
	case *tlsv3.CommonTlsContext_ValidationContext:
		return vc.ValidationContext, func(err error) error { return inField(err, "validation_context") }, nil
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		v, in, err := fromSecret(vc.ValidationContextSdsSecretConfig)
		if err != nil {
			return nil, nil, inField(err, "validation_context_sds_secret_config")
		}
		return v, func(err error) error { return inField(in(err), "validation_context_sds_secret_config") }, nil
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		cvc := vc.CombinedValidationContext
		if err := combinedValidationFields.check(cvc); err != nil {
			return nil, nil, inField(err, "combined_validation_context")
		}
		v, _, err := fromSecret(cvc.GetValidationContextSdsSecretConfig())
		if err != nil {
			return nil, nil, inField(inField(err, "validation_context_sds_secret_config"), "combined_validation_context")
		}
		if v == nil {
			return nil, nil, nil
		}
		merged := proto.Clone(cvc.GetDefaultValidationContext()).(*tlsv3.CertificateValidationContext)
		proto.Merge(merged, v)
		return merged, func(err error) error {
			if err == nil {
				return nil
			}
			return inField(fmt.Errorf("merged with secret %q: %w", cvc.GetValidationContextSdsSecretConfig().GetName(), err),
				"combined_validation_context")
		}, nil
	default:
		return nil, nil, unsupported("validation_context_type")
	}
}

func tlsParams(p *tlsv3.TlsParameters) (config.TLSParams, error) {
	var out config.TLSParams
	if p == nil {
		return out, nil
	}
	if err := tlsParamsFields.check(p); err != nil {
		return out, err
	}
	// Cipher suite names are checked by the engine when it compiles the
	// snapshot, against what crypto/tls implements.
	out.CipherSuites = slices.Clone(p.GetCipherSuites())
	if v := p.GetTlsMinimumProtocolVersion(); v != tlsv3.TlsParameters_TLS_AUTO {
		out.MinVersion = v.String()
	}
	if v := p.GetTlsMaximumProtocolVersion(); v != tlsv3.TlsParameters_TLS_AUTO {
		out.MaxVersion = v.String()
	}
	return out, nil
}

func tlsCertificate(c *tlsv3.TlsCertificate) (config.Certificate, error) {
	var out config.Certificate
	if err := tlsCertificateFields.check(c); err != nil {
		return out, err
	}
	if c.GetCertificateChain() == nil || c.GetPrivateKey() == nil {
		return out, errors.New("certificate_chain and private_key are required")
	}
	var err error
	if out.Chain, err = tlsDataSource(c.GetCertificateChain()); err != nil {
		return out, inField(err, "certificate_chain")
	}
	if out.Key, err = tlsDataSource(c.GetPrivateKey()); err != nil {
		return out, inField(err, "private_key")
	}
	return out, nil
}

// upstreamValidation translates the validation context of an upstream:
// the CA and exact DNS or URI subject alt names.
func upstreamValidation(vc *tlsv3.CertificateValidationContext, out *config.UpstreamTLS) error {
	if err := upstreamValidationFields.check(vc); err != nil {
		return err
	}
	if vc.GetTrustedCa() != nil {
		ca, err := tlsDataSource(vc.GetTrustedCa())
		if err != nil {
			return inField(err, "trusted_ca")
		}
		out.CA = ca
	}
	for i, m := range vc.GetMatchTypedSubjectAltNames() {
		if err := sanMatcherFields.check(m); err != nil {
			return inIndex(err, "match_typed_subject_alt_names", i)
		}
		switch t := m.GetSanType(); t {
		case tlsv3.SubjectAltNameMatcher_DNS, tlsv3.SubjectAltNameMatcher_URI:
		default:
			return inIndex(unsupportedValue("san_type", t), "match_typed_subject_alt_names", i)
		}
		name, err := exactName(m.GetMatcher())
		if err != nil {
			return inIndex(inField(err, "matcher"), "match_typed_subject_alt_names", i)
		}
		out.SubjectAltNames = append(out.SubjectAltNames, name)
	}
	// The deprecated untyped form matches any SAN type; the model's list
	// is DNS and URI names.
	for i, m := range vc.GetMatchSubjectAltNames() {
		name, err := exactName(m)
		if err != nil {
			return inIndex(err, "match_subject_alt_names", i)
		}
		out.SubjectAltNames = append(out.SubjectAltNames, name)
	}
	return nil
}

// clientSANs translates the subject alt name matchers of a downstream
// validation context: any string match, on DNS and URI names.
func clientSANs(vc *tlsv3.CertificateValidationContext) ([]config.SANMatcher, error) {
	var out []config.SANMatcher
	for i, m := range vc.GetMatchTypedSubjectAltNames() {
		if err := sanMatcherFields.check(m); err != nil {
			return nil, inIndex(err, "match_typed_subject_alt_names", i)
		}
		var kind config.SANKind
		switch t := m.GetSanType(); t {
		case tlsv3.SubjectAltNameMatcher_DNS:
			kind = config.SANDNS
		case tlsv3.SubjectAltNameMatcher_URI:
			kind = config.SANURI
		default:
			return nil, inIndex(unsupportedValue("san_type", t), "match_typed_subject_alt_names", i)
		}
		sm, err := stringMatcher(m.GetMatcher())
		if err != nil {
			return nil, inIndex(inField(err, "matcher"), "match_typed_subject_alt_names", i)
		}
		out = append(out, config.SANMatcher{Kind: kind, Match: *sm})
	}
	for i, m := range vc.GetMatchSubjectAltNames() {
		sm, err := stringMatcher(m)
		if err != nil {
			return nil, inIndex(err, "match_subject_alt_names", i)
		}
		out = append(out, config.SANMatcher{Kind: config.SANAny, Match: *sm})
	}
	return out, nil
}

// exactName accepts a case-sensitive exact StringMatcher, the only subject
// alt name match the config model has.
func exactName(m *matcherv3.StringMatcher) (string, error) {
	if m == nil {
		return "", errors.New("a matcher is required")
	}
	x, ok := m.GetMatchPattern().(*matcherv3.StringMatcher_Exact)
	if !ok || m.GetIgnoreCase() {
		return "", fmt.Errorf("only a case-sensitive exact match is supported: %w", ErrUnsupported)
	}
	if x.Exact == "" {
		return "", errors.New("exact: an empty name matches nothing")
	}
	return x.Exact, nil
}

// tlsDataSource translates a DataSource holding PEM. Unlike dataSource it
// does not read files: the engine reads them each time it compiles a
// snapshot, so a reload picks up renewed certificates. Environment
// variables are not supported: the model has files and inline data.
func tlsDataSource(ds *corev3.DataSource) (config.DataSource, error) {
	if err := tlsDataSourceKeys.check(ds); err != nil {
		return config.DataSource{}, err
	}
	switch x := ds.GetSpecifier().(type) {
	case *corev3.DataSource_Filename:
		return config.DataSource{Filename: x.Filename}, nil
	case *corev3.DataSource_InlineBytes:
		return config.DataSource{Inline: append([]byte{}, x.InlineBytes...)}, nil
	case *corev3.DataSource_InlineString:
		return config.DataSource{Inline: []byte(x.InlineString)}, nil
	}
	return config.DataSource{}, errors.New("one of filename, inline_bytes or inline_string is required")
}
