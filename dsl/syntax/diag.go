package syntax

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Diagnostic is an error at a position in a source file.
type Diagnostic struct {
	Pos  Pos
	Msg  string // what is wrong, e.g. "expected `{`, found end of line"
	Hint string // optional: what would be right, e.g. "expected one of: ..."
	Line string // the source line holding Pos (no line break); "" if unknown
}

// Short returns "file:line:col: message".
func (d *Diagnostic) Short() string { return d.Pos.String() + ": " + d.Msg }

// Error renders the diagnostic for a terminal:
//
//	file:line:col: message
//	    the source line
//	       ^
//	    hint: ...
//
// Tabs of the source line are kept in the caret line so the caret lines up.
func (d *Diagnostic) Error() string {
	var b strings.Builder
	b.WriteString(d.Short())
	if d.Line != "" {
		b.WriteString("\n    ")
		b.WriteString(d.Line)
		b.WriteString("\n    ")
		b.WriteString(caretPad(d.Line, d.Pos.Col))
		b.WriteByte('^')
	}
	if d.Hint != "" {
		b.WriteString("\n    hint: ")
		b.WriteString(d.Hint)
	}
	return b.String()
}

// caretPad returns the blanks that put a caret under byte column col of
// line: tabs stay tabs, every other character becomes one space.
func caretPad(line string, col int) string {
	n := min(max(col-1, 0), len(line))
	var b strings.Builder
	for _, r := range line[:n] {
		if r == '\t' {
			b.WriteByte('\t')
		} else {
			b.WriteByte(' ')
		}
	}
	if n < col-1 {
		b.WriteString(strings.Repeat(" ", col-1-n))
	}
	return b.String()
}

// Diagnostics is a list of diagnostics; it implements error.
type Diagnostics []*Diagnostic

// Error renders every diagnostic, one after the other.
func (ds Diagnostics) Error() string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.Error()
	}
	return strings.Join(parts, "\n")
}

// Err returns ds as an error, or nil when ds is empty.
func (ds Diagnostics) Err() error {
	if len(ds) == 0 {
		return nil
	}
	return ds
}

// Sort orders ds by file, then position.
func (ds Diagnostics) Sort() {
	slices.SortStableFunc(ds, func(a, b *Diagnostic) int {
		return cmp.Or(cmp.Compare(a.Pos.File, b.Pos.File), cmp.Compare(a.Pos.Offset, b.Pos.Offset))
	})
}

// Errorf makes a diagnostic at pos, a position in f, with the source line
// filled in. For the compiler's errors.
func (f *File) Errorf(pos Pos, hint, format string, args ...any) *Diagnostic {
	return &Diagnostic{Pos: pos, Msg: fmt.Sprintf(format, args...), Hint: hint, Line: lineAt(f.Src, pos)}
}

// lineAt returns the line of src that holds pos, without its line break.
func lineAt(src []byte, pos Pos) string {
	if !pos.IsValid() || pos.Offset > len(src) {
		return ""
	}
	start := pos.Offset
	for start > 0 && src[start-1] != '\n' {
		start--
	}
	end := pos.Offset
	for end < len(src) && src[end] != '\n' {
		end++
	}
	return strings.TrimRight(string(src[start:end]), "\r")
}

// suggest returns the candidate closest to word, if it is close enough to
// be a likely typo.
func suggest(word string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(word, c); d < bestD {
			best, bestD = c, d
		}
	}
	if bestD > max(1, len(word)/3) {
		return ""
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
