package syntax

import "fmt"

// Pos is a position in a source file. Line and Col are 1-based; Col counts
// bytes (a tab or a multi-byte UTF-8 character before the position counts as
// its byte length). Offset is the 0-based byte offset from the start of the
// file. The zero Pos is "no position".
type Pos struct {
	File   string
	Line   int
	Col    int
	Offset int
}

// IsValid reports whether p is a real position.
func (p Pos) IsValid() bool { return p.Line > 0 }

// String returns "file:line:col", "line:col" without a file name, or "-"
// for the zero Pos.
func (p Pos) String() string {
	switch {
	case !p.IsValid():
		if p.File != "" {
			return p.File
		}
		return "-"
	case p.File == "":
		return fmt.Sprintf("%d:%d", p.Line, p.Col)
	default:
		return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
	}
}

// Before reports whether p comes before q in the same file.
func (p Pos) Before(q Pos) bool { return p.Offset < q.Offset }

// advance returns the position after the bytes s, which start at p.
func (p Pos) advance(s string) Pos {
	for i := 0; i < len(s); i++ {
		p.Offset++
		if s[i] == '\n' {
			p.Line++
			p.Col = 1
		} else {
			p.Col++
		}
	}
	return p
}
