package lua

import glua "github.com/yuin/gopher-lua"

// What a state keeps between streams is bounded too: per-stream globals
// are cleared, but tables the script's top level created (and upvalues of
// its functions) are shared by the streams a state serves, and a script
// may fill them. Every retainedCheckEvery releases the state's reachable
// Lua data is walked and measured; a state holding more than
// MaxRetainedBytes is dropped (its next stream gets a fresh one) and
// logged. The walk is bounded: it stops as soon as the limit is passed.

// MaxRetainedBytes bounds the Lua data one state keeps across streams.
const MaxRetainedBytes = 32 << 20

const retainedCheckEvery = 128

// Rough sizes of Lua values in memory (gopher-lua's Go structs).
const (
	sizeTable    = 96
	sizeSlot     = 32 // a table entry: key and value interfaces, map overhead
	sizeFunction = 64
	sizeValue    = 16
)

// retainedOver reports whether the Lua data reachable from the state's
// globals exceeds limit bytes (an estimate: strings by length, tables and
// functions by their entries).
//
// The sandbox's libraries (read-only) are not walked: only what the
// script itself made, usually a handful of functions, so the check costs
// little and allocates nothing (the seen-set is the state's, reused).
func (v *vm) retainedOver(limit int) bool {
	if v.seen == nil {
		v.seen = map[glua.LValue]struct{}{}
	}
	w := retainedWalk{seen: v.seen, skip: v.libs, limit: limit}
	v.base.ForEach(func(k, val glua.LValue) {
		if _, lib := v.libs[val]; !lib {
			w.size += sizeSlot
			w.value(val)
		}
	})
	clear(v.seen)
	return w.size > limit
}

// noteLibraries records the values of the base table before the script
// runs: the sandbox's libraries, skipped by the retained-memory walk.
func (v *vm) noteLibraries() {
	v.libs = map[glua.LValue]struct{}{}
	v.base.ForEach(func(_, val glua.LValue) {
		switch val.(type) {
		case *glua.LTable, *glua.LFunction:
			v.libs[val] = struct{}{}
		}
	})
}

type retainedWalk struct {
	seen  map[glua.LValue]struct{}
	skip  map[glua.LValue]struct{}
	size  int
	limit int
}

func (w *retainedWalk) value(lv glua.LValue) {
	if w.size > w.limit {
		return
	}
	switch x := lv.(type) {
	case glua.LString:
		w.size += len(x) + sizeValue
	case *glua.LTable:
		if _, ok := w.seen[x]; ok {
			return
		}
		if _, ok := w.skip[x]; ok {
			return
		}
		w.seen[x] = struct{}{}
		w.size += sizeTable
		x.ForEach(func(k, val glua.LValue) {
			w.size += sizeSlot
			w.value(k)
			w.value(val)
		})
		if x.Metatable != nil {
			w.value(x.Metatable)
		}
	case *glua.LFunction:
		if _, ok := w.seen[x]; ok {
			return
		}
		if _, ok := w.skip[x]; ok {
			return
		}
		w.seen[x] = struct{}{}
		w.size += sizeFunction
		for _, uv := range x.Upvalues {
			if uv != nil {
				w.size += sizeValue
				w.value(uv.Value())
			}
		}
	default:
		w.size += sizeValue
	}
}
