package wasm

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// plugin is one compiled filter config: the module, its configuration and
// a pool of VMs running it.
type plugin struct {
	name, rootID, vmID string
	source             string // the code's file name or "inline code", for errors
	vmConfig           []byte
	pluginConfig       []byte
	failOpen           bool
	env                [][2]string

	eng     *engine
	mod     *module
	log     *slog.Logger
	metrics *metricRegistry

	created, traps *observe.Counter
	// moved counts HTTP streams that continued on a fresh context in a
	// healthy VM after another stream's trap took theirs down.
	moved         *observe.Counter
	active        *observe.Gauge
	callout       stream.HTTPCaller   // calls with no HTTP stream to call through; nil: none
	streamCallout stream.StreamOpener // grpc streams likewise; nil: none

	mu     sync.RWMutex
	vms    []*vm
	rr     atomic.Uint32
	closed bool
}

// export is a guest function and how many arguments it takes.
type export struct {
	fn api.Function
	n  int
}

// exports are the guest's callbacks; a missing one is a zero export.
type exports struct {
	onContextCreate, onVMStart, onConfigure, onTick, onQueueReady     export
	onRequestHeaders, onRequestBody, onRequestTrailers                export
	onResponseHeaders, onResponseBody, onResponseTrailers             export
	onHTTPCallResponse, onDone, onLog, onDelete, allocate, initialize export
	onGrpcReceive, onGrpcClose                                        export
	onGrpcInitialMetadata, onGrpcTrailingMetadata                     export
	onNewConnection, onDownstreamData, onUpstreamData                 export
	onDownstreamClose, onUpstreamClose                                export
}

// vm is one instance of the module with its root context. A wazero
// instance is not safe for concurrent calls, so every call into the guest
// and every change of the state below happens under mu.
type vm struct {
	p   *plugin
	ctx context.Context // carries the vm for host functions

	mu         sync.Mutex
	mod        api.Module
	mem        api.Memory
	ex         exports
	stack      [8]uint64
	allocStack [1]uint64

	broken atomic.Bool // trapped or closed: take no new streams
	closed bool

	root      uint32             // the root context id
	nextID    uint32             // next stream context id
	streams   map[uint32]*filter // live stream contexts
	effective uint32             // the context host calls act on
	dirty     []*filter          // streams with a pending continue or reply

	// cond wakes network contexts waiting in a data callback for their
	// calls (netFilter.wait); it is broadcast by flush while netWaiting
	// is not zero, and when the VM breaks.
	cond       *sync.Cond
	netWaiting int

	callResp  *stream.HTTPResponse // during proxy_on_http_call_response
	nextToken uint32

	nextGrpcToken uint32
	grpcCalls     map[uint32]*grpcCall   // outstanding proxy_grpc_call by token
	grpcStreams   map[uint32]*grpcStream // open proxy_grpc_stream by token
	grpcRecv      []byte                 // during proxy_on_grpc_receive
	inGrpcRecv    bool
	grpcMetadata  *header.Map // during proxy_on_grpc_receive_{initial,trailing}_metadata
	grpcMapType   uint32      // ... and which of the two it is
	status        uint32      // proxy_get_status: set during proxy_on_grpc_close
	statusMsg     string

	config []byte // what proxy_get_configuration returns now

	tickStop chan struct{}
}

// newVM instantiates the module and brings its root context up:
// _initialize (or _start), proxy_on_context_create, proxy_on_vm_start,
// proxy_on_configure.
func (p *plugin) newVM() (*vm, error) {
	v := &vm{p: p, root: 1, nextID: 2, nextToken: 1, nextGrpcToken: 1, streams: map[uint32]*filter{}}
	v.cond = sync.NewCond(&v.mu)
	v.ctx = context.WithValue(context.Background(), vmKey{}, v)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.effective = v.root

	cfg := wazero.NewModuleConfig().WithName("").WithStartFunctions().
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().WithRandSource(crand.Reader).
		WithStdout(&logWriter{log: p.log, level: slog.LevelInfo}).
		WithStderr(&logWriter{log: p.log, level: slog.LevelWarn}).
		WithArgs(p.name)
	for _, kv := range p.env {
		cfg = cfg.WithEnv(kv[0], kv[1])
	}
	mod, err := p.eng.rt.InstantiateModule(v.ctx, p.mod.compiled, cfg)
	if err != nil {
		return nil, fmt.Errorf("wasm: %s: instantiate: %w", p.source, err)
	}
	v.mod, v.mem = mod, mod.Memory()
	get := func(name string) export {
		n, ok := p.mod.params[name]
		if !ok {
			return export{}
		}
		return export{fn: mod.ExportedFunction(name), n: n}
	}
	v.ex = exports{
		onContextCreate: get("proxy_on_context_create"), onVMStart: get("proxy_on_vm_start"),
		onConfigure: get("proxy_on_configure"), onTick: get("proxy_on_tick"), onQueueReady: get("proxy_on_queue_ready"),
		onRequestHeaders: get("proxy_on_request_headers"), onRequestBody: get("proxy_on_request_body"),
		onRequestTrailers: get("proxy_on_request_trailers"), onResponseHeaders: get("proxy_on_response_headers"),
		onResponseBody: get("proxy_on_response_body"), onResponseTrailers: get("proxy_on_response_trailers"),
		onHTTPCallResponse: get("proxy_on_http_call_response"), onDone: get("proxy_on_done"),
		onLog: get("proxy_on_log"), onDelete: get("proxy_on_delete"),
		onGrpcReceive: get("proxy_on_grpc_receive"), onGrpcClose: get("proxy_on_grpc_close"),
		onGrpcInitialMetadata:  get("proxy_on_grpc_receive_initial_metadata"),
		onGrpcTrailingMetadata: get("proxy_on_grpc_receive_trailing_metadata"),
		onNewConnection:        get("proxy_on_new_connection"),
		onDownstreamData:       get("proxy_on_downstream_data"), onUpstreamData: get("proxy_on_upstream_data"),
		onDownstreamClose: get("proxy_on_downstream_connection_close"),
		onUpstreamClose:   get("proxy_on_upstream_connection_close"),
	}
	// Proxy-wasm's allocator first, then the libc-style one (the
	// AssemblyScript SDK exports only malloc).
	if v.ex.allocate = get("proxy_on_memory_allocate"); v.ex.allocate.fn == nil {
		v.ex.allocate = get("malloc")
	}
	fail := func(err error) (*vm, error) {
		v.closeLocked()
		return nil, err
	}
	// Reactors (Go's c-shared, Rust cdylib with WASI) export _initialize;
	// others may only have _start.
	for _, start := range []string{"_initialize", "_start"} {
		if e := get(start); e.fn != nil {
			if _, err := v.invoke(e); err != nil {
				return fail(fmt.Errorf("wasm: %s: %s failed: %w", p.source, start, err))
			}
			break
		}
	}
	if _, err := v.invoke(v.ex.onContextCreate, uint64(v.root), 0); err != nil {
		return fail(fmt.Errorf("wasm: %s: proxy_on_context_create of the root context failed: %w", p.source, err))
	}
	v.config = p.vmConfig
	if ok, err := v.invokeBool(v.ex.onVMStart, uint64(v.root), uint64(len(p.vmConfig))); err != nil {
		return fail(fmt.Errorf("wasm: %s: proxy_on_vm_start failed: %w", p.source, err))
	} else if !ok {
		return fail(fmt.Errorf("wasm: %s: the vm refused to start (proxy_on_vm_start returned false)", p.source))
	}
	v.config = p.pluginConfig
	if ok, err := v.invokeBool(v.ex.onConfigure, uint64(v.root), uint64(len(p.pluginConfig))); err != nil {
		return fail(fmt.Errorf("wasm: %s: proxy_on_configure failed: %w", p.source, err))
	} else if !ok {
		return fail(fmt.Errorf("wasm: %s: plugin refused its configuration (proxy_on_configure returned false)", p.source))
	}
	v.flush()
	p.created.Inc()
	return v, nil
}

// invoke calls a guest export with args trimmed to its arity; a missing
// export returns 0 (Continue). Callers hold v.mu.
func (v *vm) invoke(e export, args ...uint64) (uint64, error) {
	if e.fn == nil {
		return 0, nil
	}
	if v.closed {
		return 0, errModuleClosed
	}
	st := v.stack[:]
	clear(st)
	copy(st[:e.n], args)
	if err := e.fn.CallWithStack(v.ctx, st); err != nil {
		return 0, err
	}
	return st[0], nil
}

// invokeBool is invoke for callbacks returning a bool; a missing export
// means true.
func (v *vm) invokeBool(e export, args ...uint64) (bool, error) {
	if e.fn == nil {
		return true, nil
	}
	r, err := v.invoke(e, args...)
	return uint32(r) != 0, err
}

// alloc asks the guest for n bytes. A failing allocator is a trap: it
// panics so wazero aborts the whole guest call with the error.
func (v *vm) alloc(n uint32) uint32 {
	v.allocStack[0] = uint64(n)
	if err := v.ex.allocate.fn.CallWithStack(v.ctx, v.allocStack[:]); err != nil {
		panic(fmt.Errorf("wasm: guest allocator failed: %w", err))
	}
	return uint32(v.allocStack[0])
}

// trapped discards a VM whose guest failed: every stream waiting on it is
// failed by policy, the others fail at their next callback, and a fresh
// VM takes its slot. Callers hold v.mu.
func (v *vm) trapped(err error) {
	if v.broken.Swap(true) {
		return
	}
	p := v.p
	p.traps.Inc()
	p.log.Error("wasm: vm trapped; replacing it", "plugin", p.name, "error", err)
	for id, f := range v.streams {
		delete(v.streams, id)
		p.active.Dec()
		if f.waiting && f.net == nil {
			// A waiting network context wakes up (closeLocked) and
			// applies the policy itself.
			f.waiting = false
			f.failAsync()
		}
	}
	v.closeLocked()
	go p.replace(v)
}

// closeLocked stops the ticker and frees the instance.
func (v *vm) closeLocked() {
	if v.closed {
		return
	}
	v.closed = true
	v.broken.Store(true)
	v.cond.Broadcast()
	v.cancelGrpcCalls()
	if v.tickStop != nil {
		close(v.tickStop)
		v.tickStop = nil
	}
	if v.mod != nil {
		_ = v.mod.Close(context.Background())
	}
}

// flush applies continues and local replies that host calls asked for on
// streams other than the one whose callback is running (that one applies
// its own when the callback returns). Callers hold v.mu.
func (v *vm) flush() {
	for _, f := range v.dirty {
		if f.inCallback {
			continue
		}
		if n := f.net; n != nil {
			n.flushed()
			continue
		}
		reply, cont := f.pendingReply, f.pendingContinue
		f.pendingReply, f.pendingContinue = nil, false
		switch {
		case reply != nil && !f.replied:
			f.replied, f.waiting, f.body = true, false, nil
			f.cb.SendLocalReply(reply.status, reply.body, reply.headers, reply.details)
		case cont && f.waiting:
			f.waiting, f.body = false, nil
			f.cb.Resume()
		}
	}
	clear(v.dirty)
	v.dirty = v.dirty[:0]
	if v.netWaiting > 0 {
		v.cond.Broadcast()
	}
}

// setTick starts, changes or stops the VM's ticker. Callers hold v.mu.
func (v *vm) setTick(period time.Duration) {
	if v.tickStop != nil {
		close(v.tickStop)
		v.tickStop = nil
	}
	if period <= 0 || v.ex.onTick.fn == nil {
		return
	}
	stop := make(chan struct{})
	v.tickStop = stop
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				v.rootCall(v.ex.onTick, uint64(v.root))
			}
		}
	}()
}

// rootCall runs a root-context callback (tick, queue ready) under the lock.
func (v *vm) rootCall(e export, args ...uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.broken.Load() {
		return
	}
	v.effective = v.root
	if _, err := v.invoke(e, args...); err != nil {
		v.trapped(err)
		return
	}
	v.flush()
}

// pick returns a healthy VM, round robin; when every VM is broken it
// replaces one on the spot (and again if that one trapped meanwhile).
func (p *plugin) pick() (*vm, error) {
	for range 8 {
		p.mu.RLock()
		n := len(p.vms)
		start := int(p.rr.Add(1))
		for i := 0; i < n; i++ {
			if v := p.vms[(start+i)%n]; !v.broken.Load() {
				p.mu.RUnlock()
				return v, nil
			}
		}
		var broken *vm
		if n > 0 {
			broken = p.vms[start%n]
		}
		p.mu.RUnlock()
		if broken == nil {
			return nil, errors.New("wasm: plugin has no vm")
		}
		v, err := p.replace(broken)
		switch {
		case err == nil && !v.broken.Load():
			return v, nil
		case err != nil && !errors.Is(err, errNoHealthyVM):
			return nil, err
		}
	}
	return nil, errNoHealthyVM
}

var errNoHealthyVM = errors.New("wasm: no healthy vm")

// replace swaps a broken VM for a fresh one.
func (p *plugin) replace(old *vm) (*vm, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("wasm: plugin is closed")
	}
	idx := -1
	for i, v := range p.vms {
		if v == old {
			idx = i
			break
		}
	}
	if idx < 0 {
		// Someone replaced it already; hand out any healthy VM.
		for _, v := range p.vms {
			if !v.broken.Load() {
				return v, nil
			}
		}
		return nil, errNoHealthyVM
	}
	v, err := p.newVM()
	if err != nil {
		p.log.Error("wasm: cannot replace a trapped vm", "plugin", p.name, "error", err)
		return nil, err
	}
	p.vms[idx] = v
	return v, nil
}

// close frees every VM of the plugin.
func (p *plugin) close() {
	p.mu.Lock()
	p.closed = true
	vms := p.vms
	p.vms = nil
	p.mu.Unlock()
	for _, v := range vms {
		if v == nil { // a VM that failed to start
			continue
		}
		v.mu.Lock()
		v.closeLocked()
		v.mu.Unlock()
	}
}

// logWriter turns a guest's stdout and stderr into log lines.
type logWriter struct {
	log   *slog.Logger
	level slog.Level
}

func (w *logWriter) Write(b []byte) (int, error) {
	if s := strings.TrimRight(string(b), "\n"); s != "" {
		w.log.Log(context.Background(), w.level, "wasm: guest output", "output", s)
	}
	return len(b), nil
}
