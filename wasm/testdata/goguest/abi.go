//go:build wasip1

// A minimal proxy-wasm 0.2.1 binding for standard Go (wasip1, c-shared):
// host imports and the helpers the test guest needs.
package main

import (
	"encoding/binary"
	"unsafe"
)

//go:wasmimport env proxy_log
func proxyLog(level uint32, msg unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_get_log_level
func proxyGetLogLevel(ret unsafe.Pointer) uint32

//go:wasmimport env proxy_get_current_time_nanoseconds
func proxyGetCurrentTime(ret unsafe.Pointer) uint32

//go:wasmimport env proxy_set_tick_period_milliseconds
func proxySetTickPeriod(ms uint32) uint32

//go:wasmimport env proxy_get_property
func proxyGetProperty(path unsafe.Pointer, size uint32, retPtr, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_set_property
func proxySetProperty(path unsafe.Pointer, size uint32, val unsafe.Pointer, valSize uint32) uint32

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(typ, start, max uint32, retPtr, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_get_buffer_status
func proxyGetBufferStatus(typ uint32, retLen, retFlags unsafe.Pointer) uint32

//go:wasmimport env proxy_set_buffer_bytes
func proxySetBufferBytes(typ, start, size uint32, data unsafe.Pointer, dataSize uint32) uint32

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(typ uint32, retPtr, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_set_header_map_pairs
func proxySetHeaderMapPairs(typ uint32, ptr unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(typ uint32, key unsafe.Pointer, keySize uint32, retPtr, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_add_header_map_value
func proxyAddHeaderMapValue(typ uint32, key unsafe.Pointer, keySize uint32, val unsafe.Pointer, valSize uint32) uint32

//go:wasmimport env proxy_replace_header_map_value
func proxyReplaceHeaderMapValue(typ uint32, key unsafe.Pointer, keySize uint32, val unsafe.Pointer, valSize uint32) uint32

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(typ uint32, key unsafe.Pointer, keySize uint32) uint32

//go:wasmimport env proxy_get_header_map_size
func proxyGetHeaderMapSize(typ uint32, ret unsafe.Pointer) uint32

//go:wasmimport env proxy_continue_stream
func proxyContinueStream(typ uint32) uint32

//go:wasmimport env proxy_close_stream
func proxyCloseStream(typ uint32) uint32

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(status uint32, details unsafe.Pointer, detailsSize uint32, body unsafe.Pointer, bodySize uint32, headers unsafe.Pointer, headersSize uint32, grpcStatus int32) uint32

//go:wasmimport env proxy_http_call
func proxyHTTPCall(up unsafe.Pointer, upSize uint32, h unsafe.Pointer, hSize uint32, body unsafe.Pointer, bodySize uint32, tr unsafe.Pointer, trSize uint32, timeout uint32, token unsafe.Pointer) uint32

//go:wasmimport env proxy_grpc_call
func proxyGrpcCall(a unsafe.Pointer, b uint32, c unsafe.Pointer, d uint32, e unsafe.Pointer, f uint32, g unsafe.Pointer, h uint32, i unsafe.Pointer, j uint32, timeout uint32, token unsafe.Pointer) uint32

//go:wasmimport env proxy_grpc_stream
func proxyGrpcStream(svc unsafe.Pointer, svcSize uint32, service unsafe.Pointer, serviceSize uint32, method unsafe.Pointer, methodSize uint32, md unsafe.Pointer, mdSize uint32, token unsafe.Pointer) uint32

//go:wasmimport env proxy_grpc_send
func proxyGrpcSend(token uint32, msg unsafe.Pointer, size uint32, end uint32) uint32

//go:wasmimport env proxy_grpc_cancel
func proxyGrpcCancel(token uint32) uint32

//go:wasmimport env proxy_grpc_close
func proxyGrpcClose(token uint32) uint32

//go:wasmimport env proxy_get_status
func proxyGetStatus(code, msgPtr, msgSize unsafe.Pointer) uint32

//go:wasmimport env proxy_set_effective_context
func proxySetEffectiveContext(id uint32) uint32

//go:wasmimport env proxy_done
func proxyDone() uint32

//go:wasmimport env proxy_call_foreign_function
func proxyCallForeignFunction(name unsafe.Pointer, nameSize uint32, args unsafe.Pointer, argsSize uint32, retPtr, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_get_shared_data
func proxyGetSharedData(key unsafe.Pointer, keySize uint32, retPtr, retSize, cas unsafe.Pointer) uint32

//go:wasmimport env proxy_set_shared_data
func proxySetSharedData(key unsafe.Pointer, keySize uint32, val unsafe.Pointer, valSize uint32, cas uint32) uint32

//go:wasmimport env proxy_register_shared_queue
func proxyRegisterSharedQueue(name unsafe.Pointer, size uint32, ret unsafe.Pointer) uint32

//go:wasmimport env proxy_resolve_shared_queue
func proxyResolveSharedQueue(vm unsafe.Pointer, vmSize uint32, name unsafe.Pointer, size uint32, ret unsafe.Pointer) uint32

//go:wasmimport env proxy_enqueue_shared_queue
func proxyEnqueueSharedQueue(id uint32, data unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_dequeue_shared_queue
func proxyDequeueSharedQueue(id uint32, retPtr, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_define_metric
func proxyDefineMetric(typ uint32, name unsafe.Pointer, size uint32, ret unsafe.Pointer) uint32

//go:wasmimport env proxy_increment_metric
func proxyIncrementMetric(id uint32, offset int64) uint32

//go:wasmimport env proxy_record_metric
func proxyRecordMetric(id uint32, value uint64) uint32

//go:wasmimport env proxy_get_metric
func proxyGetMetric(id uint32, ret unsafe.Pointer) uint32

// Enumerations.
const (
	mapRequestHeaders      = 0
	mapRequestTrailers     = 1
	mapResponseHeaders     = 2
	mapResponseTrailers    = 3
	mapGrpcInitial         = 4
	mapGrpcTrailing        = 5
	mapCallResponseHeaders = 6

	bufRequestBody      = 0
	bufResponseBody     = 1
	bufCallResponseBody = 4
	bufGrpcReceive      = 5
	bufVMConfig         = 6
	bufPluginConfig     = 7

	actionContinue = 0
	actionPause    = 1

	resultOk          = 0
	resultNotFound    = 1
	resultEmpty       = 7
	resultCasMismatch = 8
)

// Guest memory handed to the host stays referenced until the guest has
// read it, so the GC cannot move or free it.
var pinned = map[uintptr][]byte{}

//go:wasmexport proxy_on_memory_allocate
func proxyOnMemoryAllocate(size uint32) unsafe.Pointer {
	if size == 0 {
		size = 1
	}
	b := make([]byte, size)
	p := unsafe.Pointer(&b[0])
	pinned[uintptr(p)] = b
	return p
}

//go:wasmexport proxy_abi_version_0_2_1
func proxyABIVersion() {}

func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

func sptr(s string) unsafe.Pointer { return ptr([]byte(s)) }

// take returns (and unpins) host-written memory.
func take(p uint32, size uint32) []byte {
	if p == 0 {
		return nil
	}
	b := pinned[uintptr(p)]
	delete(pinned, uintptr(p))
	out := make([]byte, size)
	copy(out, b[:size])
	return out
}

// call runs a host function that returns memory through (ptr, size).
func call(fn func(retPtr, retSize unsafe.Pointer) uint32) ([]byte, uint32) {
	var p, n uint32
	r := fn(unsafe.Pointer(&p), unsafe.Pointer(&n))
	if r != resultOk {
		return nil, r
	}
	return take(p, n), r
}

func logInfo(msg string) { proxyLog(2, sptr(msg), uint32(len(msg))) }

func getHeader(m uint32, k string) (string, bool) {
	b, r := call(func(p, n unsafe.Pointer) uint32 { return proxyGetHeaderMapValue(m, sptr(k), uint32(len(k)), p, n) })
	return string(b), r == resultOk
}

func addHeader(m uint32, k, v string) {
	proxyAddHeaderMapValue(m, sptr(k), uint32(len(k)), sptr(v), uint32(len(v)))
}

func replaceHeader(m uint32, k, v string) {
	proxyReplaceHeaderMapValue(m, sptr(k), uint32(len(k)), sptr(v), uint32(len(v)))
}

func removeHeader(m uint32, k string) { proxyRemoveHeaderMapValue(m, sptr(k), uint32(len(k))) }

func getBuffer(t, start, max uint32) []byte {
	b, _ := call(func(p, n unsafe.Pointer) uint32 { return proxyGetBufferBytes(t, start, max, p, n) })
	return b
}

func setBuffer(t uint32, b []byte) uint32 {
	return proxySetBufferBytes(t, 0, 0xffffffff, ptr(b), uint32(len(b)))
}

func getProperty(path ...string) ([]byte, uint32) {
	var s []byte
	for _, p := range path {
		s = append(append(s, p...), 0)
	}
	return call(func(p, n unsafe.Pointer) uint32 { return proxyGetProperty(ptr(s), uint32(len(s)), p, n) })
}

func encodePairs(kv ...string) []byte {
	n := len(kv) / 2
	b := binary.LittleEndian.AppendUint32(nil, uint32(n))
	for i := 0; i < n; i++ {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[2*i])))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[2*i+1])))
	}
	for _, s := range kv {
		b = append(append(b, s...), 0)
	}
	return b
}

func decodePairs(b []byte) [][2]string {
	if len(b) < 4 {
		return nil
	}
	n := int(binary.LittleEndian.Uint32(b))
	data := b[4+8*n:]
	out := make([][2]string, n)
	for i := 0; i < n; i++ {
		kl := int(binary.LittleEndian.Uint32(b[4+8*i:]))
		vl := int(binary.LittleEndian.Uint32(b[8+8*i:]))
		out[i][0] = string(data[:kl])
		data = data[kl+1:]
		out[i][1] = string(data[:vl])
		data = data[vl+1:]
	}
	return out
}

func sendLocal(status uint32, details, body string, grpc int32, headers ...string) {
	h := encodePairs(headers...)
	proxySendLocalResponse(status, sptr(details), uint32(len(details)), sptr(body), uint32(len(body)), ptr(h), uint32(len(h)), grpc)
}

func getShared(key string) ([]byte, uint32, uint32) {
	var p, n, cas uint32
	r := proxyGetSharedData(sptr(key), uint32(len(key)), unsafe.Pointer(&p), unsafe.Pointer(&n), unsafe.Pointer(&cas))
	if r != resultOk {
		return nil, 0, r
	}
	return take(p, n), cas, r
}

func setShared(key string, val []byte, cas uint32) uint32 {
	return proxySetSharedData(sptr(key), uint32(len(key)), ptr(val), uint32(len(val)), cas)
}

func defineMetric(typ uint32, name string) uint32 {
	var id uint32
	proxyDefineMetric(typ, sptr(name), uint32(len(name)), unsafe.Pointer(&id))
	return id
}
