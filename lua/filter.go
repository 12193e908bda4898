package lua

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	glua "github.com/yuin/gopher-lua"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// factory is a compiled Lua filter config.
type factory struct {
	def             *script            // default_source_code / inline_code; may be nil
	named           map[string]*script // source_codes, for per-route name
	clearRouteCache bool
	filterContext   *structpb.Struct
}

var filterPool = sync.Pool{New: func() any { return new(filter) }}

func (fac *factory) NewFilter(cb stream.Callbacks) stream.Filter {
	f := filterPool.Get().(*filter)
	f.fac, f.cb = fac, cb
	for i := range f.dirs {
		d := &f.dirs[i]
		d.f, d.idx = f, i
		d.hdr = hdrRef{d: d}
		d.trl = hdrRef{d: d, trailers: true}
	}
	return f
}

const (
	reqDir  = 0
	respDir = 1
)

// waitKind is what a suspended handler waits for.
type waitKind uint8

const (
	waitNone      waitKind = iota
	waitBody               // body(): the whole body
	waitChunk              // bodyChunks(): the next chunk
	waitTrailers           // trailers()
	waitResponded          // respond(): never resumed
)

// filter is one stream's Lua filter. It takes a state from the script's
// pool on its first callback that runs Lua and gives it back at the end.
type filter struct {
	fac      *factory
	cb       stream.Callbacks
	resolved bool
	sc       *script
	fctx     *structpb.Struct
	vm       *vm
	failed   bool
	// poisoned: a wait was asked where the handler could not suspend
	// (inside pcall); gopher-lua's thread bookkeeping may be off, so the
	// state is dropped instead of pooled.
	poisoned bool
	dirs     [2]direction
}

// direction is the request or response side of a stream.
type direction struct {
	f   *filter
	idx int
	th  *glua.LState // the suspended handler, nil when none
	// wait is what th waits for.
	wait         waitKind
	responded    bool // respond() sent a local reply
	ran          bool
	headers      *header.Map
	headersSent  bool // forwarded: no more changes
	ended        bool // no more body will come
	buffered     bool // the script had the whole body
	streamed     bool // body went by in chunks
	trailers     *header.Map
	trailersDone bool // trailers arrived or cannot come any more
	trailersSent bool
	body         *bufObj
	hdr, trl     hdrRef
}

func (d *direction) handler() *glua.LFunction {
	if d.idx == reqDir {
		return d.f.vm.onRequest
	}
	return d.f.vm.onResponse
}

// resolve picks the script for this stream from the per-route override.
func (f *filter) resolve() *script {
	if f.resolved {
		return f.sc
	}
	f.resolved = true
	f.sc, f.fctx = f.fac.def, f.fac.filterContext
	if pr, ok := f.cb.FilterOverride().(*perRoute); ok && pr != nil {
		switch {
		case pr.disabled:
			f.sc = nil
		case pr.script != nil:
			f.sc = pr.script
		case pr.name != "":
			f.sc = f.fac.named[pr.name]
			if f.sc == nil {
				// As Envoy: a route naming an unknown script runs none.
				f.cb.Logger().Debug("lua: per-route script not found in source_codes", "filter", FilterName, "name", pr.name, "stream", f.cb.StreamID())
			}
		}
		if pr.filterContext != nil {
			f.fctx = pr.filterContext
		}
	}
	return f.sc
}

func (f *filter) OnRequestHeaders(h *header.Map, end bool) stream.Status {
	return f.onHeaders(&f.dirs[reqDir], h, end)
}

func (f *filter) OnResponseHeaders(h *header.Map, end bool) stream.Status {
	// A request handler still waiting for trailers learns there were none.
	if d := &f.dirs[reqDir]; d.th != nil {
		if st := f.finishWaiting(d); st == stream.LocalReply {
			return st
		}
	}
	return f.onHeaders(&f.dirs[respDir], h, end)
}

func (f *filter) OnRequestBody(b *stream.Buffer, end bool) stream.Status {
	return f.onBody(&f.dirs[reqDir], b, end)
}

func (f *filter) OnResponseBody(b *stream.Buffer, end bool) stream.Status {
	return f.onBody(&f.dirs[respDir], b, end)
}

func (f *filter) OnRequestTrailers(t *header.Map) stream.Status {
	return f.onTrailers(&f.dirs[reqDir], t)
}

func (f *filter) OnResponseTrailers(t *header.Map) stream.Status {
	return f.onTrailers(&f.dirs[respDir], t)
}

func (f *filter) onHeaders(d *direction, h *header.Map, end bool) stream.Status {
	d.headers, d.ended = h, end
	if end {
		d.trailersDone = true
	}
	sc := f.resolve()
	if f.failed || sc == nil || (d.idx == reqDir && !sc.hasRequest) || (d.idx == respDir && !sc.hasResponse) {
		d.headersSent = true
		return stream.Continue
	}
	if f.vm == nil {
		v, err := sc.get()
		if err != nil {
			return f.fail(err)
		}
		f.vm = v
		v.f = f
		v.objs.bind(f)
	}
	d.th = f.vm.thread(d.idx)
	d.ran = true
	st := f.resume(d, d.handler(), f.vm.objs.handles[d.idx])
	if st != stream.Continue {
		return st
	}
	if d.th != nil && d.wait == waitBody {
		return stream.StopAndBuffer // headers stay changeable until the body is in
	}
	d.headersSent = true
	f.maybeRelease()
	return stream.Continue
}

func (f *filter) onBody(d *direction, b *stream.Buffer, end bool) stream.Status {
	if end {
		d.ended = true
	}
	if d.th == nil {
		d.streamed = true
		return stream.Continue
	}
	switch d.wait {
	case waitBody:
		if !end {
			return stream.StopAndBuffer // the engine calls again with the whole body
		}
		d.buffered = true
		d.body = f.vm.newBuffer(d, b)
		st := f.resume(d, nil, d.body.ud)
		d.body.valid = false
		d.headersSent = true
		if st != stream.Continue {
			return st
		}
	case waitChunk:
		d.streamed = true
		chunk := f.vm.newBuffer(d, b)
		st := f.resume(d, nil, chunk.ud)
		chunk.valid = false
		d.headersSent = true
		if st != stream.Continue {
			return st
		}
		if d.th != nil && d.wait == waitBody {
			return f.failf("body() cannot be called after bodyChunks() streamed part of the body")
		}
	}
	f.maybeRelease()
	return stream.Continue
}

func (f *filter) onTrailers(d *direction, t *header.Map) stream.Status {
	d.trailers, d.trailersDone = t, true
	if d.th != nil && d.wait == waitTrailers {
		st := f.resume(d, nil, f.vm.objs.headers[d.idx][1])
		d.trailersSent = true
		if st != stream.Continue {
			return st
		}
		f.maybeRelease()
		return stream.Continue
	}
	d.trailersSent = true
	return stream.Continue
}

// finishWaiting ends a suspended handler when what it waits for cannot
// come any more: trailers() returns nil; other waits are abandoned.
func (f *filter) finishWaiting(d *direction) stream.Status {
	if d.wait == waitTrailers {
		d.trailersDone = true
		st := f.resume(d, nil, glua.LNil)
		if st != stream.Continue {
			return st
		}
	}
	d.th = nil // still suspended: dropped, never resumed
	return stream.Continue
}

// resume runs a handler until it returns or waits. fn starts it; nil
// continues it with arg as the result of the call it waits in.
func (f *filter) resume(d *direction, fn *glua.LFunction, arg glua.LValue) stream.Status {
	v := f.vm
	d.wait = waitNone
	v.budget.arm(v.s.budget)
	st, err, _ := v.L.Resume(d.th, fn, arg)
	v.budget.disarm()
	if d.responded {
		// A reply ends the handler (even if it went on inside a pcall);
		// its suspended thread is dropped, never resumed.
		if err != nil || st != glua.ResumeYield {
			f.poisoned = true
		}
		d.th, d.wait = nil, waitNone
		d.headersSent = true
		return stream.LocalReply
	}
	if err != nil {
		d.th = nil
		if v.budget.outOfMem.Load() {
			return f.fail(errMemory)
		}
		if v.budget.expired.Load() {
			return f.fail(errBudget)
		}
		return f.fail(fmt.Errorf("lua: script %q: %s", v.s.name, errorText(err)))
	}
	if st == glua.ResumeOK {
		if d.wait != waitNone {
			f.poisoned = true
			d.th = nil
			return f.failf("body(), bodyChunks() and trailers() cannot wait inside pcall")
		}
		v.idle(d.idx, d.th)
		d.th, d.wait = nil, waitNone
		return stream.Continue
	}
	if d.wait == waitNone {
		d.th = nil
		return f.failf("script yielded outside a handle call (coroutine.yield in a handler)")
	}
	return stream.Continue
}

func (f *filter) failf(format string, args ...any) stream.Status {
	return f.fail(fmt.Errorf("lua: script %q: "+format, append([]any{f.sc.name}, args...)...))
}

// fail answers 500, logs why and discards the state: it may be left in
// any condition. After the response head went out the engine resets the
// stream instead.
func (f *filter) fail(err error) stream.Status {
	f.failed = true
	name := ""
	if f.sc != nil {
		name = f.sc.name
	}
	f.cb.Logger().LogAttrs(context.Background(), slog.LevelError, "lua: script failed",
		slog.String("filter", FilterName), slog.String("script", name),
		slog.Uint64("stream", f.cb.StreamID()), slog.String("error", err.Error()))
	if v := f.vm; v != nil {
		f.vm = nil
		v.f = nil
		v.objs.unbind()
		v.close()
	}
	for i := range f.dirs {
		f.dirs[i].th = nil
	}
	body := "lua: script error\n"
	if errors.Is(err, errBudget) || errors.Is(err, errMemory) {
		body = err.Error() + "\n"
	}
	f.cb.SendLocalReply(500, body, nil, "lua_error")
	return stream.LocalReply
}

// maybeRelease gives the state back as soon as nothing can run on it
// any more, so a stream waiting for its upstream holds none.
func (f *filter) maybeRelease() {
	if f.vm == nil || f.dirs[reqDir].th != nil || f.dirs[respDir].th != nil {
		return
	}
	if f.sc.hasResponse && !f.dirs[respDir].ran && !f.vm.envEmpty() {
		return // envoy_on_response may read globals the request set
	}
	// Most scripts set no globals: the state goes back now and the
	// response callback takes whichever is warm, instead of every stream
	// waiting on its upstream holding a state of its own (50 connections
	// kept 50 states cycling through the CPU cache).
	f.releaseVM()
}

func (f *filter) releaseVM() {
	v := f.vm
	f.vm = nil
	switch {
	case !v.release() || f.poisoned:
		v.close()
	case v.keepsTooMuch():
		f.cb.Logger().Warn("lua: state dropped: the script keeps more than the retained-memory limit in its shared tables",
			"script", v.s.name, "limit_bytes", MaxRetainedBytes)
		v.close()
	default:
		f.sc.put(v)
	}
}

func (f *filter) OnDone() {
	for i := range f.dirs {
		if d := &f.dirs[i]; d.th != nil && f.vm != nil {
			f.finishWaiting(d)
		}
	}
	if f.vm != nil {
		f.dirs[reqDir].th, f.dirs[respDir].th = nil, nil
		f.releaseVM()
	}
	*f = filter{}
	filterPool.Put(f)
}

// log writes a script's message to the stream's logger.
func (f *filter) log(level slog.Level, msg string) {
	lg := f.cb.Logger()
	ctx := context.Background()
	if lg == nil || !lg.Enabled(ctx, level) {
		return
	}
	name := ""
	if f.sc != nil {
		name = f.sc.name
	}
	lg.LogAttrs(ctx, level, msg, slog.String("filter", FilterName), slog.String("script", name), slog.Uint64("stream", f.cb.StreamID()))
}
