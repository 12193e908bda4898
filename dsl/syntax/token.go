package syntax

import "fmt"

// tokKind is the kind of a lexical token.
type tokKind int

const (
	tEOF      tokKind = iota
	tNewline          // '\n': ends a statement
	tSemi             // ';': ends a statement
	tIdent            // names and (contextual) keywords: [A-Za-z_][A-Za-z0-9_-]*
	tNumber           // 90, 0.5
	tDuration         // 1s, 250ms, 1m30s
	tString           // "..." or `...`
	tAddr             // 127.0.0.1:9001, [::1]:80 (only where the grammar expects an address)
	tLbrace           // {
	tRbrace           // }
	tLparen           // (
	tRparen           // )
	tLbrack           // [
	tRbrack           // ]
	tComma            // ,
	tColon            // :
	tAssign           // =
	tDot              // .
	tIllegal          // a character that starts no token
)

var tokNames = [...]string{
	tEOF: "end of file", tNewline: "end of line", tSemi: "`;`", tIdent: "identifier",
	tNumber: "number", tDuration: "duration", tString: "string", tAddr: "address",
	tLbrace: "`{`", tRbrace: "`}`", tLparen: "`(`", tRparen: "`)`", tLbrack: "`[`",
	tRbrack: "`]`", tComma: "`,`", tColon: "`:`", tAssign: "`=`", tDot: "`.`",
	tIllegal: "illegal character",
}

func (k tokKind) String() string {
	if int(k) < len(tokNames) {
		return tokNames[k]
	}
	return fmt.Sprintf("token(%d)", int(k))
}

// token is one lexical token. Text is the exact source text.
type token struct {
	kind tokKind
	pos  Pos
	end  Pos // position just after the token
	text string
	open bool // an unterminated string
	bad  bool // an invalid duration

	// comment is the "# ..." comment that ends the line, carried by the
	// tNewline or tEOF token that follows it.
	comment *Comment
}

// describe names a token for "found ..." in diagnostics.
func (t token) describe() string {
	switch t.kind {
	case tEOF, tNewline, tSemi, tLbrace, tRbrace, tLparen, tRparen, tLbrack, tRbrack,
		tComma, tColon, tAssign, tDot:
		return t.kind.String()
	case tIdent:
		return "`" + t.text + "`"
	case tString:
		return "string " + clip(t.text, 40)
	case tDuration:
		if t.bad {
			return "`" + clip(t.text, 40) + "`"
		}
		return "duration `" + t.text + "`"
	case tIllegal:
		return fmt.Sprintf("unexpected character %q", t.text)
	default:
		return t.kind.String() + " `" + clip(t.text, 40) + "`"
	}
}

func clip(s string, n int) string {
	for i := range s {
		if s[i] == '\n' {
			return s[:i] + "..."
		}
	}
	if len(s) > n {
		// Do not cut a UTF-8 sequence in half.
		for n > 0 && s[n]&0xC0 == 0x80 {
			n--
		}
		return s[:n] + "..."
	}
	return s
}
