package syntax

import (
	"bytes"
	"strings"
	"unicode/utf8"
)

// Format prints f in the canonical layout: two-space indentation, one
// statement per line, options in a fixed order, one blank line around
// top-level blocks, other blank lines kept but never more than one in a
// row, comments kept where they are (trailing comments of adjacent lines
// aligned), expressions and strings printed as written.
//
// Format(f) of a file that parsed without errors parses to the same tree
// (modulo positions and blank lines), and formatting that again gives the
// same bytes.
func Format(f *File) []byte {
	pr := &printer{}
	pr.list(0, stmts(f.Decls), f.Tail, true)
	return pr.buf.Bytes()
}

// FormatSource parses and formats src; it fails if src has syntax errors.
func FormatSource(path string, src []byte) ([]byte, error) {
	f, err := Parse(path, src)
	if err != nil {
		return nil, err
	}
	return Format(f), nil
}

type printer struct {
	buf bytes.Buffer
}

func stmts[S Stmt](list []S) []Stmt {
	out := make([]Stmt, len(list))
	for i, s := range list {
		out[i] = s
	}
	return out
}

// blockOf returns the header line, block and children of a block statement.
func blockOf(s Stmt) (header string, b *Block, children []Stmt, ok bool) {
	switch s := s.(type) {
	case *Upstream:
		return "upstream " + s.Name.Name, &s.Body, stmts(s.Stmts), true
	case *Listener:
		return "listener " + s.Name.Name + " " + s.Addr.Text, &s.Body, stmts(s.Items), true
	case *Test:
		return "test " + s.Name.Raw, &s.Body, stmts(s.Stmts), true
	case *On:
		return "on " + s.Phase.Name + when(s.When), &s.Body, stmts(s.Actions), true
	case *Route:
		return "route " + s.Name.Name + when(s.When), &s.Body, stmts(s.Actions), true
	case *TLS:
		return "tls", &s.Body, stmts(s.Stmts), true
	case *HTTP2:
		return "http2", &s.Body, stmts(s.Stmts), true
	}
	return "", nil, nil, false
}

func when(e *Expr) string {
	if e == nil {
		return ""
	}
	return " when " + e.Text
}

func (pr *printer) indent(n int) {
	for range n {
		pr.buf.WriteString("  ")
	}
}

func (pr *printer) comments(depth int, cs []*Comment, first bool) {
	for i, c := range cs {
		if c.BlankBefore && (i > 0 || !first) {
			pr.buf.WriteByte('\n')
		}
		pr.indent(depth)
		pr.buf.WriteString(c.Text)
		pr.buf.WriteByte('\n')
	}
}

// list prints statements at depth, then the trailing comments.
func (pr *printer) list(depth int, list []Stmt, tail []*Comment, top bool) {
	// Single-line statements: their code, and the column of their trailing
	// comment, aligned over runs of adjacent lines.
	code := make([]string, len(list))
	commentCol := make([]int, len(list))
	for i, s := range list {
		if _, _, _, isBlock := blockOf(s); !isBlock {
			code[i] = line(s)
		}
	}
	for i := 0; i < len(list); {
		j := i + 1
		for j < len(list) && adjacent(list[j], code[j-1], code[j]) {
			j++
		}
		width := 0
		for k := i; k < j; k++ {
			if list[k].Info().Comment != nil && !strings.Contains(code[k], "\n") {
				width = max(width, utf8.RuneCountInString(code[k]))
			}
		}
		for k := i; k < j; k++ {
			commentCol[k] = width + 1
		}
		i = j
	}

	for i, s := range list {
		info := s.Info()
		gap := info.BlankBefore
		if len(info.Doc) > 0 {
			gap = info.Doc[0].BlankBefore
		}
		if top && i > 0 {
			_, _, _, a := blockOf(list[i-1])
			_, _, _, b := blockOf(s)
			gap = gap || a || b
		}
		if gap && i > 0 {
			pr.buf.WriteByte('\n')
		}
		if len(info.Doc) > 0 {
			pr.comments(depth, info.Doc, true)
			if info.BlankBefore {
				pr.buf.WriteByte('\n')
			}
		}
		pr.indent(depth)
		if header, b, children, isBlock := blockOf(s); isBlock {
			pr.buf.WriteString(header)
			if len(children) == 0 && b.OpenComment == nil && len(b.Tail) == 0 {
				pr.buf.WriteString(" {}")
			} else {
				pr.buf.WriteString(" {")
				if b.OpenComment != nil {
					pr.buf.WriteString(" " + b.OpenComment.Text)
				}
				pr.buf.WriteByte('\n')
				pr.list(depth+1, children, b.Tail, false)
				pr.indent(depth)
				pr.buf.WriteByte('}')
			}
			if info.Comment != nil {
				pr.buf.WriteString(" " + info.Comment.Text)
			}
		} else {
			pr.buf.WriteString(code[i])
			if info.Comment != nil {
				pad := 1
				if !strings.Contains(code[i], "\n") {
					pad = max(1, commentCol[i]-utf8.RuneCountInString(code[i]))
				}
				pr.buf.WriteString(strings.Repeat(" ", pad) + info.Comment.Text)
			}
		}
		pr.buf.WriteByte('\n')
	}
	if len(tail) > 0 {
		if len(list) > 0 && tail[0].BlankBefore {
			pr.buf.WriteByte('\n')
		}
		pr.comments(depth, tail, true)
	}
}

// adjacent reports whether s (whose code is cur, after a statement whose
// code is prev) is on the line right after the previous statement, for
// comment alignment.
func adjacent(s Stmt, prev, cur string) bool {
	info := s.Info()
	return prev != "" && cur != "" && !info.BlankBefore && len(info.Doc) == 0 &&
		!strings.Contains(prev, "\n") && !strings.Contains(cur, "\n")
}

// line returns the text of a single-line statement.
func line(s Stmt) string {
	var b strings.Builder
	w := func(parts ...string) {
		for _, p := range parts {
			b.WriteString(p)
		}
	}
	switch s := s.(type) {
	case *Admin:
		w("admin ", s.Addr.Text)
	case *Import:
		w("import ", s.Path.Raw)
	case *Endpoint:
		w("endpoint ", s.Addr.Text)
		if s.Weight != nil {
			w(" weight ", s.Weight.Text)
		}
	case *LB:
		w("lb ", s.Policy.Name)
		if s.Hash != nil {
			w("(", s.Hash.Text, ")")
		}
	case *ConnectTimeout:
		w("connect_timeout ", s.Timeout.Text)
	case *Protocol:
		w("protocol ", s.Name.Name)
	case *HealthCheck:
		w("health_check ", s.Kind.Name, " ", s.Path.Raw)
		if s.Interval != nil {
			w(" interval ", s.Interval.Text)
		}
	case *TLSCert:
		w("cert ", s.Cert.Raw, " key ", s.Key.Raw)
	case *TLSOption:
		w(s.Name.Name)
		if s.Value != nil {
			w(" ", s.Value.Raw)
		}
	case *HTTP2Setting:
		w(s.Name.Name, " ", s.Value.Text)
	case *Keepalive:
		w("keepalive ", s.Interval.Text)
		if s.Timeout != nil {
			w(" timeout ", s.Timeout.Text)
		}
	case *Lua:
		if s.File != nil {
			w("lua ", s.File.Raw)
		} else {
			w("lua ", s.Code.Raw)
		}
	case *AccessLog:
		w("access_log ", s.Path.Raw)
		if s.Format != nil {
			w(" format ", s.Format.Raw)
		}
	case *Wasm:
		w("wasm ", s.File.Raw)
		if s.Config != nil {
			w(" config ", s.Config.Raw)
		}
		if s.RootID != nil {
			w(" root_id ", s.RootID.Raw)
		}
	case *HeaderAction:
		w(s.Op.String(), " ", s.Target.Msg.Name, ".headers[", s.Target.Key.Raw, "]")
		if s.Value != nil {
			w(" = ", s.Value.Text)
		}
	case *Rewrite:
		w("rewrite ", s.What.Name, " ", s.Value.Text)
	case *RateLimit:
		w("ratelimit ", s.Count.Text, " per ", s.Per.Text)
		if s.By != nil {
			w(" by ", s.By.Text)
		}
	case *Delay:
		w("delay ", s.Duration.Text)
		if s.Percent != nil {
			w(" percent ", s.Percent.Text)
		}
	case *Abort:
		w("abort ", s.Code.Text)
		if s.Percent != nil {
			w(" percent ", s.Percent.Text)
		}
	case *Respond:
		w("respond ", s.Code.Text)
		if s.Body != nil {
			w(" ", s.Body.Text)
		}
	case *Redirect:
		w("redirect ", s.Code.Text, " ", s.Location.Text)
	case *Deny:
		w("deny")
		if s.Code != nil {
			w(" ", s.Code.Text)
		}
	case *Proxy:
		w("proxy ")
		if s.Upstream != nil {
			w(s.Upstream.Name)
		} else {
			w("split(")
			for i, t := range s.Split {
				if i > 0 {
					w(", ")
				}
				w(t.Upstream.Name, ": ", t.Weight.Text)
			}
			w(")")
		}
		if s.Timeout != nil {
			w(" timeout ", s.Timeout.Text)
		}
		if s.Retries != nil {
			w(" retries ", s.Retries.Text)
		}
		if s.RetryOn != nil {
			w(" retry_on ", s.RetryOn.Raw)
		}
		if s.Mirror != nil {
			w(" mirror ", s.Mirror.Name)
			if s.MirrorPercent != nil {
				w(" percent ", s.MirrorPercent.Text)
			}
		}
	case *Request:
		w("request ", s.Method.Name, " ", s.URL.Raw)
		for _, h := range s.Headers {
			w(" header ", h.Name.Raw, " ", h.Value.Raw)
		}
		if s.Source != nil {
			w(" source ", s.Source.Raw)
		}
		if s.Body != nil {
			w(" body ", s.Body.Raw)
		}
	case *ExpectRoute:
		w("expect route ", s.Route.Name)
	case *ExpectUpstream:
		w("expect upstream ", s.Upstream.Name)
	case *ExpectRespond:
		w("expect respond ", s.Code.Text)
		if s.Body != nil {
			w(" ", s.Body.Raw)
		}
	case *ExpectHeader:
		w("expect header ", s.Name.Raw, " ", s.Value.Raw)
	}
	return b.String()
}
