package istio

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/url"
	"strings"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// NormalizePath compiles *config.NormalizePathConfig: the request path is
// normalized before any other filter sees it or a route is picked, as
// Envoy's connection manager does with normalize_path (RFC 3986:
// percent-encoded unreserved characters decoded, other escapes' hex upper
// case, "\" read as "/", dot segments removed) and merge_slashes. Istio
// turns normalize_path on by default (meshConfig.pathNormalization BASE),
// so authorization policies see the path the application will. The query
// is left as is.
type NormalizePath struct{}

// CompilePerRoute implements stream.Compiler.
func (NormalizePath) CompilePerRoute(any) (any, error) {
	return nil, fmt.Errorf("istio: %s takes no per-route config", config.TypeNormalizePath)
}

// Compile implements stream.Compiler.
func (NormalizePath) Compile(cfg any) (stream.Factory, error) {
	c, ok := cfg.(*config.NormalizePathConfig)
	if !ok || c == nil {
		return nil, fmt.Errorf("istio: normalize path: config is %T, want *config.NormalizePathConfig", cfg)
	}
	nc := *c
	return stream.FactoryFunc(func(cb stream.Callbacks) stream.Filter { return &normalizeFilter{c: &nc, cb: cb} }), nil
}

type normalizeFilter struct {
	stream.PassThrough
	c  *config.NormalizePathConfig
	cb stream.Callbacks
}

func (f *normalizeFilter) OnRequestHeaders(h *header.Map, _ bool) stream.Status {
	p := h.Value(":path")
	if p == "" || p[0] != '/' {
		return stream.Continue // "*" (OPTIONS) and CONNECT targets
	}
	path, query := p, ""
	if i := strings.IndexByte(p, '?'); i >= 0 {
		path, query = p[:i], p[i:]
	}
	np := NormalizedPath(path, f.c.Normalize, f.c.MergeSlashes)
	if np != path {
		h.Set(":path", np+query)
		f.cb.ClearRouteCache()
	}
	return stream.Continue
}

// NormalizedPath normalizes an absolute path (see NormalizePath).
func NormalizedPath(p string, normalize, mergeSlashes bool) string {
	if normalize {
		p = removeDotSegments(canonicalEscapes(p))
	}
	if mergeSlashes && strings.Contains(p, "//") {
		var b strings.Builder
		b.Grow(len(p))
		for i := 0; i < len(p); i++ {
			if p[i] == '/' && i > 0 && p[i-1] == '/' {
				continue
			}
			b.WriteByte(p[i])
		}
		p = b.String()
	}
	return p
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// canonicalEscapes decodes escaped unreserved characters, upper-cases the
// hex of the other escapes and turns "\" into "/".
func canonicalEscapes(p string) string {
	if !strings.ContainsAny(p, `%\`) {
		return p
	}
	const hexUpper = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '\\':
			b.WriteByte('/')
		case c == '%' && i+2 < len(p):
			hi, ok1 := unhex(p[i+1])
			lo, ok2 := unhex(p[i+2])
			if !ok1 || !ok2 {
				b.WriteByte(c)
				continue
			}
			if v := hi<<4 | lo; isUnreserved(v) {
				b.WriteByte(v)
			} else {
				b.WriteByte('%')
				b.WriteByte(hexUpper[hi])
				b.WriteByte(hexUpper[lo])
			}
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// removeDotSegments is RFC 3986 section 5.2.4 for an absolute path; ".."
// above the root stays at the root.
func removeDotSegments(p string) string {
	if !strings.Contains(p, ".") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

// ForwardClientCert compiles *config.ForwardClientCertConfig, Envoy's
// forward_client_cert_details: x-forwarded-client-cert is removed
// (SANITIZE, and the other modes on connections without a client
// certificate), kept (FORWARD_ONLY, ALWAYS_FORWARD_ONLY), or given the
// client certificate's details, appended (APPEND_FORWARD, Istio's inbound
// setting) or alone (SANITIZE_SET): Hash always, Subject, URI, DNS, Cert
// and Chain as set_current_client_cert_details says. Envoy's "By" (this
// proxy's own URI SAN) is not added: filters do not see the local
// certificate.
type ForwardClientCert struct{}

// CompilePerRoute implements stream.Compiler.
func (ForwardClientCert) CompilePerRoute(any) (any, error) {
	return nil, fmt.Errorf("istio: %s takes no per-route config", config.TypeForwardClientCert)
}

// Compile implements stream.Compiler.
func (ForwardClientCert) Compile(cfg any) (stream.Factory, error) {
	c, ok := cfg.(*config.ForwardClientCertConfig)
	if !ok || c == nil {
		return nil, fmt.Errorf("istio: forward client cert: config is %T, want *config.ForwardClientCertConfig", cfg)
	}
	switch c.Mode {
	case "SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY":
	default:
		return nil, fmt.Errorf("istio: forward client cert: unknown mode %q", c.Mode)
	}
	fc := *c
	return stream.FactoryFunc(func(cb stream.Callbacks) stream.Filter { return &xfccFilter{c: &fc, cb: cb} }), nil
}

const headerXFCC = "x-forwarded-client-cert"

type xfccFilter struct {
	stream.PassThrough
	c  *config.ForwardClientCertConfig
	cb stream.Callbacks
}

func (f *xfccFilter) OnRequestHeaders(h *header.Map, _ bool) stream.Status {
	var leaf *x509.Certificate
	var chain []*x509.Certificate
	if st := f.cb.TLS(); st != nil && len(st.PeerCertificates) > 0 {
		leaf, chain = st.PeerCertificates[0], st.PeerCertificates
	}
	switch f.c.Mode {
	case "ALWAYS_FORWARD_ONLY":
		return stream.Continue
	case "SANITIZE":
		h.Del(headerXFCC)
		return stream.Continue
	}
	if leaf == nil {
		h.Del(headerXFCC)
		return stream.Continue
	}
	switch f.c.Mode {
	case "FORWARD_ONLY":
	case "APPEND_FORWARD":
		cur := f.details(leaf, chain)
		if old := h.Value(headerXFCC); old != "" {
			cur = old + "," + cur
		}
		h.Set(headerXFCC, cur)
	case "SANITIZE_SET":
		h.Set(headerXFCC, f.details(leaf, chain))
	}
	return stream.Continue
}

// details is one XFCC element for the client certificate, in Envoy's
// order: Hash, Cert, Chain, Subject, URI, DNS.
func (f *xfccFilter) details(leaf *x509.Certificate, chain []*x509.Certificate) string {
	sum := sha256.Sum256(leaf.Raw)
	parts := []string{"Hash=" + hex.EncodeToString(sum[:])}
	if f.c.Cert {
		parts = append(parts, `Cert="`+url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})))+`"`)
	}
	if f.c.Chain {
		var all []byte
		for _, c := range chain {
			all = append(all, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		parts = append(parts, `Chain="`+url.QueryEscape(string(all))+`"`)
	}
	if f.c.Subject {
		parts = append(parts, `Subject="`+strings.ReplaceAll(leaf.Subject.String(), `"`, `\"`)+`"`)
	}
	if f.c.URI {
		// Envoy's URI is the first URI SAN, and is there even when empty.
		uri := ""
		if len(leaf.URIs) > 0 {
			uri = leaf.URIs[0].String()
		}
		parts = append(parts, "URI="+uri)
	}
	if f.c.DNS {
		for _, d := range leaf.DNSNames {
			parts = append(parts, "DNS="+d)
		}
	}
	return strings.Join(parts, ";")
}
