//go:build wasip1

// A minimal proxy-wasm 0.2.1 binding for standard Go (GOOS=wasip1,
// -buildmode=c-shared): the host functions this filter calls and the
// helpers around them. No SDK: every guest in samples/wasm carries its own.
package main

import (
	"encoding/binary"
	"unsafe"
)

//go:wasmimport env proxy_log
func proxyLog(level uint32, msg unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(typ, start, max uint32, retPtr, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(typ uint32, key unsafe.Pointer, keySize uint32, retPtr, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_replace_header_map_value
func proxyReplaceHeaderMapValue(typ uint32, key unsafe.Pointer, keySize uint32, val unsafe.Pointer, valSize uint32) uint32

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(typ uint32, key unsafe.Pointer, keySize uint32) uint32

//go:wasmimport env proxy_continue_stream
func proxyContinueStream(typ uint32) uint32

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(status uint32, details unsafe.Pointer, detailsSize uint32, body unsafe.Pointer, bodySize uint32, headers unsafe.Pointer, headersSize uint32, grpcStatus int32) uint32

//go:wasmimport env proxy_http_call
func proxyHTTPCall(upstream unsafe.Pointer, upstreamSize uint32, headers unsafe.Pointer, headersSize uint32, body unsafe.Pointer, bodySize uint32, trailers unsafe.Pointer, trailersSize uint32, timeoutMs uint32, token unsafe.Pointer) uint32

// Enumerations of the ABI.
const (
	mapRequestHeaders      = 0
	mapCallResponseHeaders = 6

	bufPluginConfig = 7

	streamRequest = 0

	actionContinue = 0
	actionPause    = 1

	resultOk = 0

	logInfo = 2
	logWarn = 3
)

// pinned keeps memory handed to the host referenced until the guest has
// read it, so the GC cannot free it.
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

// proxy_on_context_create is required; this filter keeps no state per
// context.
//
//go:wasmexport proxy_on_context_create
func proxyOnContextCreate(id, root uint32) {}

func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

func sptr(s string) unsafe.Pointer { return ptr([]byte(s)) }

// take returns (and unpins) memory the host wrote through the allocator.
func take(p, size uint32) []byte {
	if p == 0 {
		return nil
	}
	b := pinned[uintptr(p)]
	delete(pinned, uintptr(p))
	return append([]byte(nil), b[:size]...)
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

func log(level uint32, msg string) { proxyLog(level, sptr(msg), uint32(len(msg))) }

func getBuffer(typ, start, max uint32) []byte {
	b, _ := call(func(p, n unsafe.Pointer) uint32 { return proxyGetBufferBytes(typ, start, max, p, n) })
	return b
}

func getHeader(m uint32, k string) (string, bool) {
	b, r := call(func(p, n unsafe.Pointer) uint32 { return proxyGetHeaderMapValue(m, sptr(k), uint32(len(k)), p, n) })
	return string(b), r == resultOk
}

func replaceHeader(m uint32, k, v string) {
	proxyReplaceHeaderMapValue(m, sptr(k), uint32(len(k)), sptr(v), uint32(len(v)))
}

func removeHeader(m uint32, k string) { proxyRemoveHeaderMapValue(m, sptr(k), uint32(len(k))) }

// encodePairs writes the ABI's header map encoding: a count, then the
// length of every name and value, then the NUL-terminated strings.
func encodePairs(kv ...string) []byte {
	n := len(kv) / 2
	b := binary.LittleEndian.AppendUint32(nil, uint32(n))
	for i := range n {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[2*i])))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[2*i+1])))
	}
	for _, s := range kv[:2*n] {
		b = append(append(b, s...), 0)
	}
	return b
}

// sendLocal answers the request from the filter; it never reaches the
// upstream.
func sendLocal(status uint32, details, body string, headers ...string) {
	h := encodePairs(headers...)
	proxySendLocalResponse(status, sptr(details), uint32(len(details)), sptr(body), uint32(len(body)), ptr(h), uint32(len(h)), -1)
}

// httpCall sends a request to a cluster of the proxy; the answer comes to
// proxy_on_http_call_response.
func httpCall(cluster string, headers []string, timeoutMs uint32) uint32 {
	h := encodePairs(headers...)
	var token uint32
	return proxyHTTPCall(sptr(cluster), uint32(len(cluster)), ptr(h), uint32(len(h)), nil, 0, nil, 0, timeoutMs, unsafe.Pointer(&token))
}
