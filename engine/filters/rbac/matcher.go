package rbac

import (
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/sluice-proxy/sluice/engine/filters/envoymatch"
	"net/netip"
	"strings"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Source is what policies read: a stream's attributes (addresses, TLS
// state, request headers) and its dynamic metadata. stream.Callbacks is
// one; route metadata is read when the source also has RouteMetadata.
type Source interface {
	attr.Source
	DynamicMetadata() *stream.Metadata
}

type routeMetadataSource interface {
	RouteMetadata(ns string) map[string]any
}

// request is one evaluation's input, with what is derived from it at most
// once. It lives in the per-stream filter, so evaluating builds nothing.
type request struct {
	src  Source
	h    *header.Map
	peer *peerIdentity // resolved on first use
	// peerDone is set once peer was resolved (nil when not TLS).
	peerDone bool
}

func (r *request) reset(src Source, h *header.Map) {
	*r = request{src: src, h: h}
}

// matcher is one compiled permission or principal.
type matcher interface {
	match(r *request) bool
}

type anyMatcher struct{}

func (anyMatcher) match(*request) bool { return true }

type andMatcher []matcher

func (m andMatcher) match(r *request) bool {
	for _, x := range m {
		if !x.match(r) {
			return false
		}
	}
	return true
}

type orMatcher []matcher

func (m orMatcher) match(r *request) bool {
	for _, x := range m {
		if x.match(r) {
			return true
		}
	}
	return false
}

type notMatcher struct{ m matcher }

func (m notMatcher) match(r *request) bool { return !m.m.match(r) }

// headerMatcher is Envoy's header permission and principal.
type headerMatcher struct{ *envoymatch.HeaderMatcher }

func (m headerMatcher) match(r *request) bool { return m.MatchHeaders(r.h) }

// pathMatcher is Envoy's url_path: the :path without query and fragment.
type pathMatcher struct{ sm envoymatch.StringMatcher }

func (m *pathMatcher) match(r *request) bool {
	p, ok := r.h.Get(":path")
	if !ok {
		return false
	}
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	return m.sm.Match(p)
}

// Which address an IP matcher reads. Sluice has one downstream peer
// address: it is the connection's remote address (after the PROXY
// protocol, when a listener filter applies it), and the connection
// manager does not replace it with an address taken from
// x-forwarded-for, so source_ip, direct_remote_ip and remote_ip all read
// it.
type ipSide uint8

const (
	ipLocal ipSide = iota
	ipRemote
)

type ipMatcher struct {
	prefix netip.Prefix
	side   ipSide
}

func (m *ipMatcher) match(r *request) bool {
	var ap netip.AddrPort
	if m.side == ipLocal {
		ap = r.src.DownstreamLocal()
	} else {
		ap = r.src.DownstreamRemote()
	}
	if !ap.IsValid() {
		return false
	}
	return m.prefix.Contains(ap.Addr().Unmap())
}

type portMatcher struct{ port uint16 }

func (m portMatcher) match(r *request) bool {
	ap := r.src.DownstreamLocal()
	return ap.IsValid() && ap.Port() == m.port
}

// portRangeMatcher matches a destination port in [start, end).
type portRangeMatcher struct{ start, end int32 }

func (m portRangeMatcher) match(r *request) bool {
	ap := r.src.DownstreamLocal()
	if !ap.IsValid() {
		return false
	}
	p := int32(ap.Port())
	return m.start <= p && p < m.end
}

// serverNameMatcher is requested_server_name: the SNI of a TLS connection,
// "" otherwise.
type serverNameMatcher struct{ sm envoymatch.StringMatcher }

func (m *serverNameMatcher) match(r *request) bool {
	sni := ""
	if t := r.src.TLS(); t != nil {
		sni = t.ServerName
	}
	return m.sm.Match(sni)
}

// authMatcher is Envoy's authenticated principal: any TLS connection
// when no name is given; otherwise the name is matched against the peer
// certificate's URI SANs, then its DNS SANs, then its subject (RFC 2253).
type authMatcher struct {
	name *envoymatch.StringMatcher
}

func (m *authMatcher) match(r *request) bool {
	if r.src.TLS() == nil {
		return false
	}
	if m.name == nil {
		return true
	}
	id := r.identity()
	if id == nil {
		// TLS without a client certificate: the subject is empty.
		return m.name.Match("")
	}
	for _, u := range id.uris {
		if m.name.Match(u) {
			return true
		}
	}
	for _, d := range id.cert.DNSNames {
		if m.name.Match(d) {
			return true
		}
	}
	return m.name.Match(id.subject)
}

// peerIdentity is a peer certificate's names as strings.
type peerIdentity struct {
	cert    *x509.Certificate
	uris    []string
	subject string
}

// identities caches the names of recently seen peer certificates: a
// connection presents one certificate for all its streams, and formatting
// its URI SANs and subject allocates. Entries are replaced, never removed;
// the table holds at most len(identities) certificates.
var identities [64]atomic.Pointer[peerIdentity]

func (r *request) identity() *peerIdentity {
	if r.peerDone {
		return r.peer
	}
	r.peerDone = true
	t := r.src.TLS()
	if t == nil || len(t.PeerCertificates) == 0 {
		return nil
	}
	cert := t.PeerCertificates[0]
	slot := &identities[slotOf(cert)]
	if id := slot.Load(); id != nil && id.cert == cert {
		r.peer = id
		return id
	}
	id := &peerIdentity{cert: cert, subject: cert.Subject.String()}
	for _, u := range cert.URIs {
		id.uris = append(id.uris, u.String())
	}
	slot.Store(id)
	r.peer = id
	return id
}

// slotOf spreads certificates over the cache by their signature's last
// bytes, which are as good as random.
func slotOf(c *x509.Certificate) int {
	s := c.Signature
	h := uint(len(s))
	for i := max(0, len(s)-4); i < len(s); i++ {
		h = h*31 + uint(s[i])
	}
	return int(h % uint(len(identities)))
}

// metadataMatcher is Envoy's MetadataMatcher over the stream's dynamic
// metadata or the route's metadata.
type metadataMatcher struct {
	route  bool
	filter string
	path   []string
	value  valueMatcher
	invert bool
}

func (m *metadataMatcher) match(r *request) bool {
	var v any
	var ok bool
	if m.route {
		if rs, isRoute := r.src.(routeMetadataSource); isRoute {
			if ns := rs.RouteMetadata(m.filter); ns != nil {
				v, ok = ns[m.path[0]]
			}
		}
	} else if md := r.src.DynamicMetadata(); md != nil {
		v, ok = md.Get(m.filter, m.path[0])
	}
	for _, k := range m.path[1:] {
		if !ok {
			break
		}
		mv, isMap := v.(map[string]any)
		if !isMap {
			ok = false
			break
		}
		v, ok = mv[k]
	}
	return m.value.match(v, ok) != m.invert
}

// valueMatcher is Envoy's ValueMatcher over a Go metadata value (string,
// bool, a number, nil, []any, map[string]any).
type valueMatcher struct {
	kind       valueKind
	str        envoymatch.StringMatcher
	b          bool
	exact      *float64
	start, end float64
	oneOf      *valueMatcher
	or         []valueMatcher
}

type valueKind uint8

const (
	valNull valueKind = iota
	valDouble
	valString
	valBool
	valPresent
	valList
	valOr
)

func (m *valueMatcher) match(v any, present bool) bool {
	if !present {
		if m.kind == valOr {
			for i := range m.or {
				if m.or[i].match(v, present) {
					return true
				}
			}
		}
		return false
	}
	switch m.kind {
	case valNull:
		return v == nil
	case valDouble:
		f, ok := number(v)
		if !ok {
			return false
		}
		if m.exact != nil {
			return f == *m.exact
		}
		return m.start <= f && f < m.end
	case valString:
		s, ok := v.(string)
		return ok && m.str.Match(s)
	case valBool:
		b, ok := v.(bool)
		return ok && b == m.b
	case valPresent:
		return m.b
	case valList:
		l, ok := v.([]any)
		if !ok {
			return false
		}
		for _, e := range l {
			if m.oneOf.match(e, true) {
				return true
			}
		}
		return false
	case valOr:
		for i := range m.or {
			if m.or[i].match(v, present) {
				return true
			}
		}
	}
	return false
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case float32:
		return float64(n), true
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case int32:
		return float64(n), true
	case uint64:
		return float64(n), true
	case uint32:
		return float64(n), true
	}
	return 0, false
}

var (
	permissionFields = envoymatch.KnownFields(&rbacv3.Permission{}, "and_rules", "or_rules", "any", "header", "url_path",
		"destination_ip", "destination_port", "destination_port_range", "metadata", "not_rule",
		"requested_server_name", "sourced_metadata")
	principalFields = envoymatch.KnownFields(&rbacv3.Principal{}, "and_ids", "or_ids", "any", "authenticated",
		"source_ip", "direct_remote_ip", "remote_ip", "header", "url_path", "metadata", "not_id",
		"sourced_metadata")
	authenticatedFields = envoymatch.KnownFields(&rbacv3.Principal_Authenticated{}, "principal_name")
	sourcedFields       = envoymatch.KnownFields(&rbacv3.SourcedMetadata{}, "metadata_matcher", "metadata_source")
	metadataFields      = envoymatch.KnownFields(&matcherv3.MetadataMatcher{}, "filter", "path", "value", "invert")
	valueFields         = envoymatch.KnownFields(&matcherv3.ValueMatcher{}, "null_match", "double_match", "string_match",
		"bool_match", "present_match", "list_match", "or_match")
	listFields   = envoymatch.KnownFields(&matcherv3.ListMatcher{}, "one_of")
	doubleFields = envoymatch.KnownFields(&matcherv3.DoubleMatcher{}, "range", "exact")
)

func compilePermission(p *rbacv3.Permission) (matcher, error) {
	if p == nil {
		return nil, errors.New("a permission is required")
	}
	if err := permissionFields.Check(p); err != nil {
		return nil, err
	}
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		if !r.Any {
			// Envoy's validation rejects any: false.
			return nil, envoymatch.At("any", errors.New("must be true"))
		}
		return anyMatcher{}, nil
	case *rbacv3.Permission_AndRules:
		m, err := compileSet(r.AndRules.GetRules(), compilePermission, "rules")
		if err != nil {
			return nil, envoymatch.At("and_rules", err)
		}
		return simplify(andMatcher(m)), nil
	case *rbacv3.Permission_OrRules:
		m, err := compileSet(r.OrRules.GetRules(), compilePermission, "rules")
		if err != nil {
			return nil, envoymatch.At("or_rules", err)
		}
		return simplify(orMatcher(m)), nil
	case *rbacv3.Permission_NotRule:
		m, err := compilePermission(r.NotRule)
		if err != nil {
			return nil, envoymatch.At("not_rule", err)
		}
		return notMatcher{m}, nil
	case *rbacv3.Permission_Header:
		m, err := envoymatch.CompileHeader(r.Header)
		if err != nil {
			return nil, envoymatch.At("header", err)
		}
		return headerMatcher{m}, nil
	case *rbacv3.Permission_UrlPath:
		sm, err := envoymatch.CompilePath(r.UrlPath)
		if err != nil {
			return nil, envoymatch.At("url_path", err)
		}
		return &pathMatcher{sm}, nil
	case *rbacv3.Permission_DestinationIp:
		pfx, err := envoymatch.CompileCIDR(r.DestinationIp)
		if err != nil {
			return nil, envoymatch.At("destination_ip", err)
		}
		return &ipMatcher{prefix: pfx, side: ipLocal}, nil
	case *rbacv3.Permission_DestinationPort:
		if r.DestinationPort > 65535 {
			return nil, envoymatch.At("destination_port", fmt.Errorf("%d is not a port", r.DestinationPort))
		}
		return portMatcher{uint16(r.DestinationPort)}, nil
	case *rbacv3.Permission_DestinationPortRange:
		start, end := r.DestinationPortRange.GetStart(), r.DestinationPortRange.GetEnd()
		switch {
		case start < 0 || start > 65536:
			return nil, envoymatch.At("destination_port_range", fmt.Errorf("range start %d is out of bounds", start))
		case end < 0 || end > 65536:
			return nil, envoymatch.At("destination_port_range", fmt.Errorf("range end %d is out of bounds", end))
		case start >= end:
			return nil, envoymatch.At("destination_port_range", fmt.Errorf("range start %d must be less than range end %d", start, end))
		}
		return portRangeMatcher{start, end}, nil
	case *rbacv3.Permission_RequestedServerName:
		sm, err := envoymatch.CompileString(r.RequestedServerName)
		if err != nil {
			return nil, envoymatch.At("requested_server_name", err)
		}
		return &serverNameMatcher{sm}, nil
	case *rbacv3.Permission_Metadata:
		m, err := compileMetadata(r.Metadata, false)
		return m, envoymatch.At("metadata", err)
	case *rbacv3.Permission_SourcedMetadata:
		m, err := compileSourced(r.SourcedMetadata)
		return m, envoymatch.At("sourced_metadata", err)
	case nil:
		return nil, errors.New("a rule is required")
	}
	return nil, fmt.Errorf("permission %T %w", p.GetRule(), envoymatch.ErrUnsupported)
}

func compilePrincipal(p *rbacv3.Principal) (matcher, error) {
	if p == nil {
		return nil, errors.New("a principal is required")
	}
	if err := principalFields.Check(p); err != nil {
		return nil, err
	}
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		if !id.Any {
			return nil, envoymatch.At("any", errors.New("must be true"))
		}
		return anyMatcher{}, nil
	case *rbacv3.Principal_AndIds:
		m, err := compileSet(id.AndIds.GetIds(), compilePrincipal, "ids")
		if err != nil {
			return nil, envoymatch.At("and_ids", err)
		}
		return simplify(andMatcher(m)), nil
	case *rbacv3.Principal_OrIds:
		m, err := compileSet(id.OrIds.GetIds(), compilePrincipal, "ids")
		if err != nil {
			return nil, envoymatch.At("or_ids", err)
		}
		return simplify(orMatcher(m)), nil
	case *rbacv3.Principal_NotId:
		m, err := compilePrincipal(id.NotId)
		if err != nil {
			return nil, envoymatch.At("not_id", err)
		}
		return notMatcher{m}, nil
	case *rbacv3.Principal_Authenticated_:
		a := id.Authenticated
		if err := authenticatedFields.Check(a); err != nil {
			return nil, envoymatch.At("authenticated", err)
		}
		m := &authMatcher{}
		if a.GetPrincipalName() != nil {
			sm, err := envoymatch.CompileString(a.GetPrincipalName())
			if err != nil {
				return nil, envoymatch.At("authenticated.principal_name", err)
			}
			m.name = &sm
		}
		return m, nil
	case *rbacv3.Principal_SourceIp:
		return compileRemoteIP(id.SourceIp, "source_ip")
	case *rbacv3.Principal_DirectRemoteIp:
		return compileRemoteIP(id.DirectRemoteIp, "direct_remote_ip")
	case *rbacv3.Principal_RemoteIp:
		return compileRemoteIP(id.RemoteIp, "remote_ip")
	case *rbacv3.Principal_Header:
		m, err := envoymatch.CompileHeader(id.Header)
		if err != nil {
			return nil, envoymatch.At("header", err)
		}
		return headerMatcher{m}, nil
	case *rbacv3.Principal_UrlPath:
		sm, err := envoymatch.CompilePath(id.UrlPath)
		if err != nil {
			return nil, envoymatch.At("url_path", err)
		}
		return &pathMatcher{sm}, nil
	case *rbacv3.Principal_Metadata:
		m, err := compileMetadata(id.Metadata, false)
		return m, envoymatch.At("metadata", err)
	case *rbacv3.Principal_SourcedMetadata:
		m, err := compileSourced(id.SourcedMetadata)
		return m, envoymatch.At("sourced_metadata", err)
	case nil:
		return nil, errors.New("an identifier is required")
	}
	return nil, fmt.Errorf("principal %T %w", p.GetIdentifier(), envoymatch.ErrUnsupported)
}

func compileRemoteIP(c *corev3.CidrRange, field string) (matcher, error) {
	pfx, err := envoymatch.CompileCIDR(c)
	if err != nil {
		return nil, envoymatch.At(field, err)
	}
	return &ipMatcher{prefix: pfx, side: ipRemote}, nil
}

func compileSet[T any](items []T, compile func(T) (matcher, error), field string) ([]matcher, error) {
	if len(items) == 0 {
		return nil, envoymatch.At(field, errors.New("at least one is required"))
	}
	out := make([]matcher, 0, len(items))
	for i, it := range items {
		m, err := compile(it)
		if err != nil {
			return nil, envoymatch.AtIndex(field, i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// simplify drops the set around a single matcher.
func simplify(m matcher) matcher {
	switch s := m.(type) {
	case andMatcher:
		if len(s) == 1 {
			return s[0]
		}
	case orMatcher:
		if len(s) == 1 {
			return s[0]
		}
	}
	return m
}

func compileSourced(s *rbacv3.SourcedMetadata) (matcher, error) {
	if err := sourcedFields.Check(s); err != nil {
		return nil, err
	}
	var route bool
	switch src := s.GetMetadataSource(); src {
	case rbacv3.MetadataSource_DYNAMIC:
	case rbacv3.MetadataSource_ROUTE:
		route = true
	default:
		return nil, envoymatch.At("metadata_source", fmt.Errorf("%v %w", src, envoymatch.ErrUnsupported))
	}
	m, err := compileMetadata(s.GetMetadataMatcher(), route)
	return m, envoymatch.At("metadata_matcher", err)
}

func compileMetadata(m *matcherv3.MetadataMatcher, route bool) (*metadataMatcher, error) {
	if m == nil {
		return nil, errors.New("a metadata matcher is required")
	}
	if err := metadataFields.Check(m); err != nil {
		return nil, err
	}
	out := &metadataMatcher{route: route, filter: m.GetFilter(), invert: m.GetInvert()}
	if out.filter == "" {
		return nil, envoymatch.At("filter", errors.New("a filter name is required"))
	}
	for i, seg := range m.GetPath() {
		k := seg.GetKey()
		if k == "" {
			return nil, envoymatch.AtIndex("path", i, errors.New("a key is required"))
		}
		out.path = append(out.path, k)
	}
	if len(out.path) == 0 {
		return nil, envoymatch.At("path", errors.New("at least one key is required"))
	}
	v, err := compileValue(m.GetValue())
	if err != nil {
		return nil, envoymatch.At("value", err)
	}
	out.value = v
	return out, nil
}

func compileValue(m *matcherv3.ValueMatcher) (valueMatcher, error) {
	if m == nil {
		return valueMatcher{}, errors.New("a value matcher is required")
	}
	if err := valueFields.Check(m); err != nil {
		return valueMatcher{}, err
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.ValueMatcher_NullMatch_:
		return valueMatcher{kind: valNull}, nil
	case *matcherv3.ValueMatcher_DoubleMatch:
		d := p.DoubleMatch
		if err := doubleFields.Check(d); err != nil {
			return valueMatcher{}, envoymatch.At("double_match", err)
		}
		out := valueMatcher{kind: valDouble}
		switch dm := d.GetMatchPattern().(type) {
		case *matcherv3.DoubleMatcher_Exact:
			x := dm.Exact
			out.exact = &x
		case *matcherv3.DoubleMatcher_Range:
			out.start, out.end = dm.Range.GetStart(), dm.Range.GetEnd()
		default:
			return valueMatcher{}, envoymatch.At("double_match", errors.New("range or exact is required"))
		}
		return out, nil
	case *matcherv3.ValueMatcher_StringMatch:
		sm, err := envoymatch.CompileString(p.StringMatch)
		if err != nil {
			return valueMatcher{}, envoymatch.At("string_match", err)
		}
		return valueMatcher{kind: valString, str: sm}, nil
	case *matcherv3.ValueMatcher_BoolMatch:
		return valueMatcher{kind: valBool, b: p.BoolMatch}, nil
	case *matcherv3.ValueMatcher_PresentMatch:
		return valueMatcher{kind: valPresent, b: p.PresentMatch}, nil
	case *matcherv3.ValueMatcher_ListMatch:
		if err := listFields.Check(p.ListMatch); err != nil {
			return valueMatcher{}, envoymatch.At("list_match", err)
		}
		one, err := compileValue(p.ListMatch.GetOneOf())
		if err != nil {
			return valueMatcher{}, envoymatch.At("list_match.one_of", err)
		}
		return valueMatcher{kind: valList, oneOf: &one}, nil
	case *matcherv3.ValueMatcher_OrMatch:
		out := valueMatcher{kind: valOr}
		vms := p.OrMatch.GetValueMatchers()
		if len(vms) < 2 {
			return valueMatcher{}, envoymatch.At("or_match.value_matchers", errors.New("at least two are required"))
		}
		for i, vm := range vms {
			v, err := compileValue(vm)
			if err != nil {
				return valueMatcher{}, envoymatch.At("or_match", envoymatch.AtIndex("value_matchers", i, err))
			}
			out.or = append(out.or, v)
		}
		return out, nil
	}
	return valueMatcher{}, errors.New("a match pattern is required")
}
