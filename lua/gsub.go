package lua

import (
	"strings"

	glua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/pm"
)

// strGsub is string.gsub in linear time. gopher-lua's copies the whole
// string once per replacement, which is quadratic: 32 K replacements in a
// 32 KiB body chunk took 1.7 s, in one Go call the time budget cannot
// interrupt, so a body-rewriting script failed (or stalled its worker) on
// ordinary bodies. Semantics are Lua 5.1's: in a replacement string %0-%9
// stand for the match and its captures and %x for x; a table or function
// replacement that gives false or nil keeps the match.
func strGsub(L *glua.LState) int {
	src := L.CheckString(1)
	pat := L.CheckString(2)
	repl := L.Get(3)
	switch repl.(type) {
	case glua.LString, glua.LNumber, *glua.LTable, *glua.LFunction:
	default:
		L.ArgError(3, "string/function/table expected, got "+repl.Type().String())
	}
	limit := L.OptInt(4, -1)
	matches, err := pm.Find(pat, []byte(src), 0, limit)
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	if len(matches) == 0 {
		L.Push(glua.LString(src))
		L.Push(glua.LNumber(0))
		return 2
	}
	var b strings.Builder
	b.Grow(len(src))
	last := 0
	for _, m := range matches {
		start, end := m.Capture(0), m.Capture(1)
		b.WriteString(src[last:start])
		last = end
		switch r := repl.(type) {
		case glua.LString:
			gsubString(L, &b, string(r), src, m)
		case glua.LNumber:
			gsubString(L, &b, r.String(), src, m)
		case *glua.LTable:
			gsubValue(L, &b, L.GetTable(r, gsubCapture(L, src, m, 1)), src[start:end])
		case *glua.LFunction:
			L.Push(r)
			n := m.CaptureLength()/2 - 1
			if n == 0 {
				L.Push(glua.LString(src[start:end]))
				n = 1
			} else {
				for i := 1; i <= n; i++ {
					L.Push(gsubCapture(L, src, m, i))
				}
			}
			L.Call(n, 1)
			v := L.Get(-1)
			L.Pop(1)
			gsubValue(L, &b, v, src[start:end])
		}
	}
	b.WriteString(src[last:])
	L.Push(glua.LString(b.String()))
	L.Push(glua.LNumber(len(matches)))
	return 2
}

// gsubCapture is capture i (1-based) of m, or the whole match when the
// pattern has no captures and i is 1.
func gsubCapture(L *glua.LState, src string, m *pm.MatchData, i int) glua.LValue {
	n := m.CaptureLength()/2 - 1
	if i == 0 || (n == 0 && i == 1) {
		return glua.LString(src[m.Capture(0):m.Capture(1)])
	}
	if i > n {
		L.RaiseError("invalid capture index")
	}
	if m.IsPosCapture(2 * i) {
		return glua.LNumber(m.Capture(2 * i)) // pm stores positions 1-based
	}
	return glua.LString(src[m.Capture(2*i):m.Capture(2*i+1)])
}

func gsubString(L *glua.LState, b *strings.Builder, repl, src string, m *pm.MatchData) {
	for i := 0; i < len(repl); i++ {
		c := repl[i]
		if c != '%' || i+1 == len(repl) {
			b.WriteByte(c)
			continue
		}
		i++
		d := repl[i]
		if d < '0' || d > '9' {
			b.WriteByte(d)
			continue
		}
		b.WriteString(glua.LVAsString(gsubCapture(L, src, m, int(d-'0'))))
	}
}

func gsubValue(L *glua.LState, b *strings.Builder, v glua.LValue, match string) {
	switch x := v.(type) {
	case glua.LString:
		b.WriteString(string(x))
	case glua.LNumber:
		b.WriteString(x.String())
	case *glua.LNilType:
		b.WriteString(match)
	case glua.LBool:
		if x {
			L.RaiseError("invalid replacement value (a boolean)")
		}
		b.WriteString(match)
	default:
		L.RaiseError("invalid replacement value (a %s)", v.Type().String())
	}
}
