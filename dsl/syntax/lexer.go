package syntax

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// lexer turns source text into tokens on demand. It is modal: the parser
// asks for an address (nextAddr) or a raw CEL expression span (scanExpr)
// where the grammar expects one, and for an ordinary token (next) elsewhere.
//
// Comments ("# ..." to the end of the line) are not tokens: a comment is
// carried by the newline (or end-of-file) token that ends its line.
type lexer struct {
	src string
	pos Pos // position of the next unread byte

	lastLine int      // line on which the last non-newline token ended
	comment  *Comment // comment read since the last newline token
	comments []*Comment

	quiet  int // > 0: drop diagnostics (while skipping a bad statement)
	report func(pos Pos, hint, msg string)
}

func newLexer(file, src string, report func(pos Pos, hint, msg string)) *lexer {
	lx := &lexer{src: src, pos: Pos{File: file, Line: 1, Col: 1}, report: report}
	if strings.HasPrefix(src, "\uFEFF") { // a byte order mark
		lx.adv(3)
	}
	return lx
}

func (lx *lexer) errorf(pos Pos, hint, format string, args ...any) {
	if lx.quiet > 0 || lx.report == nil {
		return
	}
	lx.report(pos, hint, fmt.Sprintf(format, args...))
}

func (lx *lexer) eof() bool { return lx.pos.Offset >= len(lx.src) }

// peek returns the byte i bytes ahead, or 0 past the end.
func (lx *lexer) peek(i int) byte {
	if j := lx.pos.Offset + i; j < len(lx.src) {
		return lx.src[j]
	}
	return 0
}

// adv consumes n bytes.
func (lx *lexer) adv(n int) {
	end := min(lx.pos.Offset+n, len(lx.src))
	lx.pos = lx.pos.advance(lx.src[lx.pos.Offset:end])
}

// lexState is a saved lexer state, for looking ahead.
type lexState struct {
	pos       Pos
	lastLine  int
	comment   *Comment
	ncomments int
}

func (lx *lexer) save() lexState {
	return lexState{lx.pos, lx.lastLine, lx.comment, len(lx.comments)}
}

func (lx *lexer) restore(s lexState) {
	lx.pos, lx.lastLine, lx.comment, lx.comments = s.pos, s.lastLine, s.comment, lx.comments[:s.ncomments]
}

// seek moves to p, which must be a position the lexer produced.
func (lx *lexer) seek(p Pos) { lx.pos = p }

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v' }

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isIdentStart(r rune) bool { return r == '_' || unicode.IsLetter(r) }

func isIdentPart(r rune) bool {
	return r == '_' || r == '-' || unicode.IsLetter(r) || unicode.IsDigit(r)
}

// skipSpace skips blanks and comments, not newlines.
func (lx *lexer) skipSpace() {
	for !lx.eof() {
		c := lx.peek(0)
		switch {
		case isSpace(c):
			lx.adv(1)
		case c == '#':
			lx.readComment()
		default:
			return
		}
	}
}

func (lx *lexer) readComment() {
	start := lx.pos
	n := strings.IndexByte(lx.src[start.Offset:], '\n')
	if n < 0 {
		n = len(lx.src) - start.Offset
	}
	text := strings.TrimRight(lx.src[start.Offset:start.Offset+n], " \t\r\f\v")
	lx.adv(n)
	c := &Comment{Pos: start, Text: text, alone: start.Line != lx.lastLine}
	lx.comments = append(lx.comments, c)
	if lx.comment == nil { // only one comment fits on a line
		lx.comment = c
	}
}

func (lx *lexer) tok(kind tokKind, start Pos) token {
	t := token{kind: kind, pos: start, end: lx.pos, text: lx.src[start.Offset:lx.pos.Offset]}
	if kind == tNewline || kind == tEOF {
		t.comment, lx.comment = lx.comment, nil
	} else {
		lx.lastLine = lx.pos.Line
	}
	return t
}

// punct maps the one-byte tokens to their kind (0 for the others).
var punct = [256]tokKind{
	'\n': tNewline, ';': tSemi, '{': tLbrace, '}': tRbrace, '(': tLparen, ')': tRparen,
	'[': tLbrack, ']': tRbrack, ',': tComma, ':': tColon, '=': tAssign, '.': tDot,
}

// next returns the next ordinary token.
func (lx *lexer) next() token {
	lx.skipSpace()
	start := lx.pos
	if lx.eof() {
		return lx.tok(tEOF, start)
	}
	c := lx.peek(0)
	if k := punct[c]; k != 0 {
		lx.adv(1)
		return lx.tok(k, start)
	}
	switch {
	case c == '"':
		return lx.lexString()
	case c == '`':
		return lx.lexRawString()
	case isDigit(c):
		return lx.lexNumber()
	}
	r, size := utf8.DecodeRuneInString(lx.src[start.Offset:])
	if isIdentStart(r) {
		for !lx.eof() {
			r, size := utf8.DecodeRuneInString(lx.src[lx.pos.Offset:])
			if !isIdentPart(r) {
				break
			}
			lx.adv(size)
		}
		return lx.tok(tIdent, start)
	}
	lx.adv(size)
	t := lx.tok(tIllegal, start)
	lx.errorf(start, "", "unexpected character %q", t.text)
	return t
}

// lexNumber reads a number (90, 0.5) or a duration (1s, 250ms, 1m30s, 1.5h).
func (lx *lexer) lexNumber() token {
	start := lx.pos
	digits := func() {
		for isDigit(lx.peek(0)) {
			lx.adv(1)
		}
		if lx.peek(0) == '.' && isDigit(lx.peek(1)) {
			lx.adv(1)
			for isDigit(lx.peek(0)) {
				lx.adv(1)
			}
		}
	}
	unit := func() bool {
		n := 0
		for !lx.eof() {
			r, size := utf8.DecodeRuneInString(lx.src[lx.pos.Offset:])
			if !unicode.IsLetter(r) {
				break
			}
			lx.adv(size)
			n++
		}
		return n > 0
	}
	digits()
	if !unit() {
		return lx.tok(tNumber, start)
	}
	for isDigit(lx.peek(0)) {
		digits()
		unit()
	}
	// Letters, digits or '_' glued to a duration make it a bad duration, not two tokens.
	for !lx.eof() {
		r, size := utf8.DecodeRuneInString(lx.src[lx.pos.Offset:])
		if !isIdentPart(r) || r == '-' {
			break
		}
		lx.adv(size)
	}
	t := lx.tok(tDuration, start)
	if _, err := time.ParseDuration(t.text); err != nil {
		t.bad = true // reported by the parser, which knows what was expected
	}
	return t
}

// lexString reads a "..." string. Its value is decoded by unquote.
func (lx *lexer) lexString() token {
	start := lx.pos
	lx.adv(1)
	for {
		if lx.eof() || lx.peek(0) == '\n' {
			t := lx.tok(tString, start)
			t.open = true
			lx.errorf(start, "a \"...\" string ends on the line it starts; use a `raw string` for several lines",
				"string not terminated")
			return t
		}
		switch lx.peek(0) {
		case '\\':
			if lx.peek(1) == '\n' {
				lx.adv(1)
				continue
			}
			_, size := utf8.DecodeRuneInString(lx.src[lx.pos.Offset+1:])
			lx.adv(1 + size)
		case '"':
			lx.adv(1)
			return lx.tok(tString, start)
		default:
			_, size := utf8.DecodeRuneInString(lx.src[lx.pos.Offset:])
			lx.adv(size)
		}
	}
}

// lexRawString reads a `...` string, which may span lines.
func (lx *lexer) lexRawString() token {
	start := lx.pos
	n := strings.IndexByte(lx.src[start.Offset+1:], '`')
	if n < 0 {
		lx.adv(len(lx.src) - start.Offset)
		t := lx.tok(tString, start)
		t.open = true
		lx.errorf(start, "", "raw string not terminated")
		return t
	}
	lx.adv(n + 2)
	return lx.tok(tString, start)
}

// unquote decodes the text of a string token, reporting bad escapes at
// their own position. A raw `...` string is returned as written.
func (lx *lexer) unquote(t token) string {
	s := t.text[1:]
	if !t.open {
		s = s[:len(s)-1]
	}
	if t.text[0] == '`' {
		return s
	}
	if !strings.ContainsRune(s, '\\') {
		return s
	}
	var b strings.Builder
	pos := t.pos.advance(t.text[:1])
	for len(s) > 0 {
		if s[0] != '\\' {
			_, size := utf8.DecodeRuneInString(s)
			b.WriteString(s[:size])
			pos = pos.advance(s[:size])
			s = s[size:]
			continue
		}
		c, multibyte, tail, err := strconv.UnquoteChar(s, '"')
		if err != nil {
			n := 2
			if len(s) < 2 {
				n = len(s)
			}
			lx.errorf(pos, `valid escapes: \n \r \t \\ \" \a \b \f \v \xHH \uHHHH \UHHHHHHHH \OOO`,
				"invalid escape sequence `%s` in string", clip(s[:n], 4))
			b.WriteString(s[:n])
			pos = pos.advance(s[:n])
			s = s[n:]
			continue
		}
		if c < utf8.RuneSelf || !multibyte {
			b.WriteByte(byte(c))
		} else {
			b.WriteRune(c)
		}
		pos = pos.advance(s[:len(s)-len(tail)])
		s = tail
	}
	return b.String()
}

// nextAddr returns the next token where the grammar expects an address: a
// run of characters up to a blank, a newline or one of { } ; # " ` ( ) , =
// (an IPv6 host is written in brackets: [::1]:80). Anything else is lexed
// as an ordinary token, for the parser to report.
func (lx *lexer) nextAddr() token {
	lx.skipSpace()
	start := lx.pos
	stop := func(c byte) bool {
		return isSpace(c) || strings.IndexByte("\n{};#\"`(),=", c) >= 0
	}
	for !lx.eof() && !stop(lx.peek(0)) {
		lx.adv(1)
	}
	if lx.pos.Offset == start.Offset {
		return lx.next()
	}
	return lx.tok(tAddr, start)
}

// exprMode says where an expression ends.
type exprMode int

const (
	// exprLine: at the end of the statement: a newline, `;` or `#` outside
	// brackets and strings, an unmatched `}`, or the end of the file.
	exprLine exprMode = iota
	// exprWhen: like exprLine, and also at a `{` outside brackets and strings
	// (the block's opening brace).
	exprWhen
	// exprParen: at the `)` that closes an already open `(`.
	exprParen
)

// scanExpr reads a CEL expression as raw source text, aware of CEL's
// strings and of brackets: a newline inside (), [] or {} does not end it.
// open is the position of the `(` already read in exprParen mode. The
// returned expression is nil when there is no text. ok is false when the
// expression is malformed (an error has been reported).
func (lx *lexer) scanExpr(mode exprMode, open Pos) (e *Expr, ok bool) {
	type opener struct {
		c   byte
		pos Pos
	}
	var stack []opener
	if mode == exprParen {
		stack = append(stack, opener{'(', open})
	}
	for !lx.eof() && (isSpace(lx.peek(0)) || lx.peek(0) == '\n' && len(stack) > 0) {
		lx.adv(1)
	}
	start := lx.pos
	end := start // just after the last non-blank byte
	ok = true
	// unclosed reports the outermost open bracket and resumes at the end of
	// its line, or at limit if that comes first.
	unclosed := func(limit int) {
		o := stack[0]
		if mode == exprParen && len(stack) == 1 {
			lx.errorf(o.pos, "", "missing `)` to match this `(`")
		} else {
			lx.errorf(o.pos, "an expression ends at the end of its line unless a bracket is open",
				"unclosed `%c` in expression", o.c)
		}
		ok = false
		// Resume at the end of the outermost opener's line, so that the
		// statements after it are parsed as statements; for a condition,
		// before the `{` that ends that line, so its block is parsed.
		resume := min(limit, lx.lineEnd(max(o.pos.Offset, start.Offset)))
		if mode == exprWhen {
			i := resume
			for i > start.Offset && isSpace(lx.src[i-1]) {
				i--
			}
			if i > start.Offset && lx.src[i-1] == '{' {
				resume = i - 1
			}
		}
		lx.seek(start)
		lx.adv(resume - start.Offset)
		end = start
		for i := resume; i > start.Offset; i-- {
			if !isSpace(lx.src[i-1]) {
				end = start.advance(lx.src[start.Offset:i])
				break
			}
		}
	}
scan:
	for !lx.eof() {
		c := lx.peek(0)
		switch {
		case c == '\n':
			if len(stack) == 0 {
				break scan
			}
			lx.adv(1)
			continue
		case isSpace(c):
			lx.adv(1)
			continue
		case c == '#' || c == ';':
			if len(stack) > 0 {
				unclosed(lx.pos.Offset)
				return lx.finishExpr(start, end), false
			}
			break scan
		case c == '"' || c == '\'':
			if !lx.scanCELString() {
				ok = false
				end = lx.pos
				break scan
			}
		case c == '(' || c == '[' || c == '{':
			if c == '{' && mode == exprWhen && len(stack) == 0 {
				break scan
			}
			stack = append(stack, opener{c, lx.pos})
			lx.adv(1)
		case c == ')' || c == ']' || c == '}':
			if len(stack) == 0 {
				if c == '}' {
					break scan
				}
				lx.adv(1) // a stray closer: part of the expression; CEL reports it
			} else {
				if top := stack[len(stack)-1].c; top == '(' && c != ')' || top == '[' && c != ']' || top == '{' && c != '}' {
					unclosed(len(lx.src))
					return lx.finishExpr(start, end), false
				}
				stack = stack[:len(stack)-1]
				if mode == exprParen && len(stack) == 0 {
					break scan // the caller reads the `)`
				}
				lx.adv(1)
			}
		default:
			_, size := utf8.DecodeRuneInString(lx.src[lx.pos.Offset:])
			lx.adv(size)
		}
		end = lx.pos
	}
	if len(stack) > 0 && ok {
		unclosed(len(lx.src))
	}
	return lx.finishExpr(start, end), ok
}

// lineEnd returns the offset of the newline ending the line that holds off,
// or the length of the source.
func (lx *lexer) lineEnd(off int) int {
	if n := strings.IndexByte(lx.src[off:], '\n'); n >= 0 {
		return off + n
	}
	return len(lx.src)
}

func (lx *lexer) finishExpr(start, end Pos) *Expr {
	if end.Offset <= start.Offset {
		return nil
	}
	lx.lastLine = end.Line
	return &Expr{Pos: start, End: end, Text: lx.src[start.Offset:end.Offset]}
}

// scanCELString skips a CEL string literal: quoted with ' or ", or
// triple-quoted with either, with an optional r/R (raw) and b/B prefix.
// It reports false for an unterminated literal, leaving the lexer at the
// end of the line (or file, for triple quotes).
func (lx *lexer) scanCELString() bool {
	start := lx.pos
	q := lx.peek(0)
	// An r/R (raw) or b/B prefix is the one or two letters just before the
	// quote, when they are not the tail of a longer identifier.
	raw := false
	i := start.Offset
	for i > 0 && start.Offset-i < 2 && strings.IndexByte("rRbB", lx.src[i-1]) >= 0 {
		i--
	}
	if i < start.Offset {
		r, _ := utf8.DecodeLastRuneInString(lx.src[:i])
		if i == 0 || !isIdentPart(r) || r == '-' {
			raw = strings.ContainsAny(lx.src[i:start.Offset], "rR")
		}
	}
	triple := lx.peek(1) == q && lx.peek(2) == q
	if triple {
		lx.adv(3)
	} else {
		lx.adv(1)
	}
	for !lx.eof() {
		c := lx.peek(0)
		switch {
		case c == '\\' && !raw:
			if lx.peek(1) == '\n' && !triple {
				lx.adv(1)
				continue
			}
			lx.adv(2)
		case c == '\n' && !triple:
			lx.errorf(start, "", "string not terminated")
			return false
		case c == q && (!triple || lx.peek(1) == q && lx.peek(2) == q):
			if triple {
				lx.adv(3)
			} else {
				lx.adv(1)
			}
			return true
		default:
			_, size := utf8.DecodeRuneInString(lx.src[lx.pos.Offset:])
			lx.adv(size)
		}
	}
	lx.errorf(start, "", "string not terminated")
	return false
}

// skipStmt skips the rest of a malformed statement: up to a newline or `;`
// outside brackets and strings, or an unmatched `}`. from, if valid, is
// the position of a token already read that must be skipped too (an
// opening bracket, whose block is then skipped to its end).
func (lx *lexer) skipStmt(from Pos) {
	lx.quiet++
	defer func() { lx.quiet-- }()
	if from.IsValid() {
		lx.seek(from)
	}
	lx.scanExpr(exprLine, Pos{})
}
