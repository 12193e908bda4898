package expr

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Error is a compile error at a position within the expression source.
type Error struct {
	Line    int    // 1-based line within src
	Column  int    // 1-based column within the line, counted in bytes
	Offset  int    // 0-based byte offset within src
	Message string // without the position

	// For a result type mismatch (Message "must be bool, got string"),
	// Want and Got let the caller phrase it for its slot
	// ("a `when` must be bool, got string"); Got is "" otherwise.
	Want Type
	Got  string
}

func (e *Error) Error() string { return fmt.Sprintf("%d:%d: %s", e.Line, e.Column, e.Message) }

// ErrorList holds every compile error of one expression, in source order.
// errors.As(err, &*Error) finds the first one.
type ErrorList []*Error

func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap exposes the individual errors to errors.Is and errors.As.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// ErrCostLimit is wrapped by the error of an evaluation that exceeded the
// cost limit.
var ErrCostLimit = errors.New("expr: cost limit exceeded")

// newError builds an Error from a CEL location: line 1-based, col 0-based
// in code points (which is how cel-go counts).
func newError(src string, line, col int, msg string) *Error {
	return errorAtByte(src, lineColOffset(src, line, col), msg)
}

// lineColOffset converts a 1-based line and 0-based column in code points to
// a byte offset, clamped to src.
func lineColOffset(src string, line, col int) int {
	if line < 1 {
		return 0
	}
	off := 0
	for l := 1; l < line; l++ {
		i := strings.IndexByte(src[off:], '\n')
		if i < 0 {
			return len(src)
		}
		off += i + 1
	}
	for ; col > 0 && off < len(src) && src[off] != '\n'; col-- {
		_, sz := utf8.DecodeRuneInString(src[off:])
		off += sz
	}
	return off
}

// runeOffset converts a 0-based offset in code points to bytes.
func runeOffset(src string, n int) int {
	off := 0
	for ; n > 0 && off < len(src); n-- {
		_, sz := utf8.DecodeRuneInString(src[off:])
		off += sz
	}
	return off
}

func errorAtByte(src string, off int, msg string) *Error {
	if off > len(src) {
		off = len(src)
	}
	ls := strings.LastIndexByte(src[:off], '\n') + 1
	return &Error{Line: strings.Count(src[:off], "\n") + 1, Column: off - ls + 1, Offset: off, Message: msg}
}
