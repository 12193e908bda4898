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

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(typ uint32, retPtr, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_add_header_map_value
func proxyAddHeaderMapValue(typ uint32, key unsafe.Pointer, keySize uint32, val unsafe.Pointer, valSize uint32) uint32

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(typ uint32, key unsafe.Pointer, keySize uint32) uint32

// Enumerations of the ABI.
const (
	mapRequestHeaders  = 0
	mapResponseHeaders = 2

	bufPluginConfig = 7

	actionContinue = 0

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

func headerPairs(m uint32) [][2]string {
	b, _ := call(func(p, n unsafe.Pointer) uint32 { return proxyGetHeaderMapPairs(m, p, n) })
	return decodePairs(b)
}

func addHeader(m uint32, k, v string) {
	proxyAddHeaderMapValue(m, sptr(k), uint32(len(k)), sptr(v), uint32(len(v)))
}

func removeHeader(m uint32, k string) { proxyRemoveHeaderMapValue(m, sptr(k), uint32(len(k))) }

// decodePairs reads the ABI's header map encoding: a count, then the
// length of every name and value, then the NUL-terminated strings.
func decodePairs(b []byte) [][2]string {
	if len(b) < 4 {
		return nil
	}
	n := int(binary.LittleEndian.Uint32(b))
	if len(b) < 4+8*n {
		return nil
	}
	data := b[4+8*n:]
	out := make([][2]string, n)
	for i := range n {
		kl := int(binary.LittleEndian.Uint32(b[4+8*i:]))
		vl := int(binary.LittleEndian.Uint32(b[8+8*i:]))
		if len(data) < kl+vl+2 {
			return out[:i]
		}
		out[i][0] = string(data[:kl])
		data = data[kl+1:]
		out[i][1] = string(data[:vl])
		data = data[vl+1:]
	}
	return out
}
