package route

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

// PickCluster returns the route's cluster: its cluster, or for a weighted
// split the cluster whose interval holds rnd modulo the total weight (Envoy's
// pick, with wc the chosen branch). It returns "" for cluster_header routes
// (use ClusterFor) and for redirect and direct-response routes.
func (r *Route) PickCluster(rnd uint32) (name string, wc *config.WeightedCluster) {
	if r.cluster != "" {
		return r.cluster, nil
	}
	if len(r.weighted) == 0 {
		return "", nil
	}
	v := uint64(rnd) % r.totalWeight
	// First interval whose end is above v; zero-weight branches have an
	// empty interval and are never chosen.
	lo, hi := 0, len(r.cumWeights)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if v < r.cumWeights[mid] {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	w := r.weighted[lo].cfg
	return w.Name, w
}

// ClusterFor is PickCluster that also serves cluster_header routes: the
// cluster is the first value of that request header, "" when it is missing
// (the proxy answers that as an unknown cluster, like Envoy).
func (r *Route) ClusterFor(h *header.Map, rnd uint32) (name string, wc *config.WeightedCluster) {
	if r.clusterHeader != "" {
		v, _ := h.Get(r.clusterHeader)
		return v, nil
	}
	return r.PickCluster(rnd)
}

// AutoHostRewrite reports whether the proxy must set :authority to the
// upstream host it picks (auto_host_rewrite).
func (r *Route) AutoHostRewrite() bool { return r.autoHost }

// RewritePath returns the upstream request target for path (a request
// target, query included): prefix_rewrite replaces the matched part and
// keeps the rest; regex_rewrite rewrites the path part and keeps the query.
// Without a rewrite, or when path no longer matches the route (a filter
// changed it without asking for a new route), path comes back unchanged.
func (r *Route) RewritePath(path string) string {
	switch {
	case r.prefixRewrite != "":
		return r.replaceMatched(path, r.prefixRewrite)
	case r.regexRewrite != nil:
		p := pathOnly(path)
		return r.regexRewrite.ReplaceAllString(p, r.regexSubst) + path[len(p):]
	}
	return path
}

// replaceMatched replaces what the route matched (Envoy's matched_path):
// the prefix for prefix and path-separated routes, the path for exact and
// regex routes (the query always stays).
func (r *Route) replaceMatched(path, with string) string {
	n := 0
	switch r.kind {
	case pathPrefix, pathSeparated, pathExact:
		if !r.hasPathPrefix(path) {
			return path
		}
		n = len(r.path)
	case pathRegex:
		n = len(pathOnly(path))
	}
	return with + path[n:]
}

// RewriteHost applies host_rewrite_literal or host_rewrite_header to
// :authority (and to a Host field if the codec kept one). A missing or empty
// host_rewrite_header leaves the host alone, like Envoy. Envoy's
// append_x_forwarded_host is not supported.
func (r *Route) RewriteHost(h *header.Map) {
	host := r.hostLiteral
	if host == "" && r.hostHeader != "" {
		host, _ = h.Get(r.hostHeader)
	}
	if host == "" {
		return
	}
	setHost(h, host)
}

func setHost(h *header.Map, host string) {
	h.Set(":authority", host)
	if h.Has("host") {
		h.Set("host", host)
	}
}

// redirect is a compiled config.Redirect.
type redirect struct {
	scheme        string
	host          string
	port          string // ":8443", or ""
	path          string
	pathHasQuery  bool
	prefixRewrite string
	stripQuery    bool
	code          int
}

func (r *Route) compileRedirect(c *config.Redirect) error {
	rd := &redirect{
		scheme:        c.SchemeRedirect,
		host:          c.HostRedirect,
		path:          c.PathRedirect,
		pathHasQuery:  strings.IndexByte(c.PathRedirect, '?') >= 0,
		prefixRewrite: c.PrefixRewrite,
		stripQuery:    c.StripQuery,
		code:          c.ResponseCode,
	}
	if c.PathRedirect != "" && c.PrefixRewrite != "" {
		return errors.New("redirect: specify only one of path_redirect and prefix_rewrite")
	}
	if c.PortRedirect > 65535 {
		return fmt.Errorf("redirect: port %d out of range", c.PortRedirect)
	}
	if c.PortRedirect != 0 {
		rd.port = ":" + strconv.FormatUint(uint64(c.PortRedirect), 10)
	}
	switch rd.code {
	case 0:
		rd.code = 301
	case 301, 302, 303, 307, 308:
	default:
		return fmt.Errorf("redirect: response code %d is not one of 301, 302, 303, 307, 308", rd.code)
	}
	for _, s := range []string{rd.scheme, rd.host, rd.path, rd.prefixRewrite} {
		if !validValue(s) {
			return fmt.Errorf("redirect: invalid character in %q", s)
		}
	}
	r.redirect = rd
	return nil
}

// RedirectLocation returns the status and Location of a redirect route
// (status 0 for other routes), built like Envoy's Http::Utility::newUri:
//
//   - scheme: scheme_redirect (https_redirect arrives as "https"), else the
//     request's :scheme;
//   - host: host_redirect, else the request host, whose port is dropped when
//     port_redirect is set, or when the scheme changes and the port is the
//     default one of the request's scheme (http://h:80 → https://h);
//   - path: path_redirect (keeping the request query unless path_redirect
//     has one), else the request path with prefix_rewrite applied to the
//     matched part; strip_query then drops the query, except one that came
//     from path_redirect.
//
// The request's scheme for the port rule is x-forwarded-proto like Envoy,
// falling back to :scheme when the proxy has not set it.
func (r *Route) RedirectLocation(h *header.Map) (status int, location string) {
	rd := r.redirect
	if rd == nil {
		return 0, ""
	}
	scheme := rd.scheme
	if scheme == "" {
		scheme = h.Value(":scheme")
		if scheme == "" {
			scheme = "http"
		}
	}
	host := rd.host
	if host == "" {
		host = requestHostForRedirect(h, scheme, rd.port)
	}
	reqPath := h.Value(":path")
	var path string
	switch {
	case rd.path != "":
		path = rd.path
		if !rd.pathHasQuery {
			if i := strings.IndexByte(reqPath, '?'); i >= 0 {
				path += reqPath[i:]
			}
		}
	case rd.prefixRewrite != "":
		path = r.replaceMatched(reqPath, rd.prefixRewrite)
	default:
		path = reqPath
	}
	if !rd.pathHasQuery && rd.stripQuery {
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
	}
	var b strings.Builder
	b.Grow(len(scheme) + 3 + len(host) + len(rd.port) + len(path) + 1)
	b.WriteString(scheme)
	b.WriteString("://")
	b.WriteString(host)
	b.WriteString(rd.port)
	if !strings.HasPrefix(path, "/") {
		b.WriteByte('/')
	}
	b.WriteString(path)
	return rd.code, b.String()
}

// requestHostForRedirect is Envoy's processRequestHost.
func requestHostForRedirect(h *header.Map, newScheme, newPort string) string {
	host, ok := h.Get(":authority")
	if !ok {
		host = h.Value("host")
	}
	if host == "" {
		return ""
	}
	end := -1
	if host[0] == '[' {
		if i := strings.LastIndex(host, "]:"); i >= 0 {
			end = i + 1
		}
	} else {
		end = strings.LastIndexByte(host, ':')
	}
	if end < 0 {
		return host
	}
	port := host[end:]
	proto := h.Value("x-forwarded-proto")
	if proto == "" {
		proto = h.Value(":scheme")
	}
	remove := newPort != ""
	if newScheme != proto {
		remove = remove ||
			header.EqualFold(proto, "https") && port == ":443" ||
			header.EqualFold(proto, "http") && port == ":80"
	}
	if remove {
		return host[:end]
	}
	return host
}
