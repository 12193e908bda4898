package wasm

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// filter is one stream's proxy-wasm HTTP context. It binds to one VM on its
// first callback (context ids are per VM) and keeps it for its life.
//
// How the guest's actions map onto the filter contract:
//   - Continue → stream.Continue.
//   - Pause on headers while an http_call of this context is in flight, or
//     on headers that end the stream → stream.StopAndWait, until the guest
//     calls proxy_continue_stream or sends a local response.
//   - Pause on headers with a body to come and no call in flight →
//     stream.StopAndBuffer: the headers are held and the guest gets the
//     body; Continue from the body continues the headers too (as in Envoy,
//     where a body Continue resumes iteration).
//   - Pause on a body chunk that does not end the stream →
//     stream.StopAndBuffer: the chain buffers the rest and calls again
//     with the whole body and end_of_stream set. The guest sees the body
//     grow, but in one step rather than chunk by chunk as in Envoy.
//   - Pause on the last body chunk or on trailers → stream.StopAndWait.
//
// A network context (netfilter.go) is a filter too, with net set and cb
// nil: the VM keeps both kinds of stream context in one table, and host
// calls that differ between them ask f.net.
type filter struct {
	p   *plugin
	cb  stream.Callbacks // nil for a network context
	net *netFilter       // the network context this is, or nil
	v   *vm
	id  uint32 // context id in v, 0 before the first callback

	passThrough atomic.Bool // failed open: the guest is out of the picture

	// Guarded by v.mu.
	reqHeaders, reqTrailers   *header.Map
	respHeaders, respTrailers *header.Map
	body                      *stream.Buffer
	bodyType                  uint32
	inCallback                bool
	waiting                   bool // returned StopAndWait, not resumed yet
	replied                   bool
	done                      bool
	pendingContinue           bool
	pendingReply              *localReply
	pendingCalls              int
}

type callbackKind int

const (
	kindHeaders callbackKind = iota
	kindBody
	kindTrailers
)

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// lockVM returns the stream's VM locked, binding the stream to a VM and
// creating its context on first use; nil when no healthy VM is there.
//
// An HTTP stream whose VM trapped under another stream's callback is not
// failed with it: it continues on a fresh context in a healthy VM (what
// the guest kept for it before is gone; its request and response as the
// host holds them are not). Envoy fails such streams; losing requests that
// did nothing wrong to a neighbour's bug is worse than a guest seeing a
// stream from its middle. A stream the trap caught waiting (a pause, a call
// in flight) has already been failed by policy; a network connection is
// closed instead (its guest state is part of the byte stream's meaning).
func (f *filter) lockVM() *vm {
	if v := f.v; v != nil {
		v.mu.Lock()
		if !v.broken.Load() {
			return v
		}
		gone := f.net != nil || f.replied || f.done || f.passThrough.Load()
		v.mu.Unlock()
		if gone {
			return nil
		}
		f.v, f.id = nil, 0
		f.p.moved.Inc()
	}
	var v *vm
	// A VM picked healthy may trap (under another stream) before we hold
	// its lock: pick again (bounded: a module that traps on every request
	// must not keep a stream spinning).
	for attempt := 0; ; attempt++ {
		var err error
		if v, err = f.p.pick(); err != nil {
			f.p.log.Error("wasm: no vm for the stream", "plugin", f.p.name, "error", err)
			return nil
		}
		v.mu.Lock()
		if !v.broken.Load() {
			break
		}
		v.mu.Unlock()
		if attempt == 15 {
			return nil
		}
	}
	f.v, f.id = v, v.nextID
	v.nextID++
	v.streams[f.id] = f
	v.effective = f.id
	if _, err := v.invoke(v.ex.onContextCreate, uint64(f.id), uint64(v.root)); err != nil {
		v.trapped(err)
		v.mu.Unlock()
		return nil
	}
	f.p.active.Inc()
	return v
}

// run calls one stream callback of the guest and maps its action.
func (f *filter) run(k callbackKind, e func(*exports) export, prep func() uint64, end bool) stream.Status {
	if f.passThrough.Load() {
		return stream.Continue
	}
	v := f.lockVM()
	if v == nil {
		return f.fail()
	}
	defer v.mu.Unlock()
	n := prep() // records the stream's maps under the lock host calls take
	f.inCallback = true
	v.effective = f.id
	action, err := v.invoke(e(&v.ex), uint64(f.id), n, b2u(end))
	if err != nil {
		f.inCallback = false
		v.trapped(err)
		return f.fail()
	}
	v.flush()
	f.inCallback = false
	return f.status(k, uint32(action), end)
}

// status turns the guest's action and what it asked for during the
// callback into the chain status. Callers hold v.mu.
func (f *filter) status(k callbackKind, action uint32, end bool) stream.Status {
	reply, cont := f.pendingReply, f.pendingContinue
	f.pendingReply, f.pendingContinue = nil, false
	if reply != nil && !f.replied {
		f.replied, f.body = true, nil
		f.cb.SendLocalReply(reply.status, reply.body, reply.headers, reply.details)
		return stream.LocalReply
	}
	if action == actionContinue || cont {
		f.body = nil
		return stream.Continue
	}
	switch k {
	case kindHeaders:
		if f.pendingCalls == 0 && !end {
			return stream.StopAndBuffer
		}
	case kindBody:
		if !end {
			f.body = nil
			return stream.StopAndBuffer
		}
	}
	f.waiting = true
	return stream.StopAndWait
}

// fail applies the fail policy to a stream whose VM trapped in its own
// callback: pass through when fail_open, else a local 503.
func (f *filter) fail() stream.Status {
	f.passThrough.Store(true) // the guest is out either way
	if f.p.failOpen {
		return stream.Continue
	}
	f.cb.SendLocalReply(503, "wasm filter failed\n", nil, "wasm_fail_closed")
	return stream.LocalReply
}

// failAsync applies the fail policy to a waiting stream whose VM trapped
// elsewhere (in an http call response, a tick...).
func (f *filter) failAsync() {
	f.passThrough.Store(true)
	f.body = nil
	if f.p.failOpen {
		f.cb.Resume()
		return
	}
	f.replied = true
	f.cb.SendLocalReply(503, "wasm filter failed\n", nil, "wasm_fail_closed")
}

func (f *filter) OnRequestHeaders(h *header.Map, end bool) stream.Status {
	return f.run(kindHeaders, func(e *exports) export { return e.onRequestHeaders }, func() uint64 {
		f.reqHeaders = h
		return uint64(h.Len())
	}, end)
}

func (f *filter) OnRequestBody(b *stream.Buffer, end bool) stream.Status {
	return f.run(kindBody, func(e *exports) export { return e.onRequestBody }, func() uint64 {
		f.body, f.bodyType = b, bufferRequestBody
		return uint64(b.Len())
	}, end)
}

func (f *filter) OnRequestTrailers(t *header.Map) stream.Status {
	return f.run(kindTrailers, func(e *exports) export { return e.onRequestTrailers }, func() uint64 {
		f.reqTrailers = t
		return uint64(t.Len())
	}, false)
}

func (f *filter) OnResponseHeaders(h *header.Map, end bool) stream.Status {
	return f.run(kindHeaders, func(e *exports) export { return e.onResponseHeaders }, func() uint64 {
		f.respHeaders = h
		return uint64(h.Len())
	}, end)
}

func (f *filter) OnResponseBody(b *stream.Buffer, end bool) stream.Status {
	return f.run(kindBody, func(e *exports) export { return e.onResponseBody }, func() uint64 {
		f.body, f.bodyType = b, bufferResponseBody
		return uint64(b.Len())
	}, end)
}

func (f *filter) OnResponseTrailers(t *header.Map) stream.Status {
	return f.run(kindTrailers, func(e *exports) export { return e.onResponseTrailers }, func() uint64 {
		f.respTrailers = t
		return uint64(t.Len())
	}, false)
}

// OnDone ends the context (finish).
func (f *filter) OnDone() {
	v := f.v
	if v == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	f.done = true
	if v.broken.Load() || v.streams[f.id] != f {
		return
	}
	f.finish(v)
}

// finish ends a live context: proxy_on_done, proxy_on_log (where SDKs run
// their "stream done" hooks and properties are still readable), then
// proxy_on_delete; its calls and streams are dropped. Callers hold v.mu.
func (f *filter) finish(v *vm) {
	v.effective = f.id
	for _, e := range [...]export{v.ex.onDone, v.ex.onLog, v.ex.onDelete} {
		if _, err := v.invoke(e, uint64(f.id)); err != nil {
			v.trapped(err)
			return
		}
	}
	delete(v.streams, f.id)
	v.dropGrpcStreamsOf(f)
	f.p.active.Dec()
	f.body = nil
	v.flush()
}

// What host calls ask of a context of either kind.

// logger is the stream's or connection's logger.
func (f *filter) logger() *slog.Logger {
	var l *slog.Logger
	if f.cb != nil {
		l = f.cb.Logger()
	} else {
		l = f.net.nc.Logger()
	}
	if l == nil {
		l = f.p.log
	}
	return l
}

// context ends with the stream or the connection.
func (f *filter) context() context.Context {
	if f.cb != nil {
		return f.cb.Context()
	}
	return f.net.nc.Context()
}

// source is what properties read.
func (f *filter) source() attr.Source {
	if f.cb != nil {
		return f.cb
	}
	return f.net.nc
}

// filterState is where proxy_set_property stores: the stream's filter
// state, or the network context's own (the network filter contract has
// no filter state of the connection).
func (f *filter) filterState() *stream.Metadata {
	if f.cb != nil {
		return f.cb.FilterState()
	}
	return &f.net.state
}

// caller makes the context's http and gRPC calls: through its stream, or
// for a network context (no HTTP stream) through the plugin's Callout.
// Nil: it cannot call out.
func (f *filter) caller() stream.HTTPCaller {
	if f.cb != nil {
		return f.cb.HTTPCall
	}
	return f.p.callout
}

// opener opens the context's gRPC streams, as caller. Nil: it cannot.
func (f *filter) opener() stream.StreamOpener {
	if f.cb != nil {
		if sc, ok := f.cb.(stream.StreamCaller); ok {
			return sc.OpenStream
		}
		return nil
	}
	return f.p.streamCallout
}
