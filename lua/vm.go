package lua

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	glua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
)

// Bounds of one Lua state. gopher-lua has no allocator hook: these bound
// the call depth and the value stack; tables and strings a script builds
// are bounded only by the time budget (see the package README notes in
// sandbox.go).
const (
	callStackSize    = 200     // nested Lua calls, like Lua's C-call limit
	registrySize     = 256     // value stack slots to start with
	registryMaxSize  = 1 << 18 // value stack slots at most (4 MiB)
	registryGrowStep = 256
	// loadBudget bounds running a script's top level when a state is made.
	loadBudget = time.Second
	// maxClearedGlobals: gopher-lua keeps a deleted key in a table's key
	// list, so a state whose scripts keep inventing new global names is
	// dropped rather than grown forever.
	maxClearedGlobals = 4096
)

// script is one compiled script with its pool of loaded states.
type script struct {
	name        string
	proto       *glua.FunctionProto
	budget      time.Duration
	hasRequest  bool
	hasResponse bool
	mu          sync.Mutex
	free        []*vm     // states kept whatever the GC does; the last put is the warmest
	spare       sync.Pool // more, for bursts: as many as streams need at once, until GC trims them
}

func (c Compiler) compileScript(name, src string) (*script, error) {
	chunk, err := parse.Parse(strings.NewReader(src), name)
	if err != nil {
		var pe *parse.Error
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("lua: script %q line %d: %s near %q: %w", name, pe.Pos.Line, pe.Message, pe.Token, errSyntax)
		}
		return nil, fmt.Errorf("lua: script %q: %w", name, err)
	}
	rewriteGenericFor(chunk)
	proto, err := glua.Compile(chunk, name)
	if err != nil {
		var ce *glua.CompileError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("lua: script %q line %d: %s: %w", name, ce.Line, ce.Message, errSyntax)
		}
		return nil, fmt.Errorf("lua: script %q: %w", name, err)
	}
	s := &script{name: name, proto: proto, budget: c.budget(), free: make([]*vm, 0, poolSize())}
	v, err := s.newVM()
	if err != nil {
		return nil, err
	}
	s.hasRequest, s.hasResponse = v.onRequest != nil, v.onResponse != nil
	if !s.hasRequest && !s.hasResponse {
		v.close()
		return nil, fmt.Errorf("lua: script %q defines neither envoy_on_request nor envoy_on_response", name)
	}
	s.put(v)
	return s, nil
}

var errSyntax = errors.New("syntax error")

func poolSize() int { return max(16, 4*runtime.GOMAXPROCS(0)) }

// get takes a loaded state from the pool, or loads a new one. Loading one
// costs far more than a request (a fresh state, the sandbox, the script's
// top level), so states outlive their stream: a stream holds one from its
// request to its response, and the pool must cover every stream in flight,
// not just a few per core (with 16 kept for 50 connections, a Lua header
// filter cost 3x the CPU of no filter in bench/run).
func (s *script) get() (*vm, error) {
	s.mu.Lock()
	if n := len(s.free); n > 0 {
		v := s.free[n-1]
		s.free[n-1] = nil
		s.free = s.free[:n-1]
		s.mu.Unlock()
		return v, nil
	}
	s.mu.Unlock()
	if v, ok := s.spare.Get().(*vm); ok {
		return v, nil
	}
	return s.newVM()
}

// put returns a state that finished cleanly.
func (s *script) put(v *vm) {
	s.mu.Lock()
	if len(s.free) < cap(s.free) {
		s.free = append(s.free, v)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.spare.Put(v)
}

// newVM makes a sandboxed state and runs the script's top level in it.
func (s *script) newVM() (*vm, error) {
	L := glua.NewState(glua.Options{
		SkipOpenLibs:        true,
		CallStackSize:       callStackSize,
		RegistrySize:        registrySize,
		RegistryMaxSize:     registryMaxSize,
		RegistryGrowStep:    registryGrowStep,
		MinimizeStackMemory: true,
	})
	v := &vm{L: L, s: s, budget: newBudget(s.budget)}
	if err := v.openSandbox(); err != nil {
		L.Close()
		return nil, fmt.Errorf("lua: script %q: sandbox: %w", s.name, err)
	}
	v.noteLibraries()
	fn := L.NewFunctionFromProto(s.proto)
	fn.Env = v.env
	L.SetContext(v.budget)
	v.budget.arm(loadBudget)
	L.Push(fn)
	err := L.PCall(0, 0, nil)
	ok := v.budget.disarm()
	L.RemoveContext()
	if err != nil || !ok {
		L.Close()
		if !ok {
			return nil, fmt.Errorf("lua: script %q: loading: %w", s.name, errBudget)
		}
		return nil, fmt.Errorf("lua: script %q: loading: %s", s.name, errorText(err))
	}
	// What the top level defined becomes the baseline every stream reads
	// through; streams write to the (emptied) env only.
	v.env.ForEach(func(k, val glua.LValue) { v.base.RawSet(k, val) })
	v.clearEnv()
	v.clearedKeys = 0
	v.onRequest, _ = v.base.RawGetString("envoy_on_request").(*glua.LFunction)
	v.onResponse, _ = v.base.RawGetString("envoy_on_response").(*glua.LFunction)
	v.buildObjects()
	return v, nil
}

// vm is one Lua state with the script loaded and the handle objects made;
// it serves one stream at a time.
type vm struct {
	L      *glua.LState
	s      *script
	base   *glua.LTable // libraries and what the script's top level defined
	env    *glua.LTable // the globals scripts see: per stream, reads fall back to base
	budget *budget

	onRequest, onResponse *glua.LFunction
	threads               [2]*glua.LState // idle handler threads, reused

	f           *filter // the stream being served
	clearedKeys int
	uses        int // streams served, for the periodic retained-memory check
	libs, seen  map[glua.LValue]struct{}

	objs objects
}

// thread returns a handler thread for direction i.
func (v *vm) thread(i int) *glua.LState {
	if th := v.threads[i]; th != nil {
		v.threads[i] = nil
		return th
	}
	th, _ := v.L.NewThread() // the main state has no context: no cancel func
	th.SetContext(v.budget)
	return th
}

// idle takes back a thread whose function returned normally.
func (v *vm) idle(i int, th *glua.LState) {
	th.Dead = false
	v.threads[i] = th
}

// envEmpty reports whether the stream has set no globals so far.
func (v *vm) envEmpty() bool {
	k, _ := v.env.Next(glua.LNil)
	return k == glua.LNil
}

// clearEnv removes the globals a stream set.
func (v *vm) clearEnv() {
	var keys []glua.LValue
	v.env.ForEach(func(k, _ glua.LValue) { keys = append(keys, k) })
	for _, k := range keys {
		v.env.RawSet(k, glua.LNil)
	}
	v.clearedKeys += len(keys)
}

// release prepares the state for the next stream; false means it should
// be dropped instead.
func (v *vm) release() bool {
	v.f = nil
	v.objs.unbind()
	v.clearEnv()
	return v.clearedKeys <= maxClearedGlobals && !v.budget.expired.Load()
}

// keepsTooMuch counts a stream served and, every retainedCheckEvery,
// reports whether the state holds more than MaxRetainedBytes.
func (v *vm) keepsTooMuch() bool {
	v.uses++
	return v.uses%retainedCheckEvery == 0 && v.retainedOver(MaxRetainedBytes)
}

func (v *vm) close() {
	v.budget.timer.Stop()
	v.L.Close()
}

// errorText is a Lua error's message (it carries "script:line:").
func errorText(err error) string {
	var ae *glua.ApiError
	if errors.As(err, &ae) && ae.Object != nil {
		return ae.Object.String()
	}
	return err.Error()
}

// helpers is Lua code shared by every state: the bodyChunks iterator and
// coroutine.wrap must be Lua functions, because their yields (and the
// generic for's iterator calls) must not pass through a Go call.
var helpers = sync.OnceValue(func() *glua.FunctionProto {
	const src = `
local nextChunk, create, resume, raise = ...
local function bodyChunks(h)
  return function()
    local c = nextChunk(h)
    return c
  end
end
local function pass(ok, ...)
  if not ok then raise((...), 0) end
  return ...
end
local function wrap(f)
  local co = create(f)
  return function(...) return pass(resume(co, ...)) end
end
return bodyChunks, wrap
`
	chunk, err := parse.Parse(strings.NewReader(src), "sluice_helpers")
	if err != nil {
		panic(err)
	}
	p, err := glua.Compile(chunk, "sluice_helpers")
	if err != nil {
		panic(err)
	}
	return p
})
