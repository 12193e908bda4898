package wasm

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// gRPC streams (proxy_grpc_stream, proxy_grpc_send, and proxy_grpc_cancel
// and proxy_grpc_close on a stream token). A stream is an HTTP/2 POST to
// /<service>/<method> on a cluster, opened through stream.StreamCaller (an
// HTTP stream context) or the plugin's StreamCallout (the root context and
// network contexts), whose body the guest sends message by message while
// the response is read.
//
// The guest sees Envoy's callback order (source/common/grpc/
// async_client_impl.cc, AsyncStreamImpl): proxy_on_grpc_receive_initial_
// metadata once the response head arrives (empty for a trailers-only
// response), proxy_on_grpc_receive per message (its bytes, without the
// 5-byte prefix, in the GRPC_CALL_MESSAGE buffer), then always
// proxy_on_grpc_receive_trailing_metadata (empty when the stream failed)
// and proxy_on_grpc_close with the status, whose message
// proxy_get_status reads during the callback. Nothing follows close; the
// Rust SDK forgets a stream's token there and panics on anything later.
//
// Each stream has one goroutine reading the response and delivering the
// callbacks under the VM lock, one message at a time (the next is read
// only once the guest had the last, so the upstream's flow control holds
// a slow guest's stream back), and, while messages wait to go up, one
// writing them: host calls never block on the network.
//
// Token bookkeeping follows Envoy's: proxy_grpc_close ends the guest's
// side (END_STREAM) and the stream goes on receiving; the token is
// forgotten once both sides closed, or at proxy_grpc_cancel (a reset, no
// callback follows), or when the context ends.

const (
	// maxGrpcRecvMessage bounds one received message (gRPC's default
	// receive limit); a larger one fails the stream RESOURCE_EXHAUSTED.
	maxGrpcRecvMessage = 4 << 20
	// maxGrpcSendQueue bounds the bytes a stream's guest queued and the
	// upstream has not taken yet; more fails the stream
	// RESOURCE_EXHAUSTED (the upstream is not reading).
	maxGrpcSendQueue = 8 << 20
)

var errGrpcSendQueueFull = errors.New("wasm: grpc stream: more than 8 MiB of messages waiting to be sent")

// grpcStream is an open proxy_grpc_stream.
type grpcStream struct {
	v       *vm
	token   uint32
	f       *filter // the calling stream; nil for the root context
	cluster string
	cs      stream.CalloutStream
	ctx     context.Context
	cancel  context.CancelCauseFunc

	// Guarded by v.mu.
	sentEnd      bool // the guest ended its side (end_of_stream or proxy_grpc_close)
	closeCalled  bool // proxy_grpc_close was called
	remoteClosed bool // proxy_on_grpc_close was delivered
	counted      bool // counted in f.pendingCalls

	// The send queue, guarded by qmu, never by the VM lock: the writer
	// must not wait for the VM.
	qmu     sync.Mutex
	queue   [][]byte
	queued  int
	end     bool // end the request after the queue
	writing bool // a writer goroutine is draining the queue
	dead    bool // a send failed or the queue overflowed: drop the rest
}

// hGrpcStream implements proxy_grpc_stream. It refuses a stream it cannot
// open at all: ParseFailure for a malformed service or metadata, or an
// unknown cluster named by the raw bytes; InternalFailure for an unknown
// cluster in a GrpcService, or no way to call out (as Envoy, whose
// startRaw fails then; the Rust SDK expects only these).
func hGrpcStream(v *vm, s []uint64) result {
	svcBytes, ok1 := v.bytes(uint32(s[0]), uint32(s[1]))
	service, ok2 := v.str(uint32(s[2]), uint32(s[3]))
	method, ok3 := v.str(uint32(s[4]), uint32(s[5]))
	mdBytes, ok4 := v.bytes(uint32(s[6]), uint32(s[7]))
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return resultInvalidMemoryAccess
	}
	target, ok := parseGrpcService(svcBytes)
	if !ok {
		return resultParseFailure
	}
	md, err := decodePairs(mdBytes)
	if err != nil {
		return resultParseFailure
	}
	f := v.current()
	// The root context's streams live until cancelled, closed or the VM
	// goes away; a stream context's end with it.
	parent, open := context.Background(), v.p.streamCallout
	if f != nil {
		parent, open = f.context(), f.opener()
	}
	if open == nil {
		return resultInternalFailure
	}
	h := grpcRequestHead(target, service, method, md, 0)
	ctx, cancel := context.WithCancelCause(parent)
	cs, err := open(ctx, target.cluster, &h)
	if err != nil {
		cancel(nil)
		v.logger().Warn("wasm: cannot open a grpc stream", "plugin", v.p.name, "cluster", target.cluster, "error", err)
		if target.raw && errors.Is(err, proxy.ErrUnknownCluster) {
			return resultParseFailure
		}
		return resultInternalFailure
	}
	token := v.grpcToken(true)
	if !v.mem.WriteUint32Le(uint32(s[8]), token) {
		cancel(nil)
		cs.Close()
		return resultInvalidMemoryAccess
	}
	g := &grpcStream{v: v, token: token, f: f, cluster: target.cluster, cs: cs, ctx: ctx, cancel: cancel}
	if v.grpcStreams == nil {
		v.grpcStreams = map[uint32]*grpcStream{}
	}
	v.grpcStreams[token] = g
	if f != nil {
		f.pendingCalls++
		g.counted = true
	}
	go g.receive()
	return resultOk
}

// grpcStreamOf returns the open stream of token for the current context.
func (v *vm) grpcStreamOf(token uint32) *grpcStream {
	g := v.grpcStreams[token]
	if g == nil || g.f != v.current() {
		return nil
	}
	return g
}

// hGrpcSend implements proxy_grpc_send: the message goes up in a gRPC
// frame, after those queued before it. A call token is BadArgument (as in
// Envoy), as is sending after the guest ended its side; after the remote
// side closed the message is dropped (Envoy accepts it too).
func hGrpcSend(v *vm, s []uint64) result {
	token := uint32(s[0])
	if !isStreamToken(token) {
		return resultBadArgument
	}
	g := v.grpcStreamOf(token)
	if g == nil {
		return resultNotFound
	}
	msg, ok := v.bytes(uint32(s[1]), uint32(s[2]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	if g.remoteClosed {
		return resultOk
	}
	if g.sentEnd {
		return resultBadArgument
	}
	end := uint32(s[3]) != 0
	g.sentEnd = end
	g.enqueue(grpcFrame(msg), end)
	return resultOk
}

// closeGrpcStream is proxy_grpc_close on a stream: the guest's side ends
// (END_STREAM, unless it ended already) and the stream goes on receiving;
// once the remote side closed too the token is forgotten.
func (v *vm) closeGrpcStream(token uint32) result {
	g := v.grpcStreamOf(token)
	if g == nil {
		return resultNotFound
	}
	if g.remoteClosed {
		v.dropGrpcStream(token, g)
		return resultOk
	}
	g.closeCalled = true
	if !g.sentEnd {
		g.sentEnd = true
		g.enqueue(nil, true)
	}
	return resultOk
}

// cancelGrpcStream is proxy_grpc_cancel on a stream: it is reset and
// forgotten; no callback follows.
func (v *vm) cancelGrpcStream(token uint32) result {
	g := v.grpcStreamOf(token)
	if g == nil {
		return resultNotFound
	}
	v.dropGrpcStream(token, g)
	return resultOk
}

// dropGrpcStream forgets a stream and resets it if it still runs.
// Callers hold v.mu.
func (v *vm) dropGrpcStream(token uint32, g *grpcStream) {
	delete(v.grpcStreams, token)
	g.uncount()
	g.cancel(context.Canceled)
	g.cs.Close() // never blocks on the network
}

// dropGrpcStreamsOf forgets the streams of a context that ended (Envoy
// resets them when the context is destroyed). Callers hold v.mu.
func (v *vm) dropGrpcStreamsOf(f *filter) {
	for token, g := range v.grpcStreams {
		if g.f == f {
			v.dropGrpcStream(token, g)
		}
	}
}

// uncount ends the stream's part in its filter's pending calls. Callers
// hold v.mu.
func (g *grpcStream) uncount() {
	if g.counted {
		g.counted = false
		g.f.pendingCalls--
	}
}

// enqueue adds a frame (nil: none) to the send queue and, with end, the
// end of the request; a writer goroutine is started if none runs.
func (g *grpcStream) enqueue(frame []byte, end bool) {
	g.qmu.Lock()
	if g.dead {
		g.qmu.Unlock()
		return
	}
	if frame != nil {
		if g.queued+len(frame) > maxGrpcSendQueue {
			g.dead, g.queue, g.queued = true, nil, 0
			g.qmu.Unlock()
			g.cancel(errGrpcSendQueueFull)
			return
		}
		g.queue = append(g.queue, frame)
		g.queued += len(frame)
	}
	g.end = g.end || end
	start := !g.writing
	g.writing = true
	g.qmu.Unlock()
	if start {
		go g.write()
	}
}

// write sends the queue until it is empty. A failed send stops it: the
// stream is broken, and the receiving side reports how.
func (g *grpcStream) write() {
	for {
		g.qmu.Lock()
		q, end := g.queue, g.end
		g.queue, g.end = nil, false
		if g.dead || len(q) == 0 && !end {
			g.writing = false
			g.qmu.Unlock()
			return
		}
		g.qmu.Unlock()
		var err error
		for i, frame := range q {
			err = g.cs.Send(frame, end && i == len(q)-1)
			g.qmu.Lock()
			g.queued -= len(frame)
			g.qmu.Unlock()
			if err != nil {
				break
			}
		}
		if err == nil && end && len(q) == 0 {
			err = g.cs.Send(nil, true)
		}
		if err != nil {
			g.v.logger().Debug("wasm: grpc stream send failed", "plugin", g.v.p.name, "cluster", g.cluster, "error", err)
			g.qmu.Lock()
			g.dead, g.queue, g.queued, g.writing = true, nil, 0, false
			g.qmu.Unlock()
			return
		}
	}
}

// receive reads the response and delivers it to the guest in Envoy's
// order, then frees the stream.
func (g *grpcStream) receive() {
	defer g.cancel(nil)
	defer g.cs.Close()
	h, ended, err := g.cs.ResponseHeaders()
	if err != nil {
		g.fail(err)
		return
	}
	// As Envoy: the head is the initial metadata, unless it ended the
	// response, when it is the trailing metadata.
	initial := h
	if ended {
		initial = &header.Map{}
	}
	if !g.deliverMetadata(mapGrpcInitialMetadata, initial) {
		return
	}
	if st := h.Value(":status"); st != "200" {
		if ended && h.Has("grpc-status") {
			g.finish(h)
			return
		}
		code, _ := strconv.Atoi(st)
		g.deliverClose(&header.Map{}, uint32(proxy.GRPCStatusForHTTP(code)), "http status "+st)
		return
	}
	if ended {
		g.finish(h)
		return
	}
	var prefix [5]byte
	for {
		if _, err := io.ReadFull(g.cs, prefix[:]); err != nil {
			if err == io.EOF {
				break
			}
			if err == io.ErrUnexpectedEOF {
				g.deliverClose(&header.Map{}, grpcInternal, "truncated message")
				return
			}
			g.fail(err)
			return
		}
		if prefix[0] != 0 {
			g.deliverClose(&header.Map{}, grpcInternal, "compressed message")
			return
		}
		size := binary.BigEndian.Uint32(prefix[1:])
		if size > maxGrpcRecvMessage {
			g.deliverClose(&header.Map{}, grpcResourceExhausted,
				"received message larger than max ("+strconv.FormatUint(uint64(size), 10)+" vs. "+strconv.Itoa(maxGrpcRecvMessage)+")")
			return
		}
		msg := make([]byte, size)
		if _, err := io.ReadFull(g.cs, msg); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				g.deliverClose(&header.Map{}, grpcInternal, "truncated message")
				return
			}
			g.fail(err)
			return
		}
		if !g.deliverMessage(msg) {
			return
		}
	}
	g.finish(g.cs.ResponseTrailers())
}

// finish closes the stream with the status of its trailers.
func (g *grpcStream) finish(t *header.Map) {
	code, message := grpcStatusOf(t)
	g.deliverClose(t, code, message)
}

// fail closes a stream that broke: its status says how. A stream whose
// context ended (its HTTP stream is over) ends without a callback, as
// Envoy resets the streams of a context it destroys.
func (g *grpcStream) fail(err error) {
	cause := context.Cause(g.ctx)
	if g.ctx.Err() != nil && !errors.Is(cause, errGrpcSendQueueFull) {
		return
	}
	code, message := grpcStatus(cause, err)
	g.v.logger().Debug("wasm: grpc stream failed", "plugin", g.v.p.name, "cluster", g.cluster, "error", err)
	g.deliverClose(&header.Map{}, code, message)
}

// grpcStatus maps a broken stream to the status a gRPC client reports.
func grpcStatus(cause, err error) (uint32, string) {
	if errors.Is(cause, errGrpcSendQueueFull) {
		return grpcResourceExhausted, cause.Error()
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return grpcDeadlineExceeded, "deadline exceeded"
	}
	var rst *stream.ErrStreamReset
	if errors.As(err, &rst) && rst.Remote {
		// gRPC's mapping of HTTP/2 error codes.
		switch rst.Code {
		case 0x7: // REFUSED_STREAM
			return grpcUnavailable, err.Error()
		case 0x8: // CANCEL
			return grpcCancelled, err.Error()
		case 0xb: // ENHANCE_YOUR_CALM
			return grpcResourceExhausted, err.Error()
		case 0xc: // INADEQUATE_SECURITY
			return grpcPermissionDenied, err.Error()
		}
		return grpcInternal, err.Error()
	}
	return grpcUnavailable, err.Error()
}

// enter locks the VM for a callback of g and returns the context to run
// it in; false (and the VM unlocked) when the stream was cancelled or its
// context or VM is gone.
func (g *grpcStream) enter() (uint32, bool) {
	v := g.v
	v.mu.Lock()
	if v.broken.Load() || v.grpcStreams[g.token] != g {
		v.mu.Unlock()
		return 0, false
	}
	id := v.root
	if f := g.f; f != nil {
		if f.done || v.streams[f.id] != f {
			v.mu.Unlock()
			return 0, false
		}
		id = f.id
	}
	v.effective = id
	return id, true
}

// call runs one callback of g; v.mu is held. It reports whether the
// stream is still the guest's (no trap, not cancelled in the callback).
func (g *grpcStream) call(e export, args ...uint64) bool {
	v := g.v
	if _, err := v.invoke(e, args...); err != nil {
		v.trapped(err)
		return false
	}
	v.flush()
	return v.grpcStreams[g.token] == g
}

func (g *grpcStream) deliverMetadata(t uint32, m *header.Map) bool {
	id, ok := g.enter()
	if !ok {
		return false
	}
	defer g.v.mu.Unlock()
	return g.metadata(id, t, m)
}

// metadata runs a metadata callback; v.mu is held.
func (g *grpcStream) metadata(id, t uint32, m *header.Map) bool {
	v := g.v
	e := v.ex.onGrpcInitialMetadata
	if t == mapGrpcTrailingMetadata {
		e = v.ex.onGrpcTrailingMetadata
	}
	if e.fn == nil {
		return true
	}
	v.grpcMetadata, v.grpcMapType = m, t
	defer func() { v.grpcMetadata = nil }()
	return g.call(e, uint64(id), uint64(g.token), uint64(m.Len()))
}

func (g *grpcStream) deliverMessage(msg []byte) bool {
	id, ok := g.enter()
	if !ok {
		return false
	}
	v := g.v
	defer v.mu.Unlock()
	v.grpcRecv, v.inGrpcRecv = msg, true
	defer func() { v.grpcRecv, v.inGrpcRecv = nil, false }()
	return g.call(v.ex.onGrpcReceive, uint64(id), uint64(g.token), uint64(len(msg)))
}

// deliverClose hands the guest the trailing metadata, then the status,
// in one hold of the VM lock.
func (g *grpcStream) deliverClose(trailing *header.Map, code uint32, message string) {
	id, ok := g.enter()
	if !ok {
		return
	}
	v := g.v
	defer v.mu.Unlock()
	if !g.metadata(id, mapGrpcTrailingMetadata, trailing) {
		return
	}
	g.remoteClosed = true
	g.uncount()
	v.status, v.statusMsg = code, message
	still := g.call(v.ex.onGrpcClose, uint64(id), uint64(g.token), uint64(code))
	v.status, v.statusMsg = 0, ""
	if still && g.closeCalled {
		delete(v.grpcStreams, g.token)
	}
}
