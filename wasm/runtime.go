package wasm

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// DefaultMemoryLimitPages bounds each VM's linear memory (64 KiB pages):
// 512 pages are 32 MiB. A guest growing past it traps.
const DefaultMemoryLimitPages = 512

// engine is one wazero runtime with the host modules every guest imports
// (env, wasi_snapshot_preview1, wasi_unstable) and the modules compiled on
// it, by sha256 of their bytes. The memory limit is a runtime setting, so
// there is one engine per limit.
type engine struct {
	rt wazero.Runtime

	mu      sync.Mutex
	modules map[[32]byte]*module
	// compiles counts real compilations; tests read it to prove caching.
	compiles int
}

var (
	enginesMu sync.Mutex
	engines   = map[uint32]*engine{}
)

// engineFor returns the process-wide engine for a memory limit.
func engineFor(limitPages uint32) (*engine, error) {
	enginesMu.Lock()
	defer enginesMu.Unlock()
	if e := engines[limitPages]; e != nil {
		return e, nil
	}
	ctx := context.Background()
	cfg := wazero.NewRuntimeConfigCompiler().
		WithMemoryLimitPages(limitPages).
		WithCompilationCache(wazero.NewCompilationCache())
	rt := wazero.NewRuntimeWithConfig(ctx, cfg)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		return nil, fmt.Errorf("wasm: instantiate wasi_snapshot_preview1: %w", err)
	}
	// The AssemblyScript SDK imports proc_exit under WASI's old name.
	old := rt.NewHostModuleBuilder("wasi_unstable")
	wasi_snapshot_preview1.NewFunctionExporter().ExportFunctions(old)
	if _, err := old.Instantiate(ctx); err != nil {
		return nil, fmt.Errorf("wasm: instantiate wasi_unstable: %w", err)
	}
	env := rt.NewHostModuleBuilder("env")
	for _, h := range hostFuncs {
		env.NewFunctionBuilder().
			WithGoModuleFunction(h.goFunc(), h.params, h.results).
			WithName(h.name).
			Export(h.name)
	}
	if _, err := env.Instantiate(ctx); err != nil {
		return nil, fmt.Errorf("wasm: instantiate env host module: %w", err)
	}
	e := &engine{rt: rt, modules: map[[32]byte]*module{}}
	engines[limitPages] = e
	return e, nil
}

// module is a compiled guest and what the host learned about it.
type module struct {
	compiled wazero.CompiledModule
	sha      [32]byte
	abi      abiVersion
	// params maps each exported function to its parameter count: ABI
	// 0.1.0 guests take fewer arguments in some callbacks.
	params map[string]int
}

func (m *module) has(name string) bool { _, ok := m.params[name]; return ok }

// compile returns the module for code, compiling it only the first time
// these bytes are seen. source names the code in errors.
func (e *engine) compile(code []byte, source string) (*module, error) {
	sum := sha256.Sum256(code)
	e.mu.Lock()
	defer e.mu.Unlock()
	if m := e.modules[sum]; m != nil {
		return m, nil
	}
	compiled, err := e.rt.CompileModule(context.Background(), code)
	if err != nil {
		return nil, fmt.Errorf("wasm: %s: cannot compile the module: %w", source, err)
	}
	e.compiles++
	m, err := inspect(compiled, source)
	if err != nil {
		_ = compiled.Close(context.Background())
		return nil, err
	}
	m.sha = sum
	e.modules[sum] = m
	return m, nil
}

// inspect checks a compiled module against the ABI: a version export, an
// allocator, memory, and only imports the host provides.
func inspect(c wazero.CompiledModule, source string) (*module, error) {
	m := &module{compiled: c, params: map[string]int{}}
	for name, def := range c.ExportedFunctions() {
		m.params[name] = len(def.ParamTypes())
	}
	for _, a := range abiExports {
		if m.has(a.name) {
			m.abi = a.v
			break
		}
	}
	if m.abi == abiUnknown {
		return nil, fmt.Errorf("wasm: %s: no proxy_abi_version_0_2_1, _0_2_0 or _0_1_0 export: not a proxy-wasm module", source)
	}
	if !m.has("proxy_on_memory_allocate") && !m.has("malloc") {
		return nil, fmt.Errorf("wasm: %s: exports neither proxy_on_memory_allocate nor malloc: the host cannot hand it data", source)
	}
	if _, ok := c.ExportedMemories()["memory"]; !ok {
		return nil, fmt.Errorf("wasm: %s: exports no memory", source)
	}
	if !m.has("proxy_on_context_create") {
		return nil, fmt.Errorf("wasm: %s: exports no proxy_on_context_create", source)
	}
	var unknown, mismatched []string
	for _, def := range c.ImportedFunctions() {
		mod, name, _ := def.Import()
		switch mod {
		case "wasi_snapshot_preview1", "wasi_unstable":
			// wazero's WASI rejects what it lacks at instantiation.
		case "env":
			h, ok := hostFuncIndex[name]
			if !ok {
				unknown = append(unknown, "env."+name)
				continue
			}
			if !slices.Equal(def.ParamTypes(), h.params) || !slices.Equal(def.ResultTypes(), h.results) {
				mismatched = append(mismatched, fmt.Sprintf("env.%s%s (host provides %s)", name, sig(def.ParamTypes(), def.ResultTypes()), sig(h.params, h.results)))
			}
		default:
			unknown = append(unknown, mod+"."+name)
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("wasm: %s: imports functions the host does not provide: %s", source, strings.Join(unknown, ", "))
	}
	if len(mismatched) > 0 {
		return nil, fmt.Errorf("wasm: %s: imports with a signature the host does not provide: %s", source, strings.Join(mismatched, ", "))
	}
	return m, nil
}

func sig(params, results []api.ValueType) string {
	names := func(ts []api.ValueType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = api.ValueTypeName(t)
		}
		return strings.Join(s, ", ")
	}
	return "(" + names(params) + ") -> (" + names(results) + ")"
}

// errModuleClosed reports a call into a VM that was already discarded.
var errModuleClosed = errors.New("wasm: vm is closed")
