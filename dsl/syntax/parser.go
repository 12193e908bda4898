package syntax

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/dsl/internal/suggest"
)

// MaxErrors is the number of diagnostics after which Parse stops.
const MaxErrors = 20

// Parse parses one *.sluice file. It always returns a File, partial when
// there are errors; the error, if any, is a Diagnostics. Imports are not
// followed (see ParseFiles).
func Parse(path string, src []byte) (*File, error) {
	f := &File{Path: path, Src: src}
	p := &parser{file: f}
	p.lx = newLexer(path, string(src), p.report)
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(tooManyErrors); !ok {
					panic(r)
				}
			}
		}()
		p.next()
		f.Decls = parseList(p, nil, p.decl)
	}()
	f.Comments = p.lx.comments
	p.diags.Sort()
	return f, p.diags.Err()
}

type (
	bailout       struct{} // abandons the current statement
	tooManyErrors struct{} // abandons the file
)

type parser struct {
	file    *File
	lx      *lexer
	tok     token // the next token, not yet consumed
	prevEnd Pos   // end of the last consumed token or expression
	diags   Diagnostics

	unclosedReported bool
}

// ---- diagnostics ----

func (p *parser) report(pos Pos, hint, msg string) {
	for _, d := range p.diags {
		if d.Pos.Offset == pos.Offset {
			return // one diagnostic per position is enough
		}
	}
	if len(p.diags) >= MaxErrors {
		p.diags = append(p.diags, &Diagnostic{Pos: pos, Msg: "too many errors; stopping", Line: lineAt(p.file.Src, pos)})
		panic(tooManyErrors{})
	}
	p.diags = append(p.diags, &Diagnostic{Pos: pos, Msg: msg, Hint: hint, Line: lineAt(p.file.Src, pos)})
}

func (p *parser) errorf(pos Pos, hint, format string, args ...any) {
	p.report(pos, hint, fmt.Sprintf(format, args...))
}

// fail reports an error and abandons the current statement.
func (p *parser) fail(pos Pos, hint, format string, args ...any) {
	p.errorf(pos, hint, format, args...)
	panic(bailout{})
}

// expected fails with "expected WHAT, found TOKEN".
func (p *parser) expected(what, hint string) {
	p.fail(p.tok.pos, hint, "expected %s, found %s", what, p.tok.describe())
}

func oneOf(words []string) string {
	return "expected one of: " + strings.Join(words, ", ")
}

// ---- tokens ----

func (p *parser) next() {
	p.prevEnd = p.tok.end
	p.tok = p.lx.next()
}

// nextAddr consumes the current token and reads an address.
func (p *parser) nextAddr() {
	p.prevEnd = p.tok.end
	p.tok = p.lx.nextAddr()
}

// exprAfter consumes the current token and reads the expression after it.
// A malformed expression (already reported) abandons the statement.
func (p *parser) exprAfter(mode exprMode) *Expr {
	e, ok := p.scanExpr(mode)
	if !ok {
		panic(bailout{})
	}
	return e
}

func (p *parser) scanExpr(mode exprMode) (*Expr, bool) {
	p.prevEnd = p.tok.end
	e, ok := p.lx.scanExpr(mode, p.tok.pos)
	if e != nil {
		p.prevEnd = e.End
	}
	p.tok = p.lx.next()
	return e, ok
}

// requiredExpr is exprAfter for an expression that must be there.
func (p *parser) requiredExpr(mode exprMode, what string) *Expr {
	e := p.exprAfter(mode)
	if e == nil {
		p.expected(what, "")
	}
	return e
}

// atEnd reports whether the current token ends a statement.
func (p *parser) atEnd() bool {
	switch p.tok.kind {
	case tNewline, tSemi, tEOF, tRbrace:
		return true
	}
	return false
}

func (p *parser) isWord(w string) bool { return p.tok.kind == tIdent && p.tok.text == w }

// ---- statement lists and blocks ----

// parseList parses statements up to the `}` closing blk (not consumed),
// or to the end of the file when blk is nil, attaching comments and
// recovering from errors at statement boundaries.
func parseList[T Stmt](p *parser, blk *Block, parse func() T) []T {
	top := blk == nil
	prevLine := 0 // the line on which what precedes the next item ends
	if !top {
		prevLine = blk.Lbrace.Line
	}
	var (
		out      []T
		doc      []*Comment
		last     Stmt
		lastLine = -1
	)
	take := func(c *Comment) {
		switch {
		case c == nil:
			return
		case !c.alone && last != nil && lastLine == c.Pos.Line && last.Info().Comment == nil:
			last.Info().Comment = c
		case !c.alone && last == nil && !top && blk.Lbrace.Line == c.Pos.Line && blk.OpenComment == nil:
			blk.OpenComment = c
		default:
			c.BlankBefore = c.Pos.Line > prevLine+1
			doc = append(doc, c)
		}
		prevLine = c.Pos.Line
	}
	for {
		switch p.tok.kind {
		case tNewline, tSemi:
			take(p.tok.comment)
			p.next()
			continue
		case tEOF:
			take(p.tok.comment)
			if !top && !p.unclosedReported {
				p.unclosedReported = true
				p.errorf(blk.Lbrace, "", "unclosed `{`: expected `}` before the end of the file")
			}
		case tRbrace:
			if top {
				p.errorf(p.tok.pos, "", "unexpected `}`: no block is open")
				p.next()
				continue
			}
		default:
			start := p.tok.pos
			s, ok := parseStmt(p, parse)
			if ok {
				info := s.Info()
				info.Doc, doc = doc, nil
				info.BlankBefore = start.Line > prevLine+1
				info.End = p.prevEnd
				out = append(out, s)
				last, lastLine = s, p.prevEnd.Line
			} else {
				last, lastLine, doc = nil, -1, nil
			}
			prevLine = p.prevEnd.Line
			continue
		}
		break
	}
	if top {
		p.file.Tail = doc
	} else {
		blk.Tail = doc
	}
	return out
}

// parseStmt parses one statement and checks that it ends there. On a
// syntax error it skips the rest of the statement.
func parseStmt[T Stmt](p *parser, parse func() T) (s T, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			if _, isBailout := r.(bailout); !isBailout {
				panic(r)
			}
			p.skipStmt()
			ok = false
		}
	}()
	s = parse()
	if !p.atEnd() {
		p.fail(p.tok.pos, "a statement ends at a line break or `;`",
			"expected end of statement, found %s", p.tok.describe())
	}
	return s, true
}

// skipStmt skips what is left of a statement after an error, including a
// block it opens.
func (p *parser) skipStmt() {
	if p.atEnd() {
		return
	}
	var from Pos
	switch p.tok.kind {
	case tLbrace, tLparen, tLbrack:
		from = p.tok.pos // the lexer is past it: re-read it so its block is skipped
	}
	p.lx.skipStmt(from)
	p.prevEnd = p.lx.pos
	p.tok = p.lx.next()
}

// openBlock reads the `{` of a block.
func (p *parser) openBlock(what string) Block {
	if p.tok.kind != tLbrace {
		hint := ""
		if p.tok.kind == tNewline {
			hint = "the `{` goes on the same line as the statement that opens the block"
			if nl := p.tok.pos; p.braceOnNextLine() {
				p.errorf(nl, hint, "expected `{` to open %s, found end of line", what)
				b := Block{Lbrace: p.tok.pos}
				p.next()
				return b
			}
		}
		p.expected("`{` to open "+what, hint)
	}
	b := Block{Lbrace: p.tok.pos}
	p.next()
	return b
}

// braceOnNextLine reports whether the current newline token is followed,
// after blank lines, by `{`: then it skips to that `{` for error recovery.
func (p *parser) braceOnNextLine() bool {
	saved, tok := p.lx.save(), p.tok
	for p.tok.kind == tNewline {
		p.tok = p.lx.next()
	}
	if p.tok.kind == tLbrace {
		return true
	}
	p.lx.restore(saved)
	p.tok = tok
	return false
}

// closeBlock reads the `}` of a block (absent at the end of the file,
// which parseList has reported).
func (p *parser) closeBlock(b *Block) {
	if p.tok.kind == tRbrace {
		b.Rbrace = p.tok.pos
		p.next()
	}
}

// ---- keywords ----

var (
	topWords      = []string{"admin", "import", "upstream", "listener", "test"}
	upstreamWords = []string{"endpoint", "lb", "connect_timeout", "protocol", "http2", "tls", "health_check"}
	listenerWords = []string{"protocol", "tls", "http2", "access_log", "on", "lua", "wasm", "route"}
	actionWords   = []string{"set", "add", "remove", "rewrite", "ratelimit", "delay", "abort",
		"respond", "redirect", "deny", "proxy", "lua", "wasm"}
	testWords = []string{"request", "expect"}

	listenerTLSWords = []string{"cert", "alpn", "client_ca", "require_client_cert", "min_version", "max_version", "cipher_suites"}
	upstreamTLSWords = []string{"sni", "ca", "cert", "san", "alpn", "min_version", "max_version", "cipher_suites"}
	http2Words       = []string{"max_concurrent_streams", "initial_stream_window", "initial_connection_window", "keepalive"}

	upstreamProtocols = []string{"http1", "http2", "auto", "downstream"}
	listenerProtocols = []string{"http1", "http2", "auto"}

	lbPolicies = []string{"round_robin", "least_request", "random", "ring_hash", "maglev"}
)

// unknownStmt fails on a word that starts no statement in this context.
func (p *parser) unknownStmt(where string, words []string) {
	t := p.tok
	if t.kind != tIdent {
		p.fail(t.pos, oneOf(words), "expected a statement, found %s", t.describe())
	}
	var homes []string
	for _, h := range []struct {
		where string
		words []string
	}{
		{"at the top level", topWords},
		{"in an upstream block", upstreamWords},
		{"in a listener block", listenerWords},
		{"in an `on` block or a route", actionWords},
		{"in a test block", testWords},
		{"in a tls block", append(slices.Clone(listenerTLSWords), upstreamTLSWords...)},
		{"in an http2 block", http2Words},
	} {
		if slices.Contains(h.words, t.text) {
			homes = append(homes, h.where)
		}
	}
	home := strings.Join(homes, " or ")
	if home != "" {
		p.fail(t.pos, "`"+t.text+"` belongs "+home+"; here "+oneOf(words),
			"`%s` is not allowed %s", t.text, where)
	}
	hint := oneOf(words)
	if s := suggest.Closest(t.text, words); s != "" {
		hint = "did you mean `" + s + "`? " + hint
	}
	p.fail(t.pos, hint, "unknown statement `%s` %s", t.text, where)
}

// options parses `NAME ARGS` options until the end of the statement;
// parse reads one option, whose name is the current token. Options may
// come in any order, each once unless repeatable.
func (p *parser) options(stmt string, names []string, repeatable string, parse func(name string)) {
	seen := map[string]bool{}
	for !p.atEnd() {
		t := p.tok
		if t.kind != tIdent || !slices.Contains(names, t.text) {
			hint := oneOf(append(slices.Clone(names), "the end of the statement"))
			if t.kind == tIdent {
				if s := suggest.Closest(t.text, names); s != "" {
					hint = "did you mean `" + s + "`? " + hint
				}
			}
			p.fail(t.pos, hint, "unexpected %s in %s statement", t.describe(), stmt)
		}
		if seen[t.text] && t.text != repeatable {
			p.fail(t.pos, "", "duplicate `%s` in %s statement", t.text, stmt)
		}
		seen[t.text] = true
		parse(t.text)
	}
}

// ---- leaves ----

func (p *parser) ident(what string) *Ident {
	if p.tok.kind != tIdent {
		p.expected(what, "")
	}
	id := &Ident{Pos: p.tok.pos, Name: p.tok.text}
	p.next()
	return id
}

// word reads one of a closed set of words.
func (p *parser) word(what string, words []string) *Ident {
	if p.tok.kind != tIdent {
		p.expected(what, oneOf(words))
	}
	if !slices.Contains(words, p.tok.text) {
		hint := oneOf(words)
		if s := suggest.Closest(p.tok.text, words); s != "" {
			hint = "did you mean `" + s + "`? " + hint
		}
		p.fail(p.tok.pos, hint, "unknown %s `%s`", what, p.tok.text)
	}
	return p.ident(what)
}

// keyword reads the word w.
func (p *parser) keyword(w string) {
	if !p.isWord(w) {
		p.expected("`"+w+"`", "")
	}
	p.next()
}

func (p *parser) str(what string) *String {
	if p.tok.kind != tString {
		p.expected(what+" (a quoted string)", "")
	}
	s := &String{Pos: p.tok.pos, Raw: p.tok.text, Value: p.lx.unquote(p.tok)}
	p.next()
	return s
}

// numberTok checks that the current token is a number, without consuming it.
func (p *parser) numberTok(what string) *Number {
	if p.tok.kind != tNumber {
		p.expected(what, "")
	}
	v, _ := strconv.ParseFloat(p.tok.text, 64)
	return &Number{Pos: p.tok.pos, Text: p.tok.text, Value: v}
}

// intTok checks that the current token is an integer in [lo, hi].
func (p *parser) intTok(what string, lo, hi int) *Number {
	n := p.numberTok(what)
	i, err := strconv.Atoi(n.Text)
	if err != nil || i < lo || i > hi {
		p.fail(n.Pos, "", "%s must be an integer from %d to %d, found `%s`", strings.TrimPrefix(strings.TrimPrefix(what, "an "), "a "), lo, hi, n.Text)
	}
	return n
}

func (p *parser) integer(what string, lo, hi int) *Number {
	n := p.intTok(what, lo, hi)
	p.next()
	return n
}

func (p *parser) statusCodeTok(what string) *Number { return p.intTok(what, 100, 599) }

func (p *parser) percent() *Number {
	n := p.numberTok("a percentage")
	if n.Value < 0 || n.Value > 100 {
		p.fail(n.Pos, "", "percent must be from 0 to 100, found `%s`", n.Text)
	}
	p.next()
	return n
}

const durationHint = "a duration is a number with a unit: ns, us, ms, s, m or h, as in 250ms, 1s or 1m30s"

func (p *parser) duration(what string) *Duration {
	switch p.tok.kind {
	case tDuration:
		if p.tok.bad {
			p.fail(p.tok.pos, durationHint, "invalid duration `%s`", p.tok.text)
		}
	case tNumber:
		p.fail(p.tok.pos, durationHint, "%s needs a unit, found `%s`", what, p.tok.text)
	default:
		p.expected(what+" (a duration such as 1s)", "")
	}
	v, _ := time.ParseDuration(p.tok.text)
	d := &Duration{Pos: p.tok.pos, Text: p.tok.text, Value: v}
	p.next()
	return d
}

const addrHint = "an address is HOST:PORT, as in 127.0.0.1:8080, localhost:8080 or [::1]:8080"

// addr reads an address; the previous token must have been consumed with nextAddr.
func (p *parser) addr(what string) *Addr {
	if p.tok.kind != tAddr {
		p.expected(what, addrHint)
	}
	t := p.tok
	host, port, err := net.SplitHostPort(t.text)
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), "address "+t.text+": ")
		p.fail(t.pos, addrHint, "invalid address `%s`: %s", t.text, msg)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '+' || port[0] == '-' {
		i := strings.LastIndexByte(t.text, ':') + 1
		p.fail(t.pos.advance(t.text[:i]), "a port is a number from 1 to 65535", "invalid port `%s`", port)
	}
	p.next()
	return &Addr{Pos: t.pos, Text: t.text, Host: host, Port: port}
}

// ---- top level ----

func (p *parser) decl() Decl {
	if p.tok.kind == tIdent {
		switch p.tok.text {
		case "admin":
			s := &Admin{}
			s.Pos = p.tok.pos
			p.nextAddr()
			s.Addr = p.addr("the admin address")
			return s
		case "import":
			s := &Import{}
			s.Pos = p.tok.pos
			p.next()
			s.Path = p.str("the path of the file to import")
			return s
		case "upstream":
			return p.upstream()
		case "listener":
			return p.listener()
		case "test":
			return p.test()
		}
	}
	p.unknownStmt("at the top level", topWords)
	return nil
}

func (p *parser) upstream() *Upstream {
	s := &Upstream{}
	s.Pos = p.tok.pos
	p.next()
	s.Name = p.ident("an upstream name")
	s.Body = p.openBlock("the upstream block")
	s.Stmts = parseList(p, &s.Body, p.upstreamStmt)
	p.closeBlock(&s.Body)
	return s
}

func (p *parser) listener() *Listener {
	s := &Listener{}
	s.Pos = p.tok.pos
	p.next()
	if p.tok.kind != tIdent {
		p.expected("a listener name", "")
	}
	s.Name = &Ident{Pos: p.tok.pos, Name: p.tok.text}
	p.nextAddr()
	s.Addr = p.addr("the listener address")
	s.Body = p.openBlock("the listener block")
	s.Items = parseList(p, &s.Body, p.listenerItem)
	p.closeBlock(&s.Body)
	return s
}

func (p *parser) test() *Test {
	s := &Test{}
	s.Pos = p.tok.pos
	p.next()
	s.Name = p.str("the test name")
	s.Body = p.openBlock("the test block")
	s.Stmts = parseList(p, &s.Body, p.testStmt)
	p.closeBlock(&s.Body)
	return s
}

// ---- upstream ----

func (p *parser) upstreamStmt() UpstreamStmt {
	pos := p.tok.pos
	if p.tok.kind == tIdent {
		switch p.tok.text {
		case "endpoint":
			s := &Endpoint{}
			s.Pos = pos
			p.nextAddr()
			s.Addr = p.addr("an endpoint address")
			p.options("endpoint", []string{"weight"}, "", func(string) {
				p.next()
				s.Weight = p.integer("an endpoint weight", 1, 1<<31-1)
			})
			return s
		case "lb":
			s := &LB{}
			s.Pos = pos
			p.next()
			s.Policy = p.word("load balancing policy", lbPolicies)
			switch s.Policy.Name {
			case "ring_hash", "maglev":
				if p.tok.kind != tLparen {
					p.expected("`(` after `"+s.Policy.Name+"`",
						s.Policy.Name+" needs a hash key, as in "+s.Policy.Name+"(request.headers[\"x-user\"])")
				}
				s.Hash = p.requiredExpr(exprParen, "a hash key expression")
				p.next() // the `)`, checked by scanExpr
			default:
				if p.tok.kind == tLparen {
					p.fail(p.tok.pos, "", "`%s` takes no argument", s.Policy.Name)
				}
			}
			return s
		case "connect_timeout":
			s := &ConnectTimeout{}
			s.Pos = pos
			p.next()
			s.Timeout = p.duration("a connect timeout")
			return s
		case "protocol":
			s := &Protocol{}
			s.Pos = pos
			p.next()
			s.Name = p.word("upstream protocol", upstreamProtocols)
			return s
		case "tls":
			return p.tls("an upstream's", upstreamTLSWords, "a listener's", listenerTLSWords)
		case "http2":
			return p.http2()
		case "health_check":
			s := &HealthCheck{}
			s.Pos = pos
			p.next()
			s.Kind = p.word("health check type", []string{"http"})
			s.Path = p.str("the health check path")
			p.options("health_check", []string{"interval"}, "", func(string) {
				p.next()
				s.Interval = p.duration("a health check interval")
			})
			return s
		}
	}
	p.unknownStmt("in an upstream block", upstreamWords)
	return nil
}

// ---- listener ----

func (p *parser) listenerItem() ListenerItem {
	pos := p.tok.pos
	if p.tok.kind == tIdent {
		switch p.tok.text {
		case "protocol":
			s := &Protocol{}
			s.Pos = pos
			p.next()
			s.Name = p.word("listener protocol", listenerProtocols)
			return s
		case "tls":
			return p.tls("a listener's", listenerTLSWords, "an upstream's", upstreamTLSWords)
		case "http2":
			return p.http2()
		case "on":
			s := &On{}
			s.Pos = pos
			p.next()
			s.Phase = p.word("phase", []string{"request", "response"})
			s.When = p.when()
			s.Body = p.openBlock("the `on " + s.Phase.Name + "` block")
			s.Actions = parseList(p, &s.Body, func() Action { return p.action("in an `on` block") })
			p.closeBlock(&s.Body)
			return s
		case "route":
			s := &Route{}
			s.Pos = pos
			p.next()
			s.Name = p.ident("a route name")
			s.When = p.when()
			s.Body = p.openBlock("the route block")
			s.Actions = parseList(p, &s.Body, func() Action { return p.action("in a route") })
			p.closeBlock(&s.Body)
			return s
		case "lua":
			return p.lua()
		case "wasm":
			return p.wasm()
		case "access_log":
			s := &AccessLog{}
			s.Pos = pos
			p.next()
			s.Path = p.str("an access log path (\"/dev/stdout\" for the terminal)")
			p.options("access_log", []string{"format"}, "", func(string) {
				p.next()
				s.Format = p.str("an access log format")
			})
			return s
		}
	}
	p.unknownStmt("in a listener block", listenerWords)
	return nil
}

// ---- tls and http2 blocks ----

// tlsValues names the value of each tls option that takes one, for
// diagnostics.
var tlsValues = map[string]string{
	"alpn":          `the ALPN protocols, as in "h2,http/1.1"`,
	"cipher_suites": `TLS 1.2 cipher suites, as in "ECDHE-RSA-AES128-GCM-SHA256,ECDHE-ECDSA-AES128-GCM-SHA256"`,
	"min_version":   `a TLS version: "TLSv1_2" or "TLSv1_3"`,
	"max_version":   `a TLS version: "TLSv1_2" or "TLSv1_3"`,
	"client_ca":     "the CA file that verifies client certificates",
	"ca":            "the CA file that verifies the upstream's certificate",
	"sni":           "the server name to send",
	"san":           "a subject alt name the upstream's certificate must have",
}

// tls reads `tls { ... }`. where ("a listener's") and words are the block's
// context and statements; other and otherWords those of the other context,
// to say where a misplaced statement belongs.
func (p *parser) tls(where string, words []string, other string, otherWords []string) *TLS {
	s := &TLS{}
	s.Pos = p.tok.pos
	p.next()
	s.Body = p.openBlock("the tls block")
	s.Stmts = parseList(p, &s.Body, func() TLSStmt { return p.tlsStmt(where, words, other, otherWords) })
	p.closeBlock(&s.Body)
	return s
}

func (p *parser) tlsStmt(where string, words []string, other string, otherWords []string) TLSStmt {
	t := p.tok
	if t.kind == tIdent && slices.Contains(words, t.text) {
		if t.text == "cert" {
			s := &TLSCert{}
			s.Pos = t.pos
			p.next()
			s.Cert = p.str("a certificate chain file")
			if !p.isWord("key") {
				p.expected("`key` and the private key file after the certificate",
					`a certificate goes with its key: cert "server.pem" key "server.key"`)
			}
			p.next()
			s.Key = p.str("a private key file")
			return s
		}
		s := &TLSOption{Name: &Ident{Pos: t.pos, Name: t.text}}
		s.Pos = t.pos
		p.next()
		if what, ok := tlsValues[t.text]; ok {
			s.Value = p.str(what)
		}
		return s
	}
	in := "in " + where + " tls block"
	if t.kind == tIdent {
		switch {
		case t.text == "key":
			p.fail(t.pos, `write the certificate and its key on one line: cert "server.pem" key "server.key"`,
				"`key` must follow `cert \"FILE\"`")
		case slices.Contains(otherWords, t.text):
			p.fail(t.pos, "`"+t.text+"` belongs in "+other+" tls block; here "+oneOf(words),
				"`%s` is not allowed %s", t.text, in)
		}
	}
	p.unknownStmt(in, words)
	return nil
}

// http2 reads `http2 { ... }`.
func (p *parser) http2() *HTTP2 {
	s := &HTTP2{}
	s.Pos = p.tok.pos
	p.next()
	s.Body = p.openBlock("the http2 block")
	s.Stmts = parseList(p, &s.Body, p.http2Stmt)
	p.closeBlock(&s.Body)
	return s
}

func (p *parser) http2Stmt() HTTP2Stmt {
	t := p.tok
	if t.kind == tIdent {
		switch t.text {
		case "max_concurrent_streams", "initial_stream_window", "initial_connection_window":
			s := &HTTP2Setting{Name: &Ident{Pos: t.pos, Name: t.text}}
			s.Pos = t.pos
			p.next()
			if t.text == "max_concurrent_streams" {
				s.Value = p.integer("a number of streams", 1, 1<<31-1)
			} else {
				// HTTP/2's bounds: the default window, and 2^31-1.
				s.Value = p.integer("a window size in bytes", 65535, 1<<31-1)
			}
			return s
		case "keepalive":
			s := &Keepalive{}
			s.Pos = t.pos
			p.next()
			s.Interval = p.duration("a keepalive interval")
			p.options("keepalive", []string{"timeout"}, "", func(string) {
				p.next()
				s.Timeout = p.duration("a keepalive timeout")
			})
			return s
		}
	}
	p.unknownStmt("in an http2 block", http2Words)
	return nil
}

// when reads an optional `when EXPR` before a block.
func (p *parser) when() *Expr {
	if !p.isWord("when") {
		return nil
	}
	e, ok := p.scanExpr(exprWhen)
	if !ok && p.tok.kind != tLbrace {
		panic(bailout{}) // reported; with a `{` to go on with, parse the block
	}
	if e == nil {
		p.expected("a condition after `when`", "")
	}
	if p.tok.kind != tLbrace {
		hint := ""
		if p.tok.kind == tNewline {
			hint = "a condition ends at the end of its line: put the `{` there; to break a long condition, wrap it in parentheses"
		}
		p.expected("`{` after the condition", hint)
	}
	return e
}

func (p *parser) lua() *Lua {
	s := &Lua{}
	s.Pos = p.tok.pos
	p.next()
	code := p.str("a Lua file name or `inline code`")
	if code.IsRaw() {
		s.Code = code
	} else {
		s.File = code
	}
	return s
}

func (p *parser) wasm() *Wasm {
	s := &Wasm{}
	s.Pos = p.tok.pos
	p.next()
	s.File = p.str("a wasm file name")
	p.options("wasm", []string{"config", "root_id"}, "", func(name string) {
		p.next()
		if name == "config" {
			s.Config = p.str("the filter configuration")
		} else {
			s.RootID = p.str("the root id")
		}
	})
	return s
}

// ---- actions ----

// action reads an action; where names the block for diagnostics.
func (p *parser) action(where string) Action {
	pos := p.tok.pos
	if p.tok.kind == tIdent {
		switch p.tok.text {
		case "set", "add", "remove":
			s := &HeaderAction{Op: map[string]HeaderOp{"set": HeaderSet, "add": HeaderAdd, "remove": HeaderRemove}[p.tok.text]}
			s.Pos = pos
			p.next()
			s.Target = p.headerRef()
			if s.Op != HeaderRemove {
				if p.tok.kind != tAssign {
					p.expected("`=`", "")
				}
				s.Value = p.requiredExpr(exprLine, "a value after `=`")
			}
			return s
		case "rewrite":
			s := &Rewrite{}
			s.Pos = pos
			p.next()
			if p.tok.kind != tIdent {
				p.expected("`path` or `host`", "")
			}
			s.What = &Ident{Pos: p.tok.pos, Name: p.tok.text}
			if s.What.Name != "path" && s.What.Name != "host" {
				p.fail(p.tok.pos, "", "expected `path` or `host` after rewrite, found %s", p.tok.describe())
			}
			s.Value = p.requiredExpr(exprLine, "the new "+s.What.Name)
			return s
		case "ratelimit":
			s := &RateLimit{}
			s.Pos = pos
			p.next()
			s.Count = p.integer("the number of requests", 1, 1<<31-1)
			p.keyword("per")
			s.Per = p.duration("a rate limit period")
			p.options("ratelimit", []string{"by"}, "", func(string) {
				s.By = p.requiredExpr(exprLine, "a key expression after `by`")
			})
			return s
		case "delay":
			s := &Delay{}
			s.Pos = pos
			p.next()
			s.Duration = p.duration("a delay")
			p.options("delay", []string{"percent"}, "", func(string) {
				p.next()
				s.Percent = p.percent()
			})
			return s
		case "abort":
			s := &Abort{}
			s.Pos = pos
			p.next()
			s.Code = p.statusCodeTok("a status code")
			p.next()
			p.options("abort", []string{"percent"}, "", func(string) {
				p.next()
				s.Percent = p.percent()
			})
			return s
		case "respond":
			s := &Respond{}
			s.Pos = pos
			p.next()
			s.Code = p.statusCodeTok("a status code")
			s.Body = p.exprAfter(exprLine)
			return s
		case "redirect":
			s := &Redirect{}
			s.Pos = pos
			p.next()
			s.Code = p.numberTok("a redirect status code")
			switch s.Code.Text {
			case "301", "302", "303", "307", "308":
			default:
				p.fail(s.Code.Pos, "", "redirect status code must be 301, 302, 303, 307 or 308, found `%s`", s.Code.Text)
			}
			s.Location = p.requiredExpr(exprLine, "the redirect location")
			return s
		case "deny":
			s := &Deny{}
			s.Pos = pos
			p.next()
			if p.tok.kind == tNumber || p.tok.kind == tDuration { // 4O3: a typo for a code
				s.Code = p.statusCodeTok("a status code")
				p.next()
			}
			return s
		case "proxy":
			return p.proxy()
		case "lua":
			return p.lua()
		case "wasm":
			return p.wasm()
		}
	}
	p.unknownStmt(where, actionWords)
	return nil
}

// headerRef reads request.headers["K"] or response.headers["K"].
func (p *parser) headerRef() *HeaderRef {
	const what = "`request.headers[\"NAME\"]` or `response.headers[\"NAME\"]`"
	r := &HeaderRef{Pos: p.tok.pos}
	if p.tok.kind != tIdent || p.tok.text != "request" && p.tok.text != "response" {
		p.expected(what, "")
	}
	r.Msg = p.ident(what)
	if p.tok.kind != tDot {
		p.expected("`.headers` after `"+r.Msg.Name+"`", "")
	}
	p.next()
	if !p.isWord("headers") {
		p.expected("`headers` after `"+r.Msg.Name+".`", "")
	}
	p.next()
	if p.tok.kind != tLbrack {
		p.expected("`[` and a header name", "")
	}
	p.next()
	r.Key = p.str("a header name")
	if r.Key.Value == "" {
		p.fail(r.Key.Pos, "", "empty header name")
	}
	if p.tok.kind != tRbrack {
		p.expected("`]`", "")
	}
	p.next()
	return r
}

func (p *parser) proxy() *Proxy {
	s := &Proxy{}
	s.Pos = p.tok.pos
	p.next()
	name := p.ident("an upstream name or split(...)")
	if name.Name == "split" && p.tok.kind == tLparen {
		open := p.tok.pos
		p.next()
		skipNewlines := func() {
			for p.tok.kind == tNewline {
				if c := p.tok.comment; c != nil {
					p.errorf(c.Pos, "", "a comment cannot go inside split(...)") // and go on
				}
				p.next()
			}
		}
		for {
			skipNewlines()
			if p.tok.kind == tRparen {
				break
			}
			t := &SplitTarget{Upstream: p.ident("an upstream name")}
			if p.tok.kind != tColon {
				p.expected("`:` and a weight after the upstream name", "split entries are NAME: WEIGHT, as in split(api: 90, api_v2: 10)")
			}
			p.next()
			t.Weight = p.integer("a split weight", 0, 1<<31-1)
			s.Split = append(s.Split, t)
			skipNewlines()
			if p.tok.kind != tComma {
				break
			}
			p.next()
		}
		if p.tok.kind != tRparen {
			p.expected("`,` or `)`", "")
		}
		if len(s.Split) == 0 {
			p.fail(open, "", "split needs at least one upstream")
		}
		p.next()
	} else {
		s.Upstream = name
	}
	p.options("proxy", []string{"timeout", "retries", "retry_on", "mirror"}, "", func(opt string) {
		p.next()
		switch opt {
		case "timeout":
			s.Timeout = p.duration("a timeout")
		case "retries":
			s.Retries = p.integer("the number of retries", 0, 1000)
		case "retry_on":
			s.RetryOn = p.str("retry conditions")
		case "mirror":
			s.Mirror = p.ident("the upstream to mirror to")
			if p.isWord("percent") {
				p.next()
				s.MirrorPercent = p.percent()
			}
		}
	})
	return s
}

// ---- tests ----

func (p *parser) testStmt() TestStmt {
	pos := p.tok.pos
	if p.isWord("request") {
		s := &Request{}
		s.Pos = pos
		p.next()
		s.Method = p.ident("an HTTP method")
		s.URL = p.str("the request URL")
		p.options("request", []string{"header", "source", "body"}, "header", func(opt string) {
			p.next()
			switch opt {
			case "header":
				h := &TestHeader{Name: p.str("a header name")}
				h.Value = p.str("the header value")
				s.Headers = append(s.Headers, h)
			case "source":
				s.Source = p.str("the source address")
			case "body":
				s.Body = p.str("the request body")
			}
		})
		return s
	}
	if p.isWord("expect") {
		p.next()
		kind := p.word("expectation", []string{"route", "upstream", "respond", "header"})
		switch kind.Name {
		case "route":
			s := &ExpectRoute{Route: p.ident("a route name")}
			s.Pos = pos
			return s
		case "upstream":
			s := &ExpectUpstream{Upstream: p.ident("an upstream name")}
			s.Pos = pos
			return s
		case "respond":
			s := &ExpectRespond{Code: p.statusCodeTok("a status code")}
			s.Pos = pos
			p.next()
			if p.tok.kind == tString {
				s.Body = p.str("the response body")
			}
			return s
		default:
			s := &ExpectHeader{Name: p.str("a header name")}
			s.Pos = pos
			s.Value = p.str("the header value")
			return s
		}
	}
	p.unknownStmt("in a test block", testWords)
	return nil
}
