package wasm

import (
	"encoding/binary"
	"errors"

	"github.com/sluice-proxy/sluice/engine/header"
)

// Enumerations of the proxy-wasm ABI (github.com/proxy-wasm/spec, 0.2.1;
// 0.2.0 and 0.1.0 use the same values).

// result is WasmResult, the status every host function returns.
type result = uint32

const (
	resultOk                  result = 0
	resultNotFound            result = 1
	resultBadArgument         result = 2
	resultSerializationFail   result = 3
	resultParseFailure        result = 4
	resultInvalidMemoryAccess result = 6
	resultEmpty               result = 7
	resultCasMismatch         result = 8
	resultInternalFailure     result = 10
	resultUnimplemented       result = 12
)

// mapType selects a header map.
const (
	mapRequestHeaders       = 0
	mapRequestTrailers      = 1
	mapResponseHeaders      = 2
	mapResponseTrailers     = 3
	mapGrpcInitialMetadata  = 4
	mapGrpcTrailingMetadata = 5
	mapCallResponseHeaders  = 6
	mapCallResponseTrailers = 7
)

// bufferType selects a buffer.
const (
	bufferRequestBody      = 0
	bufferResponseBody     = 1
	bufferDownstreamData   = 2
	bufferUpstreamData     = 3
	bufferCallResponseBody = 4
	bufferGrpcReceive      = 5
	bufferVMConfiguration  = 6
	bufferPluginConfig     = 7
	bufferCallData         = 8
)

// streamType is the argument of proxy_continue_stream / proxy_close_stream.
const (
	streamRequest    = 0
	streamResponse   = 1
	streamDownstream = 2
	streamUpstream   = 3
)

// peerType is the argument of proxy_on_{downstream,upstream}_connection_close.
const (
	peerUnknown = 0
	peerLocal   = 1
	peerRemote  = 2
)

// action is what the guest returns from header, body, trailer, new
// connection and data callbacks.
const (
	actionContinue = 0
	actionPause    = 1
)

// metricType is the argument of proxy_define_metric.
const (
	metricCounter   = 0
	metricGauge     = 1
	metricHistogram = 2
)

// abiVersion is the proxy-wasm ABI a module was built for, read from its
// proxy_abi_version_* export.
type abiVersion int

const (
	abiUnknown abiVersion = iota
	abi010
	abi020
	abi021
)

func (v abiVersion) String() string {
	switch v {
	case abi010:
		return "0.1.0"
	case abi020:
		return "0.2.0"
	case abi021:
		return "0.2.1"
	}
	return "unknown"
}

var abiExports = []struct {
	name string
	v    abiVersion
}{
	{"proxy_abi_version_0_2_1", abi021},
	{"proxy_abi_version_0_2_0", abi020},
	{"proxy_abi_version_0_1_0", abi010},
}

// encodePairs serialises header fields the way proxy-wasm passes maps:
// a little-endian u32 count, then (key length, value length) u32 pairs,
// then each key and value followed by a NUL.
func encodePairs(fields []header.Field) []byte {
	size := 4
	for _, f := range fields {
		size += 8 + len(f.Name) + len(f.Value) + 2
	}
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b, uint32(len(fields)))
	off := 4
	for _, f := range fields {
		binary.LittleEndian.PutUint32(b[off:], uint32(len(f.Name)))
		binary.LittleEndian.PutUint32(b[off+4:], uint32(len(f.Value)))
		off += 8
	}
	for _, f := range fields {
		off += copy(b[off:], f.Name)
		b[off] = 0
		off++
		off += copy(b[off:], f.Value)
		b[off] = 0
		off++
	}
	return b
}

var errBadPairs = errors.New("wasm: malformed header pairs")

// decodePairs parses the pairs format written by encodePairs.
func decodePairs(b []byte) ([]header.Field, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, errBadPairs
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n < 0 || n > (len(b)-4)/8 {
		return nil, errBadPairs
	}
	sizes := b[4 : 4+8*n]
	data := b[4+8*n:]
	out := make([]header.Field, 0, n)
	for i := 0; i < n; i++ {
		kl := int(binary.LittleEndian.Uint32(sizes[8*i:]))
		vl := int(binary.LittleEndian.Uint32(sizes[8*i+4:]))
		if kl < 0 || vl < 0 || kl+vl+2 > len(data) {
			return nil, errBadPairs
		}
		k := string(data[:kl])
		data = data[kl+1:]
		v := string(data[:vl])
		data = data[vl+1:]
		out = append(out, header.Field{Name: k, Value: v})
	}
	return out, nil
}
