package wasm

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Memory helpers. Guest pointers are offsets into the VM's linear memory;
// an offset outside it is InvalidMemoryAccess, never a host panic.

func (v *vm) bytes(ptr, size uint32) ([]byte, bool) {
	if size == 0 {
		return nil, true
	}
	return v.mem.Read(ptr, size)
}

func (v *vm) str(ptr, size uint32) (string, bool) {
	b, ok := v.bytes(ptr, size)
	return string(b), ok
}

// copyOut hands data to the guest: memory from its allocator, the pointer
// and size written where it asked. Empty data is a null pointer.
func (v *vm) copyOut(data []byte, ptrPtr, sizePtr uint32) result {
	var ptr uint32
	if len(data) > 0 {
		ptr = v.alloc(uint32(len(data)))
		if !v.mem.Write(ptr, data) {
			return resultInvalidMemoryAccess
		}
	}
	if !v.mem.WriteUint32Le(ptrPtr, ptr) || !v.mem.WriteUint32Le(sizePtr, uint32(len(data))) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}

// current returns the stream of the effective context, or nil for the
// root context.
func (v *vm) current() *filter { return v.streams[v.effective] }

func (v *vm) logger() *slog.Logger { return v.p.log }

// Logging and time.

func logLevel(l uint32) slog.Level {
	switch l {
	case 0: // trace
		return slog.LevelDebug - 4
	case 1:
		return slog.LevelDebug
	case 2:
		return slog.LevelInfo
	case 3:
		return slog.LevelWarn
	case 4:
		return slog.LevelError
	}
	return slog.LevelError + 4 // critical
}

func hLog(v *vm, s []uint64) result {
	level := logLevel(uint32(s[0]))
	log := v.logger()
	f := v.current()
	if f != nil {
		log = f.logger()
	}
	// SDKs log at trace and debug on every context (the AssemblyScript
	// runtime does): a disabled level costs nothing, not a string and its
	// arguments per call.
	if !log.Enabled(context.Background(), level) {
		if s[1]+s[2] > uint64(v.mem.Size()) {
			return resultInvalidMemoryAccess
		}
		return resultOk
	}
	msg, ok := v.str(uint32(s[1]), uint32(s[2]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	args := []any{"plugin", v.p.name}
	if f != nil {
		if f.cb != nil {
			args = append(args, "stream", f.cb.StreamID())
		} else {
			args = append(args, "conn", f.net.nc.ConnectionID())
		}
	}
	log.Log(context.Background(), level, msg, args...)
	return resultOk
}

func hGetLogLevel(v *vm, s []uint64) result {
	level := uint32(5)
	for l := uint32(0); l < 5; l++ {
		if v.logger().Enabled(context.Background(), logLevel(l)) {
			level = l
			break
		}
	}
	if !v.mem.WriteUint32Le(uint32(s[0]), level) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}

func hGetCurrentTime(v *vm, s []uint64) result {
	if !v.mem.WriteUint64Le(uint32(s[0]), uint64(time.Now().UnixNano())) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}

func hSetTickPeriod(v *vm, s []uint64) result {
	v.setTick(time.Duration(uint32(s[0])) * time.Millisecond)
	return resultOk
}

// Header maps.

func (v *vm) headerMap(t uint32) *header.Map {
	switch t {
	case mapGrpcInitialMetadata, mapGrpcTrailingMetadata:
		if v.grpcMetadata != nil && v.grpcMapType == t {
			return v.grpcMetadata
		}
		return nil
	case mapCallResponseHeaders:
		if v.callResp != nil {
			return &v.callResp.Headers
		}
		return nil
	case mapCallResponseTrailers:
		if v.callResp != nil {
			return &v.callResp.Trailers
		}
		return nil
	}
	f := v.current()
	if f == nil {
		return nil
	}
	switch t {
	case mapRequestHeaders:
		if f.reqHeaders == nil && f.cb != nil {
			return f.cb.RequestHeaders()
		}
		return f.reqHeaders
	case mapRequestTrailers:
		return f.reqTrailers
	case mapResponseHeaders:
		return f.respHeaders
	case mapResponseTrailers:
		return f.respTrailers
	}
	return nil
}

func hGetHeaderMapPairs(v *vm, s []uint64) result {
	m := v.headerMap(uint32(s[0]))
	if m == nil {
		return resultNotFound
	}
	return v.copyOut(encodePairs(m.Fields()), uint32(s[1]), uint32(s[2]))
}

func hSetHeaderMapPairs(v *vm, s []uint64) result {
	m := v.headerMap(uint32(s[0]))
	if m == nil {
		return resultNotFound
	}
	b, ok := v.bytes(uint32(s[1]), uint32(s[2]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	fields, err := decodePairs(b)
	if err != nil {
		return resultParseFailure
	}
	m.Reset()
	for _, f := range fields {
		m.Add(lowerName(f.Name), f.Value)
	}
	return resultOk
}

func hGetHeaderMapValue(v *vm, s []uint64) result {
	m := v.headerMap(uint32(s[0]))
	if m == nil {
		return resultNotFound
	}
	key, ok := v.str(uint32(s[1]), uint32(s[2]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	val, found := m.Get(key)
	if !found {
		return resultNotFound
	}
	return v.copyOut([]byte(val), uint32(s[3]), uint32(s[4]))
}

// keyValue reads the key and value arguments of the add/replace calls.
func (v *vm) keyValue(s []uint64) (*header.Map, string, string, result) {
	m := v.headerMap(uint32(s[0]))
	if m == nil {
		return nil, "", "", resultNotFound
	}
	key, ok1 := v.str(uint32(s[1]), uint32(s[2]))
	val, ok2 := v.str(uint32(s[3]), uint32(s[4]))
	if !ok1 || !ok2 {
		return nil, "", "", resultInvalidMemoryAccess
	}
	return m, lowerName(key), val, resultOk
}

func hAddHeaderMapValue(v *vm, s []uint64) result {
	m, k, val, r := v.keyValue(s)
	if r == resultOk {
		m.Add(k, val)
	}
	return r
}

func hReplaceHeaderMapValue(v *vm, s []uint64) result {
	m, k, val, r := v.keyValue(s)
	if r == resultOk {
		m.Set(k, val)
	}
	return r
}

func hRemoveHeaderMapValue(v *vm, s []uint64) result {
	m := v.headerMap(uint32(s[0]))
	if m == nil {
		return resultNotFound
	}
	key, ok := v.str(uint32(s[1]), uint32(s[2]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	m.Del(key)
	return resultOk
}

func hGetHeaderMapSize(v *vm, s []uint64) result {
	m := v.headerMap(uint32(s[0]))
	if m == nil {
		return resultNotFound
	}
	if !v.mem.WriteUint32Le(uint32(s[1]), uint32(m.Len())) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}

// lowerName lower-cases a header name as Envoy does (HTTP/2 requires it).
func lowerName(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// Buffers.

// buffer returns the bytes of a buffer type; mutable is nil for the
// read-only ones (configurations, the http call response).
func (v *vm) buffer(t uint32) (data []byte, mutable *stream.Buffer, ok bool) {
	switch t {
	case bufferRequestBody, bufferResponseBody, bufferDownstreamData, bufferUpstreamData:
		// A body during its callback (or while the stream waits in it);
		// a connection's data likewise (netfilter.go).
		f := v.current()
		if f == nil || f.body == nil || f.bodyType != t {
			return nil, nil, false
		}
		return f.body.Bytes(), f.body, true
	case bufferCallResponseBody:
		if v.callResp == nil {
			return nil, nil, false
		}
		return v.callResp.Body, nil, true
	case bufferGrpcReceive:
		if !v.inGrpcRecv {
			return nil, nil, false
		}
		return v.grpcRecv, nil, true
	case bufferVMConfiguration:
		return v.p.vmConfig, nil, true
	case bufferPluginConfig:
		return v.p.pluginConfig, nil, true
	}
	return nil, nil, false
}

func hGetBufferBytes(v *vm, s []uint64) result {
	data, _, ok := v.buffer(uint32(s[0]))
	if !ok {
		return resultNotFound
	}
	start, max := uint64(uint32(s[1])), uint64(uint32(s[2]))
	if start > uint64(len(data)) {
		return resultBadArgument
	}
	end := min(start+max, uint64(len(data)))
	if end == start {
		// proxy-wasm-cpp-host (Envoy) reports an empty read as NotFound
		// and writes nothing.
		return resultNotFound
	}
	return v.copyOut(data[start:end], uint32(s[3]), uint32(s[4]))
}

func hGetBufferStatus(v *vm, s []uint64) result {
	data, _, ok := v.buffer(uint32(s[0]))
	if !ok {
		return resultNotFound
	}
	// Envoy reports no flags either.
	if !v.mem.WriteUint32Le(uint32(s[1]), uint32(len(data))) || !v.mem.WriteUint32Le(uint32(s[2]), 0) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}

// hSetBufferBytes follows Envoy's rules: start 0 and size 0 prepends,
// start 0 and size ≥ length replaces, start ≥ length appends; anything
// else (a splice in the middle) is BadArgument.
func hSetBufferBytes(v *vm, s []uint64) result {
	_, b, ok := v.buffer(uint32(s[0]))
	if !ok {
		return resultNotFound
	}
	if b == nil {
		return resultBadArgument
	}
	data, ok := v.bytes(uint32(s[3]), uint32(s[4]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	start, size := uint64(uint32(s[1])), uint64(uint32(s[2]))
	switch {
	case start == 0 && size == 0:
		b.Prepend(data)
	case start == 0 && size >= uint64(b.Len()):
		b.Set(data)
	case start >= uint64(b.Len()):
		b.Append(data)
	default:
		return resultBadArgument
	}
	return resultOk
}

func hGetConfiguration(v *vm, s []uint64) result {
	return v.copyOut(v.config, uint32(s[0]), uint32(s[1]))
}

// Stream control.

func (v *vm) continueStream(t uint32) result {
	f := v.current()
	if f == nil {
		return resultNotFound
	}
	if f.net != nil {
		return f.net.continueStream(t)
	}
	if t != streamRequest && t != streamResponse {
		return resultBadArgument
	}
	f.pendingContinue = true
	v.dirty = append(v.dirty, f)
	return resultOk
}

func hContinueStream(v *vm, s []uint64) result { return v.continueStream(uint32(s[0])) }

// hCloseStream: the filter contract has no stream reset, so closing a
// stream answers it with a local 503 (details wasm_close_stream). On a
// network context it closes the connection.
func hCloseStream(v *vm, s []uint64) result {
	f := v.current()
	if f == nil {
		return resultNotFound
	}
	if f.net != nil {
		return f.net.closeStream(uint32(s[0]))
	}
	f.pendingReply = &localReply{status: 503, details: "wasm_close_stream"}
	v.dirty = append(v.dirty, f)
	return resultOk
}

func hClearRouteCache(v *vm, _ []uint64) result {
	if f := v.current(); f != nil && f.cb != nil {
		f.cb.ClearRouteCache()
	}
	return resultOk
}

// localReply is a local response the guest asked for.
type localReply struct {
	status  int
	body    string
	headers []header.Field
	details string
}

func hSendLocalResponse(v *vm, s []uint64) result {
	f := v.current()
	if f == nil {
		return resultNotFound
	}
	details, ok1 := v.str(uint32(s[1]), uint32(s[2]))
	body, ok2 := v.str(uint32(s[3]), uint32(s[4]))
	hb, ok3 := v.bytes(uint32(s[5]), uint32(s[6]))
	if !ok1 || !ok2 || !ok3 {
		return resultInvalidMemoryAccess
	}
	hs, err := decodePairs(hb)
	if err != nil {
		return resultParseFailure
	}
	if f.net != nil {
		// As Envoy: a connection has no HTTP response to send; the call
		// succeeds and does nothing (SDKs panic on an error here).
		f.logger().Debug("wasm: proxy_send_local_response on a network connection: ignored", "plugin", v.p.name)
		return resultOk
	}
	r := &localReply{status: int(uint32(s[0])), body: body, headers: hs, details: details}
	if grpc := int32(uint32(s[7])); grpc >= 0 && isGRPC(f) {
		// Envoy answers a gRPC request with a trailers-only gRPC status:
		// HTTP 200, grpc-status, and the body as grpc-message.
		r.status, r.body = 200, ""
		r.headers = append(r.headers,
			header.Field{Name: "content-type", Value: "application/grpc"},
			header.Field{Name: "grpc-status", Value: fmt.Sprint(grpc)})
		if body != "" {
			r.headers = append(r.headers, header.Field{Name: "grpc-message", Value: body})
		}
	}
	f.pendingReply = r
	v.dirty = append(v.dirty, f)
	return resultOk
}

func isGRPC(f *filter) bool {
	h := f.reqHeaders
	if h == nil {
		h = f.cb.RequestHeaders()
	}
	return h != nil && strings.HasPrefix(h.Value("content-type"), "application/grpc")
}

func hSetEffectiveContext(v *vm, s []uint64) result {
	id := uint32(s[0])
	if id != v.root && v.streams[id] == nil {
		return resultBadArgument
	}
	v.effective = id
	return resultOk
}

func hDone(v *vm, _ []uint64) result {
	// Deferred deletion (proxy_on_done returning false) is not needed:
	// contexts are removed as soon as their stream ends.
	return resultOk
}

// HTTP calls.

// hHTTPCall sends the request through Callbacks.HTTPCall on a goroutine
// and delivers the answer with proxy_on_http_call_response under the VM
// lock. The root context and network contexts, which have no HTTP stream,
// call through the plugin's Callout (the server's clusters) instead.
func hHTTPCall(v *vm, s []uint64) result {
	f := v.current()
	call := v.p.callout
	if f != nil {
		call = f.caller()
	}
	if call == nil {
		return resultInternalFailure
	}
	cluster, ok1 := v.str(uint32(s[0]), uint32(s[1]))
	hb, ok2 := v.bytes(uint32(s[2]), uint32(s[3]))
	body, ok3 := v.bytes(uint32(s[4]), uint32(s[5]))
	if !ok1 || !ok2 || !ok3 {
		return resultInvalidMemoryAccess
	}
	fields, err := decodePairs(hb)
	if err != nil {
		return resultParseFailure
	}
	var h header.Map
	for _, fl := range fields {
		h.Add(lowerName(fl.Name), fl.Value)
	}
	if cluster == "" || !h.Has(":method") || !h.Has(":path") || !h.Has(":authority") {
		return resultBadArgument
	}
	token := v.nextToken
	v.nextToken++
	if !v.mem.WriteUint32Le(uint32(s[9]), token) {
		return resultInvalidMemoryAccess
	}
	timeout := time.Duration(uint32(s[8])) * time.Millisecond
	body = append([]byte(nil), body...)
	if f == nil {
		go v.rootCallout(token, cluster, &h, body, timeout)
		return resultOk
	}
	ctx := f.context()
	f.pendingCalls++
	go func() {
		resp, err := call(ctx, cluster, &h, body, timeout)
		v.deliverCallResponse(f, token, resp, err)
	}()
	return resultOk
}

// rootCallout is a root context's http_call: made through the plugin's
// Callout, answered to the root context (if the VM is still the one that
// asked: a VM replaced after a trap does not get its predecessor's answer).
func (v *vm) rootCallout(token uint32, cluster string, h *header.Map, body []byte, timeout time.Duration) {
	ctx := context.Background()
	if timeout <= 0 {
		// Envoy requires a timeout; an unbounded call would pin the VM's
		// answer forever.
		timeout = 30 * time.Second
	}
	resp, err := v.p.callout(ctx, cluster, h, body, timeout)
	if err != nil {
		v.logger().Debug("wasm: http call from the root context failed", "plugin", v.p.name, "error", err)
		resp = &stream.HTTPResponse{}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.broken.Load() {
		return
	}
	v.callResp = resp
	v.effective = v.root
	_, cerr := v.invoke(v.ex.onHTTPCallResponse, uint64(v.root), uint64(token),
		uint64(resp.Headers.Len()), uint64(len(resp.Body)), uint64(resp.Trailers.Len()))
	v.callResp = nil
	if cerr != nil {
		v.trapped(cerr)
		return
	}
	v.flush()
}

func (v *vm) deliverCallResponse(f *filter, token uint32, resp *stream.HTTPResponse, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	f.pendingCalls--
	if v.broken.Load() || f.done || v.streams[f.id] != f {
		return
	}
	if err != nil {
		// Envoy reports a failed call as a response with nothing in it.
		v.logger().Debug("wasm: http call failed", "plugin", v.p.name, "error", err)
		resp = &stream.HTTPResponse{}
	}
	v.callResp = resp
	v.effective = f.id
	_, cerr := v.invoke(v.ex.onHTTPCallResponse, uint64(f.id), uint64(token),
		uint64(resp.Headers.Len()), uint64(len(resp.Body)), uint64(resp.Trailers.Len()))
	v.callResp = nil
	if cerr != nil {
		v.trapped(cerr)
		return
	}
	v.flush()
}

// Properties.

// propertyPath splits a proxy-wasm property path (segments separated by
// NUL) into its segments.
func propertyPath(b []byte) []string {
	p := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	return p
}

func hGetProperty(v *vm, s []uint64) result {
	pb, ok := v.bytes(uint32(s[0]), uint32(s[1]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	val, found := v.property(propertyPath(pb))
	if !found {
		return resultNotFound
	}
	return v.copyOut(val, uint32(s[2]), uint32(s[3]))
}

// property resolves Envoy's property paths: the plugin's own
// (plugin_name, plugin_root_id, plugin_vm_id), request attributes through
// attr (request.path, source.address, xds.route_name, ...), single
// headers (request.headers.<name>), and what proxy_set_property stored in
// filter state.
func (v *vm) property(path []string) ([]byte, bool) {
	p := v.p
	switch strings.Join(path, ".") {
	case "plugin_name":
		return []byte(p.name), true
	case "plugin_root_id":
		return []byte(p.rootID), true
	case "plugin_vm_id", "vm_id":
		return []byte(p.vmID), true
	}
	f := v.current()
	if f == nil {
		return nil, false
	}
	if f.net != nil {
		switch path[0] {
		case "request", "response":
			// A connection has no HTTP request (Envoy: not found).
			return nil, false
		case "connection_id":
			if len(path) == 1 {
				return binary.LittleEndian.AppendUint64(nil, f.net.nc.ConnectionID()), true
			}
		}
	}
	if len(path) == 3 && (path[0] == "request" || path[0] == "response") && (path[1] == "headers" || path[1] == "trailers") {
		id, err := attr.Parse(path[0] + "." + path[1])
		if err != nil {
			return nil, false
		}
		m := attr.Resolve(f.source(), id).Headers
		if m == nil {
			return nil, false
		}
		val, ok := m.Get(path[2])
		return []byte(val), ok
	}
	name := strings.Join(path, ".")
	if id, err := attr.Parse(name); err == nil {
		return serialize(attr.Resolve(f.source(), id)), true
	}
	if val, ok := f.filterState().Get("", filterStatePrefix+name); ok {
		switch x := val.(type) {
		case []byte:
			return x, true
		case string:
			return []byte(x), true
		default:
			return []byte(fmt.Sprint(x)), true
		}
	}
	return nil, false
}

// filterStatePrefix is where Envoy keeps proxy_set_property values.
const filterStatePrefix = "wasm."

// serialize encodes an attribute as Envoy hands properties to guests:
// strings raw, integers and timestamps (Unix nanoseconds) as 8 bytes
// little-endian, booleans as one byte, maps in the header-pairs format.
func serialize(val attr.Value) []byte {
	switch val.Kind {
	case attr.KindInt:
		return binary.LittleEndian.AppendUint64(nil, uint64(val.Int))
	case attr.KindBool:
		if val.Bool {
			return []byte{1}
		}
		return []byte{0}
	case attr.KindTime:
		if val.Time.IsZero() {
			return binary.LittleEndian.AppendUint64(nil, 0)
		}
		return binary.LittleEndian.AppendUint64(nil, uint64(val.Time.UnixNano()))
	case attr.KindHeaders:
		if val.Headers == nil {
			return encodePairs(nil)
		}
		fields := make([]header.Field, val.Headers.Len())
		for i, fl := range val.Headers.Fields() {
			fields[i] = header.Field{Name: strings.ToLower(fl.Name), Value: fl.Value}
		}
		return encodePairs(fields)
	}
	return []byte(val.Str)
}

// hSetProperty stores the value in the stream's filter state under
// "wasm.<path>", as Envoy does; proxy_get_property reads it back.
func hSetProperty(v *vm, s []uint64) result {
	f := v.current()
	if f == nil {
		return resultNotFound
	}
	pb, ok1 := v.bytes(uint32(s[0]), uint32(s[1]))
	val, ok2 := v.bytes(uint32(s[2]), uint32(s[3]))
	if !ok1 || !ok2 {
		return resultInvalidMemoryAccess
	}
	f.filterState().Set("", filterStatePrefix+strings.Join(propertyPath(pb), "."), string(val))
	return resultOk
}

// Metrics.

func hDefineMetric(v *vm, s []uint64) result {
	name, ok := v.str(uint32(s[1]), uint32(s[2]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	id, r := v.p.metrics.define(uint32(s[0]), name)
	if r != resultOk {
		return r
	}
	if !v.mem.WriteUint32Le(uint32(s[3]), id) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}

func hIncrementMetric(v *vm, s []uint64) result {
	return v.p.metrics.increment(uint32(s[0]), int64(s[1]))
}

func hRecordMetric(v *vm, s []uint64) result {
	return v.p.metrics.record(uint32(s[0]), s[1])
}

func hGetMetric(v *vm, s []uint64) result {
	val, r := v.p.metrics.get(uint32(s[0]))
	if r != resultOk {
		return r
	}
	if !v.mem.WriteUint64Le(uint32(s[1]), val) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}
