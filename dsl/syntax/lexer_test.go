package syntax

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/dsl/internal/suggest"
)

// lexAll returns the ordinary tokens of src as "kind text @line:col".
func lexAll(src string) (toks []string, diags []string) {
	lx := newLexer("t", src, func(pos Pos, hint, msg string) {
		diags = append(diags, fmt.Sprintf("%d:%d: %s", pos.Line, pos.Col, msg))
	})
	for {
		t := lx.next()
		s := fmt.Sprintf("%s %s @%d:%d", t.kind, strings.ReplaceAll(t.text, "\n", `\n`), t.pos.Line, t.pos.Col)
		if t.comment != nil {
			s += fmt.Sprintf(" [%s alone=%v]", t.comment.Text, t.comment.alone)
		}
		toks = append(toks, s)
		if t.kind == tEOF {
			return toks, diags
		}
	}
}

func TestLexer(t *testing.T) {
	src := "upstream a-b_2 {  # c1\n" +
		"\t1s 250ms 1m30s 1.5h 90 0.5 3x\n" +
		"# alone\n" +
		"\"a\\\"b\" `raw\nline` ( ) [ ] , : = . ; é9\n" +
		"@"
	toks, diags := lexAll(src)
	want := []string{
		"identifier upstream @1:1",
		"identifier a-b_2 @1:10",
		"`{` { @1:16",
		"end of line \\n @1:23 [# c1 alone=false]",
		"duration 1s @2:2",
		"duration 250ms @2:5",
		"duration 1m30s @2:11",
		"duration 1.5h @2:17",
		"number 90 @2:22",
		"number 0.5 @2:25",
		"duration 3x @2:29",
		"end of line \\n @2:31",
		"end of line \\n @3:8 [# alone alone=true]",
		"string \"a\\\"b\" @4:1",
		"string `raw\\nline` @4:8",
		"`(` ( @5:7",
		"`)` ) @5:9",
		"`[` [ @5:11",
		"`]` ] @5:13",
		"`,` , @5:15",
		"`:` : @5:17",
		"`=` = @5:19",
		"`.` . @5:21",
		"`;` ; @5:23",
		"identifier é9 @5:25",
		"end of line \\n @5:28",
		"illegal character @ @6:1",
		"end of file  @6:2",
	}
	if got := strings.Join(toks, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("tokens:\n%s\n--- want\n%s", got, strings.Join(want, "\n"))
	}
	if got := strings.Join(diags, "\n"); got != `6:1: unexpected character "@"` {
		t.Errorf("diagnostics: %s", got)
	}
}

func TestLexAddr(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"127.0.0.1:9001 {", "127.0.0.1:9001"},
		{"  [::1]:80\n", "[::1]:80"},
		{"localhost:8080;", "localhost:8080"},
		{":8080#c", ":8080"},
		{"{", ""},
		{"\"x\"", ""},
	} {
		lx := newLexer("t", c.src, nil)
		tok := lx.nextAddr()
		got := ""
		if tok.kind == tAddr {
			got = tok.text
		}
		if got != c.want {
			t.Errorf("nextAddr(%q) = %s %q, want %q", c.src, tok.kind, tok.text, c.want)
		}
	}
}

func TestScanExpr(t *testing.T) {
	for _, c := range []struct {
		mode      exprMode
		src, want string
		rest      string // what the lexer reads next
		diag      string
	}{
		{exprLine, `  a + b  `, "a + b", "", ""},
		{exprLine, "a + b\nnext", "a + b", "\\n", ""},
		{exprLine, "a; b", "a", ";", ""},
		{exprLine, "a # c", "a", "", ""},
		{exprLine, "a }", "a", "}", ""},
		{exprLine, `"x}#;" + y }`, `"x}#;" + y`, "}", ""},
		{exprLine, `{"a": 1}["a"]`, `{"a": 1}["a"]`, "", ""},
		{exprLine, "f(a,\n  b) + 1\nnext", "f(a,\n  b) + 1", "\\n", ""},
		{exprLine, `'a"b' + r'\' + b"\x00"`, `'a"b' + r'\' + b"\x00"`, "", ""},
		{exprLine, `"""a"b""c""" + '''x'''`, `"""a"b""c""" + '''x'''`, "", ""},
		{exprLine, "\"\"\"multi\nline\"\"\" + x", "\"\"\"multi\nline\"\"\" + x", "", ""},
		{exprLine, `x) + y`, `x) + y`, "", ""},
		{exprLine, "", "", "", ""},
		{exprLine, "f(a\nnext\n", "f(a", "\\n", "1:2: unclosed `(` in expression"},
		{exprLine, "f(a # c\n", "f(a", "\\n", "1:2: unclosed `(` in expression"},
		{exprLine, "f(a]\n", "f(a]", "\\n", "1:2: unclosed `(` in expression"},
		{exprLine, `"abc` + "\nx", `"abc`, "\\n", "1:1: string not terminated"},
		{exprWhen, `a == "{" {`, `a == "{"`, "{", ""},
		{exprWhen, `(a || {"k": 1}["k"]) {`, `(a || {"k": 1}["k"])`, "{", ""},
		{exprWhen, "a\n{", "a", "\\n", ""},
		{exprWhen, "f(a {\n  x\n}", "f(a", "{", "1:2: unclosed `(` in expression"},
		{exprParen, `request.headers[")"])`, `request.headers[")"]`, ")", ""},
		{exprParen, "\n  f(x)\n)", "f(x)", ")", ""},
		{exprParen, "f(x)\n", "f(x)", "\\n", "1:1: missing `)` to match this `(`"},
	} {
		var diags []string
		lx := newLexer("t", c.src, func(pos Pos, hint, msg string) {
			diags = append(diags, fmt.Sprintf("%d:%d: %s", pos.Line, pos.Col, msg))
		})
		open := Pos{File: "t", Line: 1, Col: 1}
		e, ok := lx.scanExpr(c.mode, open)
		got := ""
		if e != nil {
			got = e.Text
			if e.End.Offset-e.Pos.Offset != len(e.Text) {
				t.Errorf("scanExpr(%q): span %d..%d for %q", c.src, e.Pos.Offset, e.End.Offset, e.Text)
			}
		}
		next := lx.next()
		rest := strings.ReplaceAll(next.text, "\n", `\n`)
		d := strings.Join(diags, "; ")
		if got != c.want || rest != c.rest || d != c.diag || ok != (c.diag == "") {
			t.Errorf("scanExpr(%d, %q) = %q, ok %v, then %q, diags %q; want %q, then %q, diags %q",
				c.mode, c.src, got, ok, rest, d, c.want, c.rest, c.diag)
		}
	}
}

func TestStringEscapes(t *testing.T) {
	for _, c := range []struct{ src, want, diag string }{
		{`"plain"`, "plain", ""},
		{`"a\tb\n\\\"\x41\u00e9\U0001F600\101"`, "a\tb\n\\\"Aé😀A", ""},
		{"`raw\\n\nx`", "raw\\n\nx", ""},
		{`"bad\qx"`, `bad\qx`, `1:5: invalid escape sequence` + " `\\q` in string"},
		{`"\xZZ"`, `\xZZ`, `1:2: invalid escape sequence` + " `\\x` in string"},
	} {
		var diags []string
		lx := newLexer("t", c.src, func(pos Pos, hint, msg string) {
			diags = append(diags, fmt.Sprintf("%d:%d: %s", pos.Line, pos.Col, msg))
		})
		tok := lx.next()
		got := lx.unquote(tok)
		if got != c.want || strings.Join(diags, "; ") != c.diag {
			t.Errorf("unquote(%s) = %q, %q; want %q, %q", c.src, got, diags, c.want, c.diag)
		}
	}
}

func TestDiagnosticRender(t *testing.T) {
	d := &Diagnostic{Pos: Pos{File: "f.sluice", Line: 3, Col: 7}, Msg: "boom", Hint: "try this", Line: "\t\tdé x"}
	want := "f.sluice:3:7: boom\n    \t\tdé x\n    \t\t   ^\n    hint: try this"
	// "é" is two bytes: column 7 is "x", after two tabs, "d", "é" (one
	// character on screen) and a space.
	if got := d.Error(); got != want {
		t.Errorf("render:\n%q\nwant\n%q", got, want)
	}
	if got := d.Short(); got != "f.sluice:3:7: boom" {
		t.Errorf("Short = %q", got)
	}
	var ds Diagnostics
	if ds.Err() != nil {
		t.Error("empty Diagnostics.Err() != nil")
	}
	ds = Diagnostics{d, {Pos: Pos{Line: 1, Col: 1}, Msg: "no file"}}
	if got := ds.Error(); got != want+"\n1:1: no file" {
		t.Errorf("Diagnostics.Error() = %q", got)
	}
}

func TestSuggest(t *testing.T) {
	words := []string{"endpoint", "lb", "connect_timeout", "protocol", "health_check", "tls"}
	for in, want := range map[string]string{
		"endpont": "endpoint", "endpoints": "endpoint", "connect_timout": "connect_timeout",
		"tsl": "", "lbb": "lb", "x": "", "protocl": "protocol", "weight": "",
	} {
		if got := suggest.Closest(in, words); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}
