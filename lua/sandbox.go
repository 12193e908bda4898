package lua

import (
	"fmt"
	"strings"

	glua "github.com/yuin/gopher-lua"
)

// The sandbox. What it guarantees:
//   - no file, process or environment access: io, os (but os.time,
//     os.clock, os.date, os.difftime), debug, package, channel, dofile,
//     loadfile, require of anything but the built-in libraries, and
//     string.dump are absent; load/loadstring take Lua source only;
//   - collectgarbage cannot drive the Go collector; print logs at debug
//     level instead of writing to stdout;
//   - globals a stream sets live in a per-stream table that is emptied
//     when the stream ends, and the standard libraries are read-only, so
//     a request cannot see or break what an earlier request did to them;
//     getmetatable honours __metatable, so the baseline table behind the
//     per-stream globals cannot be reached, and setmetatable(_G, ...) fails;
//   - getfenv/setfenv are absent (they would reach the baseline table or
//     re-point a shared function's environment);
//   - every callback runs with a time budget, script coroutines included;
//   - call depth and value-stack size are bounded (vm.go); string.rep,
//     string.format widths and loadstring sizes are bounded.
//
//   - every callback has a memory budget (16 MiB allocated, budget.go),
//     checked every 5 ms while it runs.
//
// What it does not guarantee: gopher-lua has no allocator hook, so memory
// is measured from the process's allocation counter between slices, not
// per allocation: a single instruction (s = s .. s on a large s) allocates
// before anything can look, and allocations of other streams in the same
// 5 ms count against the callback. Tables created by the script's top
// level and upvalues of its functions are shared by the streams a state
// serves, as in Envoy (per worker there); mutating them is visible to
// later requests. Lua patterns (string.find/match/gsub) run in Go and are
// not interrupted by the budget until they return.

// maxStringBuild bounds strings built by string.rep and loadstring.
const maxStringBuild = 4 << 20

var sandboxLibs = []struct {
	name string
	open glua.LGFunction
}{
	{glua.BaseLibName, glua.OpenBase},
	{glua.TabLibName, glua.OpenTable},
	{glua.StringLibName, glua.OpenString},
	{glua.MathLibName, glua.OpenMath},
	{glua.CoroutineLibName, glua.OpenCoroutine},
	{glua.OsLibName, glua.OpenOs},
}

// frozenLibs are replaced by read-only views in the globals.
var frozenLibs = []string{"string", "table", "math", "coroutine", "os"}

func (v *vm) openSandbox() error {
	L := v.L
	for _, lib := range sandboxLibs {
		L.Push(L.NewFunction(lib.open))
		L.Push(glua.LString(lib.name))
		L.Call(1, 0)
	}
	g := L.G.Global
	v.base = g
	for _, name := range []string{"dofile", "loadfile", "_printregs", "getfenv", "setfenv", "module", "require", "newproxy"} {
		g.RawSetString(name, glua.LNil)
	}
	os, ok := g.RawGetString("os").(*glua.LTable)
	if !ok {
		return fmt.Errorf("os library missing")
	}
	keepOS := map[string]bool{"time": true, "clock": true, "date": true, "difftime": true}
	var drop []string
	os.ForEach(func(k, _ glua.LValue) {
		if !keepOS[k.String()] {
			drop = append(drop, k.String())
		}
	})
	for _, k := range drop {
		os.RawSetString(k, glua.LNil)
	}
	str, ok := g.RawGetString("string").(*glua.LTable)
	if !ok {
		return fmt.Errorf("string library missing")
	}
	str.RawSetString("dump", glua.LNil)
	str.RawSetString("rep", L.NewFunction(strRepBounded))
	str.RawSetString("gsub", L.NewFunction(strGsub)) // linear; see gsub.go
	origFormat := str.RawGetString("format").(*glua.LFunction).GFunction
	str.RawSetString("format", L.NewFunction(func(L *glua.LState) int {
		if err := checkFormat(L.CheckString(1)); err != nil {
			L.RaiseError("%s", err.Error())
		}
		return origFormat(L)
	}))

	origLoadString := g.RawGetString("loadstring").(*glua.LFunction).GFunction
	g.RawSetString("loadstring", L.NewFunction(func(L *glua.LState) int {
		src := L.CheckString(1)
		if strings.HasPrefix(src, "\x1b") {
			L.Push(glua.LNil)
			L.Push(glua.LString("loadstring: binary chunks are not allowed"))
			return 2
		}
		if len(src) > maxStringBuild {
			L.RaiseError("loadstring: chunk larger than %d bytes", maxStringBuild)
		}
		return v.withStreamEnv(L, origLoadString(L))
	}))
	origLoad := g.RawGetString("load").(*glua.LFunction).GFunction
	g.RawSetString("load", L.NewFunction(func(L *glua.LState) int {
		return v.withStreamEnv(L, origLoad(L))
	}))
	g.RawSetString("collectgarbage", L.NewFunction(func(L *glua.LState) int {
		L.Push(glua.LNumber(0)) // "count" and friends: nothing to report, nothing to do
		return 1
	}))
	g.RawSetString("print", L.NewFunction(v.luaPrint))
	g.RawSetString("getmetatable", L.NewFunction(getMetatableProtected))
	origPairs := g.RawGetString("pairs").(*glua.LFunction).GFunction
	g.RawSetString("pairs", L.NewFunction(func(L *glua.LState) int {
		if mm := L.GetMetaField(L.Get(1), "__pairs"); mm != glua.LNil {
			L.Push(mm)
			L.Push(L.Get(1))
			L.Call(1, 3)
			return 3
		}
		return origPairs(L)
	}))

	// Script coroutines share the handler's budget without a goroutine or a
	// child context per coroutine: create them context-free, then hand them
	// the budget.
	co := g.RawGetString("coroutine").(*glua.LTable)
	origCreate := co.RawGetString("create").(*glua.LFunction).GFunction
	create := L.NewFunction(func(L *glua.LState) int {
		ctx := L.RemoveContext()
		n := origCreate(L)
		if ctx != nil {
			L.SetContext(ctx)
			if th, ok := L.Get(-1).(*glua.LState); ok {
				th.SetContext(ctx)
			}
		}
		return n
	})
	co.RawSetString("create", create)

	// Lua helpers: the bodyChunks iterator and coroutine.wrap.
	hf := L.NewFunctionFromProto(helpers())
	L.Push(hf)
	L.Push(L.NewFunction(v.nextChunk))
	L.Push(create)
	L.Push(co.RawGetString("resume"))
	L.Push(g.RawGetString("error"))
	L.Call(4, 2)
	v.objs.bodyChunks = L.Get(-2)
	co.RawSetString("wrap", L.Get(-1))
	L.Pop(2)

	res := L.NewTable()
	res.RawSetString("MILLISECOND", glua.LString(resolutionMillisecond))
	res.RawSetString("MICROSECOND", glua.LString(resolutionMicrosecond))
	g.RawSetString("EnvoyTimestampResolution", v.readOnly(res))

	// require only hands out the built-in libraries.
	libs := map[string]glua.LValue{}
	for _, name := range frozenLibs {
		ro := v.readOnly(g.RawGetString(name).(*glua.LTable))
		g.RawSetString(name, ro)
		libs[name] = ro
	}
	g.RawSetString("require", L.NewFunction(func(L *glua.LState) int {
		name := L.CheckString(1)
		if lib, ok := libs[name]; ok {
			L.Push(lib)
			return 1
		}
		L.RaiseError("module '%s' not found: require of files is disabled in the sandbox", name)
		return 0
	}))
	// gopher-lua's string metatable is the string library itself (with
	// __index pointing to itself), which would hand out a writable library
	// through ("").__index; give strings a protected metatable instead.
	strMT := L.NewTable()
	strMT.RawSetString("__index", str)
	strMT.RawSetString("__metatable", glua.LString("protected"))
	L.SetMetatable(glua.LString(""), strMT)
	str.RawSetString("__index", glua.LNil)

	v.env = L.NewTable()
	envMT := L.NewTable()
	envMT.RawSetString("__index", g)
	envMT.RawSetString("__metatable", glua.LString("protected"))
	L.SetMetatable(v.env, envMT)
	g.RawSetString("_G", v.env)
	return nil
}

// withStreamEnv gives a function loaded at run time the per-stream
// globals; gopher-lua would give it the baseline table, where its writes
// would outlive the stream.
func (v *vm) withStreamEnv(L *glua.LState, n int) int {
	if n > 0 {
		if fn, ok := L.Get(-n).(*glua.LFunction); ok {
			fn.Env = v.env
		}
	}
	return n
}

// readOnly returns a view of t that cannot be written.
func (v *vm) readOnly(t *glua.LTable) *glua.LTable {
	L := v.L
	ro := L.NewTable()
	mt := L.NewTable()
	mt.RawSetString("__index", t)
	mt.RawSetString("__newindex", L.NewFunction(func(L *glua.LState) int {
		L.RaiseError("attempt to modify a read-only table")
		return 0
	}))
	mt.RawSetString("__metatable", glua.LString("protected"))
	mt.RawSetString("__pairs", L.NewFunction(func(L *glua.LState) int {
		L.Push(L.GetGlobal("next"))
		L.Push(t)
		L.Push(glua.LNil)
		return 3
	}))
	L.SetMetatable(ro, mt)
	return ro
}

func getMetatableProtected(L *glua.LState) int {
	mt := L.GetMetatable(L.CheckAny(1))
	if t, ok := mt.(*glua.LTable); ok {
		if p := t.RawGetString("__metatable"); p != glua.LNil {
			L.Push(p)
			return 1
		}
	}
	L.Push(mt)
	return 1
}

func strRepBounded(L *glua.LState) int {
	s := L.CheckString(1)
	n := L.CheckInt(2)
	if n <= 0 || len(s) == 0 {
		L.Push(glua.LString(""))
		return 1
	}
	if n > maxStringBuild/len(s) {
		L.RaiseError("string.rep: result larger than %d bytes", maxStringBuild)
	}
	L.Push(glua.LString(strings.Repeat(s, n)))
	return 1
}

// checkFormat enforces Lua's own limit of two digits for a format's width
// and precision; gopher-lua hands them to fmt.Sprintf unchecked.
func checkFormat(f string) error {
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		i++
		if i < len(f) && f[i] == '%' {
			continue
		}
		for i < len(f) && strings.IndexByte("-+ #0", f[i]) >= 0 {
			i++
		}
		digits := 0
		for i < len(f) && f[i] >= '0' && f[i] <= '9' {
			i++
			digits++
		}
		if i < len(f) && f[i] == '.' {
			i++
			prec := 0
			for i < len(f) && f[i] >= '0' && f[i] <= '9' {
				i++
				prec++
			}
			digits = max(digits, prec)
		}
		if digits > 2 {
			return fmt.Errorf("invalid format (width or precision too long)")
		}
	}
	return nil
}

func (v *vm) luaPrint(L *glua.LState) int {
	var b strings.Builder
	for i := 1; i <= L.GetTop(); i++ {
		if i > 1 {
			b.WriteByte('\t')
		}
		b.WriteString(L.ToStringMeta(L.Get(i)).String())
	}
	if v.f != nil {
		v.f.log(levelDebug, b.String())
	}
	return 0
}
