package compile

import (
	"strconv"
	"strings"

	"github.com/sluice-proxy/sluice/dsl/internal/suggest"
	"github.com/sluice-proxy/sluice/dsl/syntax"
	"github.com/sluice-proxy/sluice/engine/config"
)

// tlsVersions are the TLS versions a tls block may name (Envoy's enum
// names, which the config model uses).
var tlsVersions = []string{"TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"}

// tlsBlock is what a tls block says, before the listener or upstream
// specific parts are checked.
type tlsBlock struct {
	certs []*syntax.TLSCert
	// the options that may appear once, by name
	opts   map[string]*syntax.TLSOption
	sans   []*syntax.TLSOption
	alpn   []string
	params config.TLSParams
	ok     bool
}

// tls compiles what is common to the tls blocks of listeners and upstreams:
// certificates are collected, single options checked for duplicates, ALPN
// and cipher suite lists split, versions checked. owner names the block's
// listener or upstream in messages.
func (c *compiler) tls(b *syntax.TLS, owner string) *tlsBlock {
	tb := &tlsBlock{opts: map[string]*syntax.TLSOption{}, ok: true}
	for _, s := range b.Stmts {
		switch s := s.(type) {
		case *syntax.TLSCert:
			tb.certs = append(tb.certs, s)
			tb.ok = c.fileName(s.Cert, "certificate") && tb.ok
			tb.ok = c.fileName(s.Key, "private key") && tb.ok
		case *syntax.TLSOption:
			name := s.Name.Name
			if name == "san" {
				if s.Value.Value == "" {
					c.errorf(s.Value.Pos, "", "empty subject alt name")
					tb.ok = false
				}
				tb.sans = append(tb.sans, s)
				continue
			}
			if prev := tb.opts[name]; prev != nil {
				c.errorf(s.Pos, "", "duplicate %s in the tls block of %s (first at %s)", name, owner, prev.Pos)
				tb.ok = false
				continue
			}
			tb.opts[name] = s
			switch name {
			case "alpn":
				tb.alpn = c.list(s.Value, "protocol", `as in alpn "h2,http/1.1"`)
				tb.ok = tb.alpn != nil && tb.ok
			case "cipher_suites":
				// Names are checked by the engine, which knows what
				// crypto/tls implements.
				tb.params.CipherSuites = c.list(s.Value, "cipher suite", `as in cipher_suites "ECDHE-ECDSA-AES128-GCM-SHA256,ECDHE-RSA-AES128-GCM-SHA256"`)
				tb.ok = tb.params.CipherSuites != nil && tb.ok
			case "min_version":
				tb.params.MinVersion = c.tlsVersion(s.Value)
				tb.ok = tb.params.MinVersion != "" && tb.ok
			case "max_version":
				tb.params.MaxVersion = c.tlsVersion(s.Value)
				tb.ok = tb.params.MaxVersion != "" && tb.ok
			case "client_ca", "ca":
				tb.ok = c.fileName(s.Value, "CA") && tb.ok
			case "sni":
				if s.Value.Value == "" {
					c.errorf(s.Value.Pos, "remove the line to send no server name", "empty sni")
					tb.ok = false
				}
			}
		}
	}
	if lo, hi := tb.params.MinVersion, tb.params.MaxVersion; lo != "" && hi != "" && hi < lo {
		c.errorf(tb.opts["max_version"].Value.Pos, "", "max_version %s is below min_version %s", hi, lo)
		tb.ok = false
	}
	return tb
}

// listenerTLS compiles a listener's tls block.
func (c *compiler) listenerTLS(b *syntax.TLS, listener string) *config.DownstreamTLS {
	tb := c.tls(b, "listener "+strconv.Quote(listener))
	out := &config.DownstreamTLS{ALPN: tb.alpn, Params: tb.params}
	for _, s := range tb.certs {
		out.Certificates = append(out.Certificates, config.Certificate{Chain: file(s.Cert), Key: file(s.Key)})
	}
	if len(tb.certs) == 0 {
		c.errorf(b.Pos, `add a line such as: cert "server.pem" key "server.key"`, "the tls block of listener %q has no certificate", listener)
		tb.ok = false
	}
	if ca := tb.opts["client_ca"]; ca != nil {
		out.ClientCA = file(ca.Value)
	}
	if req := tb.opts["require_client_cert"]; req != nil {
		out.RequireClientCertificate = true
		if tb.opts["client_ca"] == nil {
			c.errorf(req.Pos, `add a line such as: client_ca "clients-ca.pem"`,
				"require_client_cert needs client_ca: client certificates are verified against it")
			tb.ok = false
		}
	}
	if !tb.ok {
		return nil
	}
	return out
}

// upstreamTLS compiles an upstream's tls block.
func (c *compiler) upstreamTLS(b *syntax.TLS, upstream string) *config.UpstreamTLS {
	tb := c.tls(b, "upstream "+strconv.Quote(upstream))
	out := &config.UpstreamTLS{ALPN: tb.alpn, Params: tb.params}
	if sni := tb.opts["sni"]; sni != nil {
		out.SNI = sni.Value.Value
	}
	if ca := tb.opts["ca"]; ca != nil {
		out.CA = file(ca.Value)
	}
	for i, s := range tb.certs {
		if i > 0 {
			c.errorf(s.Pos, "", "the tls block of upstream %q has a client certificate already (at %s): it takes one", upstream, tb.certs[0].Pos)
			tb.ok = false
			continue
		}
		out.Certificate = &config.Certificate{Chain: file(s.Cert), Key: file(s.Key)}
	}
	for _, s := range tb.sans {
		out.SubjectAltNames = append(out.SubjectAltNames, s.Value.Value)
	}
	if len(tb.sans) > 0 && tb.opts["ca"] == nil {
		c.errorf(tb.sans[0].Pos, `add a line such as: ca "upstream-ca.pem"`,
			"san needs ca: without a CA the upstream's certificate is not verified, so its names prove nothing")
		tb.ok = false
	}
	if !tb.ok {
		return nil
	}
	return out
}

// http2 compiles an http2 block.
func (c *compiler) http2(b *syntax.HTTP2, owner string) (config.HTTP2Options, bool) {
	var out config.HTTP2Options
	ok := true
	seen := map[string]syntax.Pos{}
	for _, s := range b.Stmts {
		name := "keepalive"
		if hs, isSetting := s.(*syntax.HTTP2Setting); isSetting {
			name = hs.Name.Name
		}
		if prev, dup := seen[name]; dup {
			c.errorf(s.Info().Pos, "", "duplicate %s in the http2 block of %s (first at %s)", name, owner, prev)
			ok = false
			continue
		}
		seen[name] = s.Info().Pos
		switch s := s.(type) {
		case *syntax.HTTP2Setting:
			v := uint32(s.Value.Int()) // the parser checked the range
			switch name {
			case "max_concurrent_streams":
				out.MaxConcurrentStreams = v
			case "initial_stream_window":
				out.InitialStreamWindowSize = v
			case "initial_connection_window":
				out.InitialConnectionWindowSize = v
			}
		case *syntax.Keepalive:
			if s.Interval.Value <= 0 {
				c.errorf(s.Interval.Pos, "", "the keepalive interval must be greater than 0")
				ok = false
			}
			out.ConnectionKeepaliveInterval = s.Interval.Value
			if s.Timeout != nil {
				if s.Timeout.Value <= 0 {
					c.errorf(s.Timeout.Pos, "", "the keepalive timeout must be greater than 0")
					ok = false
				}
				out.ConnectionKeepaliveTimeout = s.Timeout.Value
			}
		}
	}
	return out, ok
}

// fileName checks a file name of a tls block.
func (c *compiler) fileName(s *syntax.String, what string) bool {
	if strings.TrimSpace(s.Value) == "" {
		c.errorf(s.Pos, "", "empty %s file name", what)
		return false
	}
	return true
}

// file is a file named in a tls block, relative to the naming .sluice file.
// The engine reads it when it applies the config, so a reload picks up a
// renewed certificate (the file is also watched: see WatchPaths).
func file(s *syntax.String) config.DataSource {
	return config.DataSource{Filename: syntax.ResolvePath(s.Pos.File, s.Value)}
}

// list splits a comma-separated list, as in alpn "h2,http/1.1".
func (c *compiler) list(s *syntax.String, what, example string) []string {
	var out []string
	for part := range strings.SplitSeq(s.Value, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			c.errorf(s.Pos, example, "empty %s in the list %s", what, s.Raw)
			return nil
		}
		out = append(out, part)
	}
	return out
}

// tlsVersion checks a TLS version name; "" when it is not one.
func (c *compiler) tlsVersion(s *syntax.String) string {
	for _, v := range tlsVersions {
		if s.Value == v {
			return v
		}
	}
	hint := "expected one of: " + strings.Join(tlsVersions, ", ")
	if m := suggest.Closest(s.Value, tlsVersions); m != "" {
		hint = "did you mean " + m + "? " + hint
	}
	c.errorf(s.Pos, hint, "unknown TLS version %s", s.Raw)
	return ""
}
