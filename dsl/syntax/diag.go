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
