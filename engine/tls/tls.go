// Package tls compiles the TLS parts of the config model (downstream TLS of
// a filter chain, upstream TLS of a cluster) into crypto/tls configs. It
// runs when a snapshot is compiled, never per connection: files are read
// then, so a reload picks up renewed certificates.
package tls

import (
	ctls "crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"github.com/sluice-proxy/sluice/engine/config"
)

// ServerConfig compiles a filter chain's downstream TLS. The certificate is
// chosen by SNI: an exact DNS name of a leaf, then a "*." wildcard name,
// else the first certificate. NextProtos is d.ALPN, or defaultALPN when
// that is empty. The result is shared by every connection of the chain and
// must not be changed.
func ServerConfig(d *config.DownstreamTLS, defaultALPN []string) (*ctls.Config, error) {
	if d == nil {
		return nil, errors.New("tls: no downstream TLS config")
	}
	if len(d.Certificates) == 0 {
		return nil, errors.New("tls: downstream TLS has no certificate")
	}
	sel := &certSelector{exact: map[string][]*ctls.Certificate{}, wildcard: map[string][]*ctls.Certificate{}}
	for i := range d.Certificates {
		c, err := loadCertificate(&d.Certificates[i])
		if err != nil {
			return nil, err
		}
		sel.add(c)
	}
	cfg := &ctls.Config{GetCertificate: sel.get}
	if err := applyParams(cfg, &d.Params); err != nil {
		return nil, err
	}
	switch {
	case !d.ClientCA.IsZero():
		pool, err := loadPool(d.ClientCA, "client CA")
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = ctls.VerifyClientCertIfGiven
		if d.RequireClientCertificate {
			cfg.ClientAuth = ctls.RequireAndVerifyClientCert
		}
	case d.RequireClientCertificate:
		// Envoy rejects this too: a client certificate that cannot be
		// verified proves nothing.
		return nil, errors.New("tls: client certificate required but no client CA set")
	}
	if len(d.ClientSubjectAltNames) > 0 {
		if d.ClientCA.IsZero() {
			return nil, errors.New("tls: client subject alt names to match but no client CA set")
		}
		sans, err := compileSANMatchers(d.ClientSubjectAltNames)
		if err != nil {
			return nil, err
		}
		// Called after crypto/tls verified the chain, on full handshakes
		// and resumptions alike.
		cfg.VerifyConnection = func(cs ctls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			return sans.verify(cs.PeerCertificates[0])
		}
	}
	cfg.NextProtos = alpn(d.ALPN, defaultALPN)
	// Session tickets are sealed with this config's own keys (generated
	// and rotated by crypto/tls). Without this, a config returned from a
	// GetConfigForClient callback seals with the caller's base config's
	// keys: tickets would not resume if that config is per connection, and
	// a ticket from a chain could resume on another chain with other
	// client-certificate rules (resumption does not re-verify the peer).
	cfg.WrapSession = func(cs ctls.ConnectionState, ss *ctls.SessionState) ([]byte, error) {
		return cfg.EncryptTicket(cs, ss)
	}
	cfg.UnwrapSession = func(ticket []byte, cs ctls.ConnectionState) (*ctls.SessionState, error) {
		return cfg.DecryptTicket(ticket, cs)
	}
	return cfg, nil
}

// ClientConfig compiles a cluster's upstream TLS. As in Envoy, the
// upstream certificate is verified only when a CA is set, and then against
// that CA alone, without a host name check (the SNI need not be a name in
// the certificate); SubjectAltNames, when set, must then contain one of
// the leaf's DNS or URI SANs. Without a CA the certificate is not verified
// (Envoy without a validation_context), though SubjectAltNames are still
// checked against the presented leaf.
func ClientConfig(u *config.UpstreamTLS, defaultALPN []string) (*ctls.Config, error) {
	if u == nil {
		return nil, errors.New("tls: no upstream TLS config")
	}
	cfg := &ctls.Config{ServerName: u.SNI}
	if err := applyParams(cfg, &u.Params); err != nil {
		return nil, err
	}
	var roots *x509.CertPool
	if !u.CA.IsZero() {
		pool, err := loadPool(u.CA, "CA")
		if err != nil {
			return nil, err
		}
		roots = pool
	}
	if u.Certificate != nil {
		c, err := loadCertificate(u.Certificate)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []ctls.Certificate{*c}
	}
	// crypto/tls's own verification insists on a host name; Envoy's does
	// not, so verification is done in VerifyConnection instead.
	cfg.InsecureSkipVerify = true
	if roots != nil || len(u.SubjectAltNames) > 0 {
		sans := append([]string(nil), u.SubjectAltNames...)
		cfg.VerifyConnection = func(cs ctls.ConnectionState) error {
			return verifyUpstream(cs, roots, sans)
		}
	}
	cfg.NextProtos = alpn(u.ALPN, defaultALPN)
	return cfg, nil
}

func verifyUpstream(cs ctls.ConnectionState, roots *x509.CertPool, sans []string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: upstream sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	if roots != nil {
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
			return fmt.Errorf("tls: upstream certificate: %w", err)
		}
	}
	if len(sans) == 0 {
		return nil
	}
	for _, want := range sans {
		for _, n := range leaf.DNSNames {
			if n == want {
				return nil
			}
		}
		for _, u := range leaf.URIs {
			if u.String() == want {
				return nil
			}
		}
	}
	return fmt.Errorf("tls: upstream certificate SANs %v match none of %q", certSANs(leaf), sans)
}

func certSANs(c *x509.Certificate) []string {
	out := append([]string(nil), c.DNSNames...)
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	return out
}

func alpn(set, def []string) []string {
	if len(set) > 0 {
		return append([]string(nil), set...)
	}
	return append([]string(nil), def...)
}

// certSelector picks a server certificate by SNI.
type certSelector struct {
	all      []*ctls.Certificate
	exact    map[string][]*ctls.Certificate // lower-case DNS name
	wildcard map[string][]*ctls.Certificate // "example.com" for "*.example.com"
}

func (s *certSelector) add(c *ctls.Certificate) {
	s.all = append(s.all, c)
	names := c.Leaf.DNSNames
	if len(names) == 0 && c.Leaf.Subject.CommonName != "" {
		// A legacy certificate without SANs: its CN is its name, as
		// crypto/tls's BuildNameToCertificate and Envoy treat it.
		names = []string{c.Leaf.Subject.CommonName}
	}
	for _, n := range names {
		n = strings.ToLower(n)
		if rest, ok := strings.CutPrefix(n, "*."); ok {
			s.wildcard[rest] = append(s.wildcard[rest], c)
		} else {
			s.exact[n] = append(s.exact[n], c)
		}
	}
}

func (s *certSelector) get(hello *ctls.ClientHelloInfo) (*ctls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name != "" {
		if cs := s.exact[name]; cs != nil {
			return pick(hello, cs), nil
		}
		if _, rest, ok := strings.Cut(name, "."); ok {
			if cs := s.wildcard[rest]; cs != nil {
				return pick(hello, cs), nil
			}
		}
	}
	return pick(hello, s.all), nil
}

// pick returns the first certificate the client can use (an ECDSA and an
// RSA certificate may share names), else the first.
func pick(hello *ctls.ClientHelloInfo, cs []*ctls.Certificate) *ctls.Certificate {
	if len(cs) > 1 {
		for _, c := range cs {
			if hello.SupportsCertificate(c) == nil {
				return c
			}
		}
	}
	return cs[0]
}

// loadCertificate reads and parses a chain and its key.
func loadCertificate(c *config.Certificate) (*ctls.Certificate, error) {
	chainName := sourceName(c.Chain)
	chain, err := readSource(c.Chain)
	if err != nil {
		return nil, fmt.Errorf("tls: certificate %q: %w", chainName, err)
	}
	keyName := sourceName(c.Key)
	key, err := readSource(c.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: private key %q: %w", keyName, err)
	}
	if !hasPEM(chain, "CERTIFICATE") {
		return nil, fmt.Errorf("tls: certificate %q: no PEM CERTIFICATE block", chainName)
	}
	cert, err := ctls.X509KeyPair(chain, key)
	if err != nil {
		return nil, fmt.Errorf("tls: certificate %q with key %q: %w", chainName, keyName, unprefixed{err})
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls: certificate %q: %w", chainName, err)
		}
	}
	return &cert, nil
}

func loadPool(d config.DataSource, what string) (*x509.CertPool, error) {
	name := sourceName(d)
	b, err := readSource(d)
	if err != nil {
		return nil, fmt.Errorf("tls: %s %q: %w", what, name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls: %s %q: no PEM certificate found", what, name)
	}
	return pool, nil
}

func hasPEM(b []byte, typ string) bool {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return false
		}
		if blk.Type == typ {
			return true
		}
	}
}

func sourceName(d config.DataSource) string {
	if d.Filename != "" {
		return d.Filename
	}
	return "<inline>"
}

func readSource(d config.DataSource) ([]byte, error) {
	switch {
	case d.Filename != "":
		b, err := os.ReadFile(d.Filename)
		if err != nil {
			// The path is already in our message: keep the cause only.
			var pe *fs.PathError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("read: %w", pe.Err)
			}
			return nil, err
		}
		return b, nil
	case len(d.Inline) > 0:
		return d.Inline, nil
	}
	return nil, errors.New("empty: neither a file nor inline bytes")
}

// versions are Envoy's TlsParameters.TlsProtocol names.
var versions = map[string]uint16{
	"TLS_AUTO": 0,
	"TLSv1_0":  ctls.VersionTLS10,
	"TLSv1_1":  ctls.VersionTLS11,
	"TLSv1_2":  ctls.VersionTLS12,
	"TLSv1_3":  ctls.VersionTLS13,
}

func applyParams(cfg *ctls.Config, p *config.TLSParams) error {
	var err error
	if cfg.MinVersion, err = version(p.MinVersion, "minimum"); err != nil {
		return err
	}
	if cfg.MaxVersion, err = version(p.MaxVersion, "maximum"); err != nil {
		return err
	}
	if cfg.MinVersion != 0 && cfg.MaxVersion != 0 && cfg.MinVersion > cfg.MaxVersion {
		return fmt.Errorf("tls: minimum version %s is above maximum version %s", p.MinVersion, p.MaxVersion)
	}
	if len(p.CipherSuites) > 0 {
		if cfg.CipherSuites, err = CipherSuites(p.CipherSuites); err != nil {
			return err
		}
	}
	return nil
}

func version(name, which string) (uint16, error) {
	if name == "" {
		return 0, nil
	}
	v, ok := versions[name]
	if !ok {
		return 0, fmt.Errorf("tls: unknown %s version %q (want TLS_AUTO or TLSv1_0 to TLSv1_3)", which, name)
	}
	return v, nil
}

// unprefixed drops crypto/tls's "tls: " from an error wrapped in one of
// ours, which already says "tls:".
type unprefixed struct{ err error }

func (e unprefixed) Error() string { return strings.TrimPrefix(e.err.Error(), "tls: ") }
func (e unprefixed) Unwrap() error { return e.err }

// sanMatchers are compiled ClientSubjectAltNames.
type sanMatchers []sanMatcher

type sanMatcher struct {
	kind  config.SANKind
	match func(string) bool
}

func compileSANMatchers(ms []config.SANMatcher) (sanMatchers, error) {
	out := make(sanMatchers, 0, len(ms))
	for i := range ms {
		f, err := compileStringMatch(&ms[i].Match)
		if err != nil {
			return nil, fmt.Errorf("tls: client subject alt name %d: %w", i, err)
		}
		out = append(out, sanMatcher{kind: ms[i].Kind, match: f})
	}
	return out, nil
}

// verify succeeds when one of the leaf's SANs matches one matcher.
func (ms sanMatchers) verify(leaf *x509.Certificate) error {
	for _, m := range ms {
		if m.kind != config.SANURI {
			for _, n := range leaf.DNSNames {
				if m.match(n) {
					return nil
				}
			}
		}
		if m.kind != config.SANDNS {
			for _, u := range leaf.URIs {
				if m.match(u.String()) {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("tls: client certificate SANs %v match none of the subject alt names allowed", certSANs(leaf))
}

// compileStringMatch compiles a StringMatcher as Envoy applies one: regexes
// match the whole string and ignore IgnoreCase; IgnoreCase folds ASCII.
func compileStringMatch(m *config.StringMatcher) (func(string) bool, error) {
	v := m.Value
	fold := func(s string) string { return s }
	if m.IgnoreCase && m.Kind != config.MatchRegex {
		fold = asciiLower
		v = asciiLower(v)
	}
	switch m.Kind {
	case config.MatchExact:
		return func(s string) bool { return fold(s) == v }, nil
	case config.MatchPrefix:
		return func(s string) bool { return strings.HasPrefix(fold(s), v) }, nil
	case config.MatchSuffix:
		return func(s string) bool { return strings.HasSuffix(fold(s), v) }, nil
	case config.MatchContains:
		return func(s string) bool { return strings.Contains(fold(s), v) }, nil
	case config.MatchRegex:
		re, err := regexp.Compile(`^(?:` + m.Value + `)$`)
		if err != nil {
			return nil, fmt.Errorf("bad regex %q: %w", m.Value, err)
		}
		return re.MatchString, nil
	}
	return nil, fmt.Errorf("unknown string match kind %d", m.Kind)
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
