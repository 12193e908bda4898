package lua

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	glua "github.com/yuin/gopher-lua"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Header object: the headers or trailers of one direction.

type hdrRef struct {
	d        *direction
	trailers bool
}

func (r *hdrRef) m() *header.Map {
	if r.trailers {
		return r.d.trailers
	}
	return r.d.headers
}

func (v *vm) hdr(L *glua.LState) *hdrRef {
	if u, ok := L.Get(1).(*glua.LUserData); ok {
		if r, ok := u.Value.(*hdrRef); ok && r.d.f == v.f && v.f != nil {
			return r
		}
	}
	L.RaiseError("header map used outside of its stream")
	return nil
}

// mutable returns the map if it may still change, raising Envoy's error
// once it was forwarded.
func (v *vm) mutable(L *glua.LState) *header.Map {
	r := v.hdr(L)
	sent := r.d.headersSent
	if r.trailers {
		sent = r.d.trailersSent
	}
	if sent || r.m() == nil {
		L.RaiseError("header map can no longer be modified")
	}
	if !r.trailers && r.d.idx == reqDir && r.d.f.fac.clearRouteCache {
		// Envoy re-picks the route when a script changed request headers.
		r.d.f.cb.ClearRouteCache()
	}
	return r.m()
}

func (v *vm) hdrGet(L *glua.LState) int {
	m := v.hdr(L).m()
	key := L.CheckString(2)
	if m == nil {
		L.Push(glua.LNil)
		return 1
	}
	first, ok := m.Get(key)
	if !ok {
		L.Push(glua.LNil)
		return 1
	}
	if m.Count(key) == 1 {
		L.Push(glua.LString(first))
		return 1
	}
	// Envoy joins repeated headers with ",".
	L.Push(glua.LString(strings.Join(m.Values(nil, key), ",")))
	return 1
}

func (v *vm) hdrGetAtIndex(L *glua.LState) int {
	m := v.hdr(L).m()
	key := L.CheckString(2)
	i := L.CheckInt(3)
	if m != nil && i >= 0 {
		n := 0
		for _, fld := range m.Fields() {
			if header.EqualFold(fld.Name, key) {
				if n == i {
					L.Push(glua.LString(fld.Value))
					return 1
				}
				n++
			}
		}
	}
	L.Push(glua.LNil)
	return 1
}

func (v *vm) hdrGetNumValues(L *glua.LState) int {
	m := v.hdr(L).m()
	key := L.CheckString(2)
	n := 0
	if m != nil {
		n = m.Count(key)
	}
	L.Push(glua.LNumber(n))
	return 1
}

func (v *vm) hdrAdd(L *glua.LState) int {
	m := v.mutable(L)
	m.Add(L.CheckString(2), L.CheckString(3))
	return 0
}

func (v *vm) hdrReplace(L *glua.LState) int {
	m := v.mutable(L)
	m.Set(L.CheckString(2), L.CheckString(3))
	return 0
}

func (v *vm) hdrRemove(L *glua.LState) int {
	m := v.mutable(L)
	m.Del(L.CheckString(2))
	return 0
}

// hdrSetReason accepts the phrase; sluice's codecs write the standard
// phrase, so it has no effect on the wire (for HTTP/2 it never has).
func (v *vm) hdrSetReason(L *glua.LState) int {
	r := v.hdr(L)
	if r.trailers || r.d.idx != respDir {
		L.RaiseError("setHttp1ReasonPhrase() is only valid on response headers")
	}
	L.CheckString(2)
	return 0
}

func (v *vm) hdrPairs(L *glua.LState) int {
	m := v.hdr(L).m()
	i := 0
	L.Push(L.NewFunction(func(L *glua.LState) int {
		if m == nil || i >= m.Len() {
			L.Push(glua.LNil)
			return 1
		}
		fld := m.At(i)
		i++
		L.Push(glua.LString(lowerASCII(fld.Name)))
		L.Push(glua.LString(fld.Value))
		return 2
	}))
	return 1
}

// Buffer object: a whole body or one chunk, valid during the callback that
// delivered it.

type bufObj struct {
	d     *direction
	b     *stream.Buffer // nil: an always_wrap body where there is none
	ud    *glua.LUserData
	valid bool
}

func (v *vm) newBuffer(d *direction, b *stream.Buffer) *bufObj {
	o := &bufObj{d: d, b: b, valid: true}
	o.ud = v.L.NewUserData()
	o.ud.Value = o
	o.ud.Metatable = v.objs.mtBuffer
	return o
}

func (v *vm) buf(L *glua.LState) *bufObj {
	if u, ok := L.Get(1).(*glua.LUserData); ok {
		if o, ok := u.Value.(*bufObj); ok && o.valid && o.d.f == v.f && v.f != nil {
			return o
		}
	}
	L.RaiseError("buffer used outside of the callback that delivered it")
	return nil
}

func (v *vm) bufLength(L *glua.LState) int {
	o := v.buf(L)
	n := 0
	if o.b != nil {
		n = o.b.Len()
	}
	L.Push(glua.LNumber(n))
	return 1
}

func (v *vm) bufGetBytes(L *glua.LState) int {
	o := v.buf(L)
	start, n := L.CheckInt(2), L.CheckInt(3)
	var b []byte
	if o.b != nil {
		b = o.b.Bytes()
	}
	if start < 0 || n < 0 || start > len(b) || n > len(b)-start {
		L.RaiseError("index/length must be >= 0 and (index + length) must be <= buffer size")
	}
	L.Push(glua.LString(b[start : start+n]))
	return 1
}

func (v *vm) bufSetBytes(L *glua.LState) int {
	o := v.buf(L)
	s := L.CheckString(2)
	if o.b == nil {
		// The engine has no way to give a message without a body one.
		L.RaiseError("setBytes(): the message has no body to replace (sluice cannot add a body here)")
	}
	o.b.SetString(s)
	return 0
}

// Stream info.

func (v *vm) siProtocol(L *glua.LState) int {
	L.Push(glua.LString(v.stream(L).cb.Protocol()))
	return 1
}

func (v *vm) siRouteName(L *glua.LState) int {
	L.Push(glua.LString(v.stream(L).cb.RouteName()))
	return 1
}

func (v *vm) siLocal(L *glua.LState) int {
	L.Push(glua.LString(addrPort(v.stream(L).cb.DownstreamLocal())))
	return 1
}

func (v *vm) siRemote(L *glua.LState) int {
	L.Push(glua.LString(addrPort(v.stream(L).cb.DownstreamRemote())))
	return 1
}

func addrPort(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()).String()
}

func (v *vm) siSNI(L *glua.LState) int {
	sni := ""
	if t := v.stream(L).cb.TLS(); t != nil {
		sni = t.ServerName
	}
	L.Push(glua.LString(sni))
	return 1
}

// Dynamic metadata.

func (v *vm) dmGet(L *glua.LState) int {
	f := v.stream(L)
	ns := L.CheckString(2)
	vals := f.cb.DynamicMetadata().Namespace(ns)
	if vals == nil {
		L.Push(glua.LNil)
		return 1
	}
	L.Push(goToLua(L, vals, 0))
	return 1
}

func (v *vm) dmSet(L *glua.LState) int {
	f := v.stream(L)
	ns := L.CheckString(2)
	key := L.CheckString(3)
	val, err := luaToGo(L.Get(4), 0)
	if err != nil {
		L.RaiseError("dynamicMetadata:set(): %s", err.Error())
	}
	f.cb.DynamicMetadata().Set(ns, key, val)
	return 0
}

func (v *vm) dmPairs(L *glua.LState) int {
	f := v.stream(L)
	md := f.cb.DynamicMetadata()
	names := md.Namespaces()
	i := 0
	L.Push(L.NewFunction(func(L *glua.LState) int {
		if i >= len(names) {
			L.Push(glua.LNil)
			return 1
		}
		ns := names[i]
		i++
		L.Push(glua.LString(ns))
		L.Push(goToLua(L, md.Namespace(ns), 0))
		return 2
	}))
	return 1
}

// Filter state: values as strings, as Envoy serializes them.

func (v *vm) fsGet(L *glua.LState) int {
	f := v.stream(L)
	name := L.CheckString(2)
	val, ok := f.cb.FilterState().Get("", name)
	if !ok || val == nil {
		L.Push(glua.LNil)
		return 1
	}
	if L.GetTop() >= 3 && L.Get(3) != glua.LNil {
		field := L.CheckString(3)
		m, isMap := val.(map[string]any)
		if !isMap {
			L.Push(glua.LNil)
			return 1
		}
		if val, ok = m[field]; !ok || val == nil {
			L.Push(glua.LNil)
			return 1
		}
	}
	L.Push(glua.LString(stringify(val)))
	return 1
}

func stringify(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case fmt.Stringer:
		return x.String()
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	return fmt.Sprint(v)
}

// Route metadata: filter_metadata under the filter's canonical name.

func (v *vm) mdGet(L *glua.LState) int {
	f := v.stream(L)
	key := L.CheckString(2)
	val, ok := f.cb.RouteMetadata(FilterName)[key]
	if !ok {
		L.Push(glua.LNil)
		return 1
	}
	L.Push(goToLua(L, val, 0))
	return 1
}

func (v *vm) mdPairs(L *glua.LState) int {
	f := v.stream(L)
	md := f.cb.RouteMetadata(FilterName)
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	i := 0
	L.Push(L.NewFunction(func(L *glua.LState) int {
		if i >= len(keys) {
			L.Push(glua.LNil)
			return 1
		}
		k := keys[i]
		i++
		L.Push(glua.LString(k))
		L.Push(goToLua(L, md[k], 0))
		return 2
	}))
	return 1
}

// SSL connection object, answered from crypto/tls's ConnectionState.

func (v *vm) hSSL(L *glua.LState) int {
	if u, ok := L.Get(1).(*glua.LUserData); ok {
		var f *filter
		switch x := u.Value.(type) {
		case *filter:
			f = x
		case *direction:
			f = x.f
		}
		if f != nil && f == v.f {
			if f.cb.TLS() == nil {
				L.Push(glua.LNil)
			} else {
				L.Push(v.objs.ssl)
			}
			return 1
		}
	}
	L.RaiseError("object used outside of its stream")
	return 0
}

func (v *vm) tlsState(L *glua.LState) *tls.ConnectionState {
	f := v.stream(L)
	t := f.cb.TLS()
	if t == nil {
		L.RaiseError("the connection is not TLS")
	}
	return t
}

func (v *vm) peer(L *glua.LState) *x509.Certificate {
	if t := v.tlsState(L); len(t.PeerCertificates) > 0 {
		return t.PeerCertificates[0]
	}
	return nil
}

func stringList(L *glua.LState, items []string) *glua.LTable {
	t := L.CreateTable(len(items), 0)
	for _, s := range items {
		t.Append(glua.LString(s))
	}
	return t
}

func (v *vm) sslClass() *glua.LTable {
	str := func(fn func(L *glua.LState) string) glua.LGFunction {
		return func(L *glua.LState) int { L.Push(glua.LString(fn(L))); return 1 }
	}
	list := func(fn func(L *glua.LState) []string) glua.LGFunction {
		return func(L *glua.LState) int { L.Push(stringList(L, fn(L))); return 1 }
	}
	none := func(L *glua.LState) []string { v.tlsState(L); return nil }
	return v.class(methods{
		"peerCertificatePresented": func(L *glua.LState) int {
			L.Push(glua.LBool(v.peer(L) != nil))
			return 1
		},
		"peerCertificateValidated": func(L *glua.LState) int {
			L.Push(glua.LBool(len(v.tlsState(L).VerifiedChains) > 0))
			return 1
		},
		"sha256PeerCertificateDigest": str(func(L *glua.LState) string {
			if c := v.peer(L); c != nil {
				sum := sha256.Sum256(c.Raw)
				return hex.EncodeToString(sum[:])
			}
			return ""
		}),
		"serialNumberPeerCertificate": str(func(L *glua.LState) string {
			if c := v.peer(L); c != nil && c.SerialNumber != nil {
				return fmt.Sprintf("%x", c.SerialNumber)
			}
			return ""
		}),
		"issuerPeerCertificate": str(func(L *glua.LState) string {
			if c := v.peer(L); c != nil {
				return c.Issuer.String()
			}
			return ""
		}),
		"subjectPeerCertificate": str(func(L *glua.LState) string {
			if c := v.peer(L); c != nil {
				return c.Subject.String()
			}
			return ""
		}),
		"parsedSubjectPeerCertificate": func(L *glua.LState) int {
			c := v.peer(L)
			if c == nil {
				L.Push(glua.LNil)
				return 1
			}
			t := L.NewTable()
			cn, orgs := c.Subject.CommonName, c.Subject.Organization
			t.RawSetString("commonName", L.NewFunction(func(L *glua.LState) int { L.Push(glua.LString(cn)); return 1 }))
			t.RawSetString("organizationName", L.NewFunction(func(L *glua.LState) int { L.Push(stringList(L, orgs)); return 1 }))
			L.Push(t)
			return 1
		},
		"uriSanPeerCertificate": list(func(L *glua.LState) []string {
			var out []string
			if c := v.peer(L); c != nil {
				for _, u := range c.URIs {
					out = append(out, u.String())
				}
			}
			return out
		}),
		"dnsSansPeerCertificate": list(func(L *glua.LState) []string {
			if c := v.peer(L); c != nil {
				return c.DNSNames
			}
			return nil
		}),
		"oidsPeerCertificate": list(func(L *glua.LState) []string {
			var out []string
			if c := v.peer(L); c != nil {
				for _, e := range c.Extensions {
					out = append(out, e.Id.String())
				}
			}
			return out
		}),
		"validFromPeerCertificate": func(L *glua.LState) int {
			var n int64
			if c := v.peer(L); c != nil {
				n = c.NotBefore.Unix()
			}
			L.Push(glua.LNumber(n))
			return 1
		},
		"expirationPeerCertificate": func(L *glua.LState) int {
			var n int64
			if c := v.peer(L); c != nil {
				n = c.NotAfter.Unix()
			}
			L.Push(glua.LNumber(n))
			return 1
		},
		"urlEncodedPemEncodedPeerCertificate": str(func(L *glua.LState) string {
			if c := v.peer(L); c != nil {
				return urlEncodePEM(c)
			}
			return ""
		}),
		"urlEncodedPemEncodedPeerCertificateChain": str(func(L *glua.LState) string {
			var b strings.Builder
			for _, c := range v.tlsState(L).PeerCertificates {
				b.WriteString(urlEncodePEM(c))
			}
			return b.String()
		}),
		"ciphersuiteId": str(func(L *glua.LState) string {
			t := v.tlsState(L)
			if t.CipherSuite == 0 {
				return "0xffff"
			}
			return fmt.Sprintf("0x%04x", t.CipherSuite)
		}),
		"ciphersuiteString": str(func(L *glua.LState) string {
			t := v.tlsState(L)
			if t.CipherSuite == 0 {
				return ""
			}
			if n, ok := opensslCipherNames[t.CipherSuite]; ok {
				return n
			}
			return tls.CipherSuiteName(t.CipherSuite)
		}),
		"tlsVersion": str(func(L *glua.LState) string { return observe.TLSVersionName(v.tlsState(L).Version) }),
		// crypto/tls does not expose these; Envoy's "nothing there" answers.
		"sessionId":               str(func(L *glua.LState) string { v.tlsState(L); return "" }),
		"subjectLocalCertificate": str(func(L *glua.LState) string { v.tlsState(L); return "" }),
		"uriSanLocalCertificate":  list(none),
		"dnsSansLocalCertificate": list(none),
		"oidsLocalCertificate":    list(none),
	}, nil, nil)
}

// urlEncodePEM encodes a certificate as Envoy's XFCC does: PEM with every
// byte but unreserved ones percent-encoded.
func urlEncodePEM(c *x509.Certificate) string {
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	var b strings.Builder
	const hexDigits = "0123456789ABCDEF"
	for _, ch := range p {
		if 'a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9' || ch == '-' || ch == '.' || ch == '_' || ch == '~' {
			b.WriteByte(ch)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[ch>>4])
		b.WriteByte(hexDigits[ch&15])
	}
	return b.String()
}

// opensslCipherNames maps the suites crypto/tls negotiates to the OpenSSL
// names Envoy reports.
var opensslCipherNames = map[uint16]string{
	tls.TLS_AES_128_GCM_SHA256:                        "TLS_AES_128_GCM_SHA256",
	tls.TLS_AES_256_GCM_SHA384:                        "TLS_AES_256_GCM_SHA384",
	tls.TLS_CHACHA20_POLY1305_SHA256:                  "TLS_CHACHA20_POLY1305_SHA256",
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:       "ECDHE-ECDSA-AES128-GCM-SHA256",
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256:         "ECDHE-RSA-AES128-GCM-SHA256",
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:       "ECDHE-ECDSA-AES256-GCM-SHA384",
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:         "ECDHE-RSA-AES256-GCM-SHA384",
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: "ECDHE-ECDSA-CHACHA20-POLY1305",
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:   "ECDHE-RSA-CHACHA20-POLY1305",
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA:          "ECDHE-ECDSA-AES128-SHA",
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA:            "ECDHE-RSA-AES128-SHA",
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA:          "ECDHE-ECDSA-AES256-SHA",
	tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA:            "ECDHE-RSA-AES256-SHA",
	tls.TLS_RSA_WITH_AES_128_GCM_SHA256:               "AES128-GCM-SHA256",
	tls.TLS_RSA_WITH_AES_256_GCM_SHA384:               "AES256-GCM-SHA384",
	tls.TLS_RSA_WITH_AES_128_CBC_SHA:                  "AES128-SHA",
	tls.TLS_RSA_WITH_AES_256_CBC_SHA:                  "AES256-SHA",
}

// Value conversion between Go metadata values and Lua.

const maxDepth = 32

func goToLua(L *glua.LState, v any, depth int) glua.LValue {
	if depth > maxDepth {
		return glua.LNil
	}
	switch x := v.(type) {
	case nil:
		return glua.LNil
	case string:
		return glua.LString(x)
	case []byte:
		return glua.LString(x)
	case bool:
		return glua.LBool(x)
	case float64:
		return glua.LNumber(x)
	case float32:
		return glua.LNumber(x)
	case int:
		return glua.LNumber(x)
	case int32:
		return glua.LNumber(x)
	case int64:
		return glua.LNumber(x)
	case uint32:
		return glua.LNumber(x)
	case uint64:
		return glua.LNumber(x)
	case []any:
		t := L.CreateTable(len(x), 0)
		for _, e := range x {
			t.Append(goToLua(L, e, depth+1))
		}
		return t
	case []string:
		return stringList(L, x)
	case map[string]any:
		t := L.CreateTable(0, len(x))
		for k, e := range x {
			t.RawSetString(k, goToLua(L, e, depth+1))
		}
		return t
	case map[string]string:
		t := L.CreateTable(0, len(x))
		for k, e := range x {
			t.RawSetString(k, glua.LString(e))
		}
		return t
	case *structpb.Struct:
		t := L.CreateTable(0, len(x.GetFields()))
		for k, e := range x.GetFields() {
			t.RawSetString(k, structValueToLua(L, e, depth+1))
		}
		return t
	case *structpb.Value:
		return structValueToLua(L, x, depth)
	}
	return glua.LString(fmt.Sprint(v))
}

func structValueToLua(L *glua.LState, v *structpb.Value, depth int) glua.LValue {
	if depth > maxDepth {
		return glua.LNil
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return glua.LString(k.StringValue)
	case *structpb.Value_NumberValue:
		return glua.LNumber(k.NumberValue)
	case *structpb.Value_BoolValue:
		return glua.LBool(k.BoolValue)
	case *structpb.Value_StructValue:
		return goToLua(L, k.StructValue, depth+1)
	case *structpb.Value_ListValue:
		t := L.CreateTable(len(k.ListValue.GetValues()), 0)
		for _, e := range k.ListValue.GetValues() {
			t.Append(structValueToLua(L, e, depth+1))
		}
		return t
	}
	return glua.LNil
}

// luaToGo converts what dynamicMetadata:set accepts: nil, booleans,
// numbers, strings and tables keyed by strings or numbers (a sequence
// becomes a list).
func luaToGo(v glua.LValue, depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("table nested deeper than %d", maxDepth)
	}
	switch x := v.(type) {
	case *glua.LNilType:
		return nil, nil
	case glua.LBool:
		return bool(x), nil
	case glua.LNumber:
		return float64(x), nil
	case glua.LString:
		return string(x), nil
	case *glua.LTable:
		n := x.MaxN()
		count := 0
		var err error
		x.ForEach(func(glua.LValue, glua.LValue) { count++ })
		if n > 0 && n == count {
			list := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				e, cerr := luaToGo(x.RawGetInt(i), depth+1)
				if cerr != nil {
					return nil, cerr
				}
				list = append(list, e)
			}
			return list, nil
		}
		m := make(map[string]any, count)
		x.ForEach(func(k, e glua.LValue) {
			if err != nil {
				return
			}
			var key string
			switch kk := k.(type) {
			case glua.LString:
				key = string(kk)
			case glua.LNumber:
				key = kk.String()
			default:
				err = fmt.Errorf("table keys must be strings or numbers, got %s", k.Type())
				return
			}
			m[key], err = luaToGo(e, depth+1)
		})
		if err != nil {
			return nil, err
		}
		return m, nil
	}
	return nil, fmt.Errorf("cannot store a %s in metadata", v.Type())
}
