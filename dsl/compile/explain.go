package compile

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/dsl/rules"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy/route"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// DefaultSource is the client address of an explained request that names
// none.
const DefaultSource = "127.0.0.1:40000"

// explainRequestID is request.id in an explained request without an
// x-request-id header.
const explainRequestID = "00000000-0000-4000-8000-000000000000"

// OutcomeKind says how an explained request ends.
type OutcomeKind int

const (
	OutcomeProxy   OutcomeKind = iota // sent to an upstream (or a split)
	OutcomeRespond                    // answered by the proxy: respond, deny, redirect, abort, 429, 500, ...
	OutcomeNoRoute                    // no route matched: 404
)

// Explanation is what a request would go through, without sending it.
type Explanation struct {
	Listener string
	Method   string
	URL      string
	Source   string // the client address used

	Route     string // the matched route; "" when none
	RouteAt   string // "file:line:col" of the route's name
	When      string // the route's `when` as written ("" for none)
	MatchedBy []string
	Condition string // the CEL evaluated after the matchers ("" for none)

	Steps   []rules.Event // every block and action, in order (request path, then response path)
	Outcome Outcome
	// Request is the request after the actions: what would go upstream.
	Request []header.Field
	// OnResponse lists the `on response` blocks (and response actions) that
	// run once an upstream answers; empty unless the outcome is a proxy.
	OnResponse []string
}

// Outcome is how an explained request ends.
type Outcome struct {
	Kind OutcomeKind

	// OutcomeProxy:
	Upstream string                    // the upstream; "" for a split
	Split    []*config.WeightedCluster // the split's upstreams and weights
	Action   *config.RouteAction

	// OutcomeRespond and OutcomeNoRoute:
	Status  int
	Body    string
	Headers []header.Field // response headers of a local reply (without :status)
	Details string         // why: "direct_response", "sluice_respond", "route_not_found", ...
}

// Explain runs a request through the listener's compiled route table and
// rules filter without sending anything: which route matches and every
// block and action that would run. listener "" picks the listener whose
// port is the URL's port, else the first. rawURL is absolute
// ("http://example.com/api?x=1") or a path ("/api"); source is the client
// address (IP or IP:port, "" for DefaultSource). A `delay` does not wait
// and a `percent` below 100 does not fire.
func Explain(res *Result, listener string, method, rawURL string, headers []header.Field, source string) (*Explanation, error) {
	return explain(res, listener, method, rawURL, headers, source, "")
}

func (res *Result) listener(name, rawURL string) (*listenerInfo, error) {
	if len(res.listeners) == 0 {
		return nil, errors.New("explain: the program has no listener")
	}
	if name != "" {
		for _, l := range res.listeners {
			if l.name == name {
				return l, nil
			}
		}
		var names []string
		for _, l := range res.listeners {
			names = append(names, l.name)
		}
		return nil, fmt.Errorf("explain: no listener %q (listeners: %s)", name, strings.Join(names, ", "))
	}
	if u, err := parseRequestURL(rawURL); err == nil && u.Port() != "" {
		for _, l := range res.listeners {
			if l.port == u.Port() {
				return l, nil
			}
		}
	}
	return res.listeners[0], nil
}

// parseRequestURL parses an absolute http(s) URL or an origin-form path.
func parseRequestURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	switch {
	case u.Scheme == "" && u.Host == "":
		if !strings.HasPrefix(raw, "/") {
			return nil, errors.New("want an absolute http(s) URL or a path starting with /")
		}
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("scheme %q: want http or https", u.Scheme)
	case u.Host == "":
		return nil, errors.New("no host")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return nil, errors.New("a request target has no #fragment")
	}
	return u, nil
}

// parseSource parses "IP" or "IP:port".
func parseSource(s string) (netip.AddrPort, error) {
	if s == "" {
		s = DefaultSource
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, 40000), nil
}

func explain(res *Result, listener, method, rawURL string, headers []header.Field, source, body string) (*Explanation, error) {
	li, err := res.listener(listener, rawURL)
	if err != nil {
		return nil, err
	}
	u, err := parseRequestURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("explain: bad URL %q: %v", rawURL, err)
	}
	remote, err := parseSource(source)
	if err != nil {
		return nil, fmt.Errorf("explain: bad source address %q", source)
	}
	if method == "" {
		method = "GET"
	}
	ds := &dryStream{start: time.Now(), remote: remote, reqSize: int64(len(body))}
	if ap, err := netip.ParseAddrPort(li.cfg.Address); err == nil {
		ds.local = ap
	} else if _, port, err := net.SplitHostPort(li.cfg.Address); err == nil {
		p, _ := strconv.Atoi(port)
		ds.local = netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p))
	}
	scheme, authority := "http", "localhost"
	if u.Host != "" {
		scheme, authority = u.Scheme, u.Host
	}
	target := u.EscapedPath()
	if target == "" {
		target = "/"
	}
	if u.RawQuery != "" || u.ForceQuery {
		target += "?" + u.RawQuery
	}
	ds.req.Add(":method", method)
	ds.req.Add(":path", target)
	ds.req.Add(":authority", authority)
	ds.req.Add(":scheme", scheme)
	for _, h := range headers {
		if header.EqualFold(h.Name, "host") {
			ds.req.Set(":authority", h.Value)
			continue
		}
		ds.req.Add(strings.ToLower(h.Name), h.Value)
	}
	// What the connection manager adds before routing (UseRemoteAddress,
	// GenerateRequestID).
	xff := remote.Addr().Unmap().String()
	if v, ok := ds.req.Get("x-forwarded-for"); ok {
		xff = v + ", " + xff
	}
	ds.req.Set("x-forwarded-for", xff)
	ds.req.Set("x-forwarded-proto", scheme)
	if id := ds.req.Value("x-request-id"); id != "" && !li.hcm.UseRemoteAddress {
		ds.reqID = id
	} else {
		ds.reqID = explainRequestID
		ds.req.Set("x-request-id", ds.reqID)
	}

	ex := &Explanation{Listener: li.name, Method: method, URL: rawURL, Source: remote.String()}
	table, err := route.Compile(li.hcm.RouteConfig)
	if err != nil {
		return nil, fmt.Errorf("explain: %w", err)
	}
	r, matchErr := table.MatchSource(ds)
	ds.route = r
	if r != nil {
		ex.Route = r.Name()
		if ri := li.routes[r.Name()]; ri != nil {
			ex.RouteAt, ex.When, ex.MatchedBy, ex.Condition = ri.pos.String(), ri.when, ri.lifted, ri.rest
		}
	}

	var f stream.Filter
	if li.rules != nil {
		fac, err := rules.Compiler{}.Compile(li.rules)
		if err != nil {
			return nil, fmt.Errorf("explain: %w", err)
		}
		if r != nil {
			if o := r.Config.TypedPerFilterConfig[rules.FilterName]; o != nil && o.Config != nil {
				if ds.override, err = (rules.Compiler{}).CompilePerRoute(o.Config); err != nil {
					return nil, fmt.Errorf("explain: %w", err)
				}
			}
		}
		f = fac.NewFilter(ds)
	}
	finish := func() (*Explanation, error) {
		ex.Steps = ds.events
		ex.Request = append([]header.Field(nil), ds.req.Fields()...)
		return ex, nil
	}
	local := func() bool {
		if ds.reply == nil {
			return false
		}
		ex.Outcome = Outcome{Kind: OutcomeRespond, Status: ds.reply.status, Body: ds.reply.body, Headers: ds.reply.headers, Details: ds.reply.details}
		return true
	}
	if f != nil && f.OnRequestHeaders(&ds.req, body == "") == stream.LocalReply && local() {
		return finish()
	}
	if matchErr != nil {
		ex.Outcome = Outcome{Kind: OutcomeRespond, Status: 500, Body: "route condition failed\n", Details: "route_condition_error: " + matchErr.Error()}
		return finish()
	}
	// A local reply of the proxy passes the response filters.
	respond := func(status int, body string, hs []header.Field, details string) (*Explanation, error) {
		ds.resp.Reset()
		ds.resp.Add(":status", strconv.Itoa(status))
		for _, h := range hs {
			ds.resp.Add(h.Name, h.Value)
		}
		if body != "" {
			ds.resp.Add("content-type", "text/plain; charset=utf-8")
		}
		ds.resp.Add("content-length", strconv.Itoa(len(body)))
		ds.code = status
		if f != nil && f.OnResponseHeaders(&ds.resp, body == "") == stream.LocalReply && local() {
			return finish()
		}
		var out []header.Field
		for _, h := range ds.resp.Fields() {
			if h.Name != ":status" {
				out = append(out, h)
			}
		}
		ex.Outcome = Outcome{Kind: OutcomeRespond, Status: statusOf(&ds.resp, status), Body: body, Headers: out, Details: details}
		return finish()
	}
	switch {
	case r == nil:
		ex, err := respond(404, "", nil, "route_not_found")
		if ex != nil && ex.Outcome.Details == "route_not_found" {
			ex.Outcome.Kind = OutcomeNoRoute
		}
		return ex, err
	case r.Config.DirectResponse != nil:
		d := r.Config.DirectResponse
		return respond(d.Status, d.Body, nil, "direct_response")
	case r.Config.Redirect != nil:
		code, loc := r.RedirectLocation(&ds.req)
		return respond(code, "", []header.Field{{Name: "location", Value: loc}}, "redirect")
	}
	ra := r.Config.Action
	ex.Outcome = Outcome{Kind: OutcomeProxy, Upstream: ra.Cluster, Split: ra.WeightedClusters, Action: ra}
	if li.rules != nil {
		if ri := li.routes[r.Name()]; ri != nil && ri.actions != nil {
			for _, a := range ri.actions.Actions {
				if h, ok := a.(*rules.Header); ok && h.Response {
					ex.OnResponse = append(ex.OnResponse, fmt.Sprintf("%s (%s)", a, a.Pos()))
				}
			}
		}
		for _, e := range ds.events {
			if e.Kind != rules.BlockEntered {
				continue
			}
			for _, b := range li.rules.Request {
				if b.Where != e.Where {
					continue
				}
				for _, a := range b.Actions {
					if h, ok := a.(*rules.Header); ok && h.Response {
						ex.OnResponse = append(ex.OnResponse, fmt.Sprintf("%s (%s)", a, a.Pos()))
					}
				}
			}
		}
		for _, b := range li.rules.Response {
			ex.OnResponse = append(ex.OnResponse, fmt.Sprintf("%s { ... } (%s)", b.Text, b.Where))
		}
	}
	return finish()
}

func statusOf(h *header.Map, def int) int {
	if n, err := strconv.Atoi(h.Value(":status")); err == nil {
		return n
	}
	return def
}

// String renders the explanation for a terminal.
func (ex *Explanation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s on listener %s from %s\n", ex.Method, ex.URL, ex.Listener, ex.Source)
	if ex.Route == "" {
		b.WriteString("route: none matches\n")
	} else {
		fmt.Fprintf(&b, "route: %s (%s)\n", ex.Route, ex.RouteAt)
		if ex.When != "" {
			fmt.Fprintf(&b, "  when %s\n", ex.When)
		} else {
			b.WriteString("  (no `when`: matches every request)\n")
		}
		if len(ex.MatchedBy) > 0 {
			fmt.Fprintf(&b, "  matched by the route table: %s\n", strings.Join(ex.MatchedBy, ", "))
		}
		if ex.Condition != "" && len(ex.MatchedBy) > 0 {
			fmt.Fprintf(&b, "  then CEL: %s\n", ex.Condition)
		}
	}
	if len(ex.Steps) > 0 {
		b.WriteString("steps:\n")
		for _, e := range ex.Steps {
			b.WriteString("  ")
			if e.Response {
				b.WriteString("[response] ")
			}
			b.WriteString(e.Text)
			switch e.Kind {
			case rules.BlockSkipped:
				b.WriteString(": skipped, condition is false")
			case rules.ActionSkipped:
				b.WriteString(": not this time (percent)")
			case rules.BlockEntered:
				if strings.Contains(e.Text, " when ") {
					b.WriteString(": condition holds")
				}
			case rules.Failed:
				b.WriteString(": FAILED: " + e.Note + " (the request gets a 500)")
			default:
				if e.Note != "" {
					b.WriteString(" → " + e.Note)
				}
			}
			fmt.Fprintf(&b, "  (%s)\n", e.Where)
		}
	}
	o := ex.Outcome
	switch o.Kind {
	case OutcomeProxy:
		b.WriteString("result: proxy to ")
		if o.Upstream != "" {
			b.WriteString(o.Upstream)
		} else {
			b.WriteString(splitText(o.Split))
		}
		var opts []string
		if a := o.Action; a != nil {
			if a.Timeout > 0 {
				opts = append(opts, "timeout "+a.Timeout.String())
			}
			if rp := a.RetryPolicy; rp != nil {
				opts = append(opts, fmt.Sprintf("retries %d on %s", rp.NumRetries, strings.Join(rp.RetryOn, ",")))
			}
			for _, m := range a.MirrorPolicy {
				opts = append(opts, fmt.Sprintf("mirror to %s (%g%%)", m.Cluster, m.Percent))
			}
			for _, h := range a.HashPolicy {
				switch {
				case h.Header != "":
					opts = append(opts, "hash on header "+h.Header)
				case h.SourceIP:
					opts = append(opts, "hash on the client address")
				}
			}
		}
		if len(opts) > 0 {
			b.WriteString(" (" + strings.Join(opts, ", ") + ")")
		}
		b.WriteString("\nrequest sent upstream:\n")
		for _, h := range ex.Request {
			fmt.Fprintf(&b, "  %s: %s\n", h.Name, h.Value)
		}
		if len(ex.OnResponse) > 0 {
			b.WriteString("on the response:\n")
			for _, s := range ex.OnResponse {
				fmt.Fprintf(&b, "  %s\n", s)
			}
		}
	default:
		what := "respond"
		if o.Kind == OutcomeNoRoute {
			what = "no route: respond"
		}
		fmt.Fprintf(&b, "result: %s %d (%s)\n", what, o.Status, o.Details)
		for _, h := range o.Headers {
			fmt.Fprintf(&b, "  %s: %s\n", h.Name, h.Value)
		}
		if o.Body != "" {
			fmt.Fprintf(&b, "  body: %q\n", o.Body)
		}
	}
	return b.String()
}

func splitText(ws []*config.WeightedCluster) string {
	parts := make([]string, len(ws))
	for i, w := range ws {
		parts[i] = fmt.Sprintf("%s %d", w.Name, w.Weight)
	}
	return "split: " + strings.Join(parts, ", ")
}

// dryStream is a stream that is never sent: the request of Explain, as the
// route table, CEL and the rules filter see it. It traces the rules filter.
type dryStream struct {
	req, resp, trailers header.Map
	meta, state         stream.Metadata
	code                int
	reqID               string
	start               time.Time
	remote, local       netip.AddrPort
	reqSize             int64

	route    *route.Route
	override any
	reply    *dryReply
	events   []rules.Event
}

type dryReply struct {
	status  int
	body    string
	headers []header.Field
	details string
}

var (
	_ stream.Callbacks = (*dryStream)(nil)
	_ rules.Tracer     = (*dryStream)(nil)
)

func (d *dryStream) RequestHeaders() *header.Map      { return &d.req }
func (d *dryStream) ResponseHeaders() *header.Map     { return &d.resp }
func (d *dryStream) ResponseTrailers() *header.Map    { return &d.trailers }
func (d *dryStream) ResponseCode() int                { return d.code }
func (d *dryStream) RequestID() string                { return d.reqID }
func (d *dryStream) StartTime() time.Time             { return d.start }
func (d *dryStream) Protocol() string                 { return "HTTP/1.1" }
func (d *dryStream) DownstreamRemote() netip.AddrPort { return d.remote }
func (d *dryStream) DownstreamLocal() netip.AddrPort  { return d.local }
func (d *dryStream) TLS() *tls.ConnectionState        { return nil }
func (d *dryStream) UpstreamAddress() string          { return "" }
func (d *dryStream) RouteName() string {
	if d.route == nil {
		return ""
	}
	return d.route.Name()
}
func (d *dryStream) ClusterName() string      { return "" }
func (d *dryStream) RequestBodySize() int64   { return d.reqSize }
func (d *dryStream) ResponseBodySize() int64  { return 0 }
func (d *dryStream) Context() context.Context { return context.Background() }
func (d *dryStream) Resume()                  {}
func (d *dryStream) ClearRouteCache()         {}
func (d *dryStream) FilterOverride() any      { return d.override }
func (d *dryStream) StreamID() uint64         { return 0 }
func (d *dryStream) Trace(e rules.Event)      { d.events = append(d.events, e) }

// A dry run calls nothing: explain shows routing and rules, not callouts.
func (d *dryStream) HTTPCall(context.Context, string, *header.Map, []byte, time.Duration) (*stream.HTTPResponse, error) {
	return nil, errors.New("explain: no HTTP calls in a dry run")
}
func (d *dryStream) DynamicMetadata() *stream.Metadata   { return &d.meta }
func (d *dryStream) FilterState() *stream.Metadata       { return &d.state }
func (d *dryStream) RouteMetadata(string) map[string]any { return nil }
func (d *dryStream) Logger() *slog.Logger                { return slog.New(slog.DiscardHandler) }
func (d *dryStream) Roll(percent float64) bool           { return percent >= 100 }
func (d *dryStream) SendLocalReply(status int, body string, hs []header.Field, details string) {
	d.reply = &dryReply{status: status, body: body, headers: hs, details: details}
}
