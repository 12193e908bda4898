package syntax

// Inspect walks the tree rooted at n depth-first, in source order, calling
// f for each non-nil node: statements, blocks' statements, and leaves
// (*Ident, *String, *Number, *Duration, *Addr, *Expr, *HeaderRef,
// *SplitTarget, *TestHeader). If f returns false, the children of that
// node are skipped. Comments are not visited.
func Inspect(n Node, f func(Node) bool) {
	if isNil(n) || !f(n) {
		return
	}
	visit := func(children ...Node) {
		for _, c := range children {
			Inspect(c, f)
		}
	}
	switch n := n.(type) {
	case *File:
		for _, d := range n.Decls {
			Inspect(d, f)
		}
	case *Admin:
		visit(n.Addr)
	case *Import:
		visit(n.Path)
	case *Upstream:
		visit(n.Name)
		for _, s := range n.Stmts {
			Inspect(s, f)
		}
	case *Listener:
		visit(n.Name, n.Addr)
		for _, s := range n.Items {
			Inspect(s, f)
		}
	case *Test:
		visit(n.Name)
		for _, s := range n.Stmts {
			Inspect(s, f)
		}
	case *Endpoint:
		visit(n.Addr, n.Weight)
	case *LB:
		visit(n.Policy, n.Hash)
	case *ConnectTimeout:
		visit(n.Timeout)
	case *Protocol:
		visit(n.Name)
	case *AccessLog:
		visit(n.Path, n.Format)
	case *HealthCheck:
		visit(n.Kind, n.Path, n.Interval)
	case *TLS:
		for _, s := range n.Stmts {
			Inspect(s, f)
		}
	case *TLSCert:
		visit(n.Cert, n.Key)
	case *TLSOption:
		visit(n.Name, n.Value)
	case *HTTP2:
		for _, s := range n.Stmts {
			Inspect(s, f)
		}
	case *HTTP2Setting:
		visit(n.Name, n.Value)
	case *Keepalive:
		visit(n.Interval, n.Timeout)
	case *On:
		visit(n.Phase, n.When)
		for _, s := range n.Actions {
			Inspect(s, f)
		}
	case *Route:
		visit(n.Name, n.When)
		for _, s := range n.Actions {
			Inspect(s, f)
		}
	case *Lua:
		visit(n.File, n.Code)
	case *Wasm:
		visit(n.File, n.Config, n.RootID)
	case *HeaderAction:
		visit(n.Target, n.Value)
	case *HeaderRef:
		visit(n.Msg, n.Key)
	case *Rewrite:
		visit(n.What, n.Value)
	case *RateLimit:
		visit(n.Count, n.Per, n.By)
	case *Delay:
		visit(n.Duration, n.Percent)
	case *Abort:
		visit(n.Code, n.Percent)
	case *Respond:
		visit(n.Code, n.Body)
	case *Redirect:
		visit(n.Code, n.Location)
	case *Deny:
		visit(n.Code)
	case *Proxy:
		visit(n.Upstream)
		for _, t := range n.Split {
			Inspect(t, f)
		}
		visit(n.Timeout, n.Retries, n.RetryOn, n.Mirror, n.MirrorPercent)
	case *SplitTarget:
		visit(n.Upstream, n.Weight)
	case *Request:
		visit(n.Method, n.URL)
		for _, h := range n.Headers {
			Inspect(h, f)
		}
		visit(n.Source, n.Body)
	case *TestHeader:
		visit(n.Name, n.Value)
	case *ExpectRoute:
		visit(n.Route)
	case *ExpectUpstream:
		visit(n.Upstream)
	case *ExpectRespond:
		visit(n.Code, n.Body)
	case *ExpectHeader:
		visit(n.Name, n.Value)
	}
}

// isNil reports whether n is nil or a typed nil pointer.
func isNil(n Node) bool {
	switch n := n.(type) {
	case nil:
		return true
	case *Ident:
		return n == nil
	case *String:
		return n == nil
	case *Number:
		return n == nil
	case *Duration:
		return n == nil
	case *Addr:
		return n == nil
	case *Expr:
		return n == nil
	case *HeaderRef:
		return n == nil
	}
	return false
}
