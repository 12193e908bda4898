package wasm

import (
	"context"

	"github.com/tetratelabs/wazero/api"
)

// vmKey carries the *vm a guest call runs on in the call's context, so the
// host functions, which are shared by every instance, find their VM.
type vmKey struct{}

// hostFunc is one function of the "env" host module.
type hostFunc struct {
	name    string
	params  []api.ValueType
	results []api.ValueType
	fn      func(v *vm, stack []uint64) result
}

func (h *hostFunc) goFunc() api.GoModuleFunc {
	fn, void := h.fn, len(h.results) == 0
	return func(ctx context.Context, _ api.Module, stack []uint64) {
		v, _ := ctx.Value(vmKey{}).(*vm)
		if v == nil {
			if !void {
				stack[0] = uint64(resultInternalFailure)
			}
			return
		}
		r := fn(v, stack)
		if !void {
			stack[0] = uint64(r)
		}
	}
}

const i32, i64 = api.ValueTypeI32, api.ValueTypeI64

func ints(n int) []api.ValueType {
	t := make([]api.ValueType, n)
	for i := range t {
		t[i] = i32
	}
	return t
}

var one = []api.ValueType{i32}

// hostFuncs is every function the host provides in "env": the proxy-wasm
// 0.2.1 spec, the 0.1.0 names Envoy still serves, and Envoy's extras
// (proxy_clear_route_cache, emscripten_notify_memory_growth).
var hostFuncs = []*hostFunc{
	{"proxy_log", ints(3), one, hLog},
	{"proxy_get_log_level", ints(1), one, hGetLogLevel},
	{"proxy_get_current_time_nanoseconds", ints(1), one, hGetCurrentTime},
	{"proxy_set_tick_period_milliseconds", ints(1), one, hSetTickPeriod},
	{"proxy_get_property", ints(4), one, hGetProperty},
	{"proxy_set_property", ints(4), one, hSetProperty},
	{"proxy_get_buffer_bytes", ints(5), one, hGetBufferBytes},
	{"proxy_get_buffer_status", ints(3), one, hGetBufferStatus},
	{"proxy_set_buffer_bytes", ints(5), one, hSetBufferBytes},
	{"proxy_get_header_map_pairs", ints(3), one, hGetHeaderMapPairs},
	{"proxy_set_header_map_pairs", ints(3), one, hSetHeaderMapPairs},
	{"proxy_get_header_map_value", ints(5), one, hGetHeaderMapValue},
	{"proxy_add_header_map_value", ints(5), one, hAddHeaderMapValue},
	{"proxy_replace_header_map_value", ints(5), one, hReplaceHeaderMapValue},
	{"proxy_remove_header_map_value", ints(3), one, hRemoveHeaderMapValue},
	{"proxy_get_header_map_size", ints(2), one, hGetHeaderMapSize},
	{"proxy_continue_stream", ints(1), one, hContinueStream},
	{"proxy_close_stream", ints(1), one, hCloseStream},
	{"proxy_continue_request", nil, one, func(v *vm, _ []uint64) result { return v.continueStream(streamRequest) }},
	{"proxy_continue_response", nil, one, func(v *vm, _ []uint64) result { return v.continueStream(streamResponse) }},
	{"proxy_clear_route_cache", nil, one, hClearRouteCache},
	{"proxy_send_local_response", ints(8), one, hSendLocalResponse},
	{"proxy_http_call", ints(10), one, hHTTPCall},
	{"proxy_grpc_call", ints(12), one, hGrpcCall},
	{"proxy_grpc_stream", ints(9), one, hGrpcStream},
	{"proxy_grpc_send", ints(4), one, hGrpcSend},
	{"proxy_grpc_cancel", ints(1), one, hGrpcCancel},
	{"proxy_grpc_close", ints(1), one, hGrpcClose},
	{"proxy_get_status", ints(3), one, hGetStatus},
	{"proxy_set_effective_context", ints(1), one, hSetEffectiveContext},
	{"proxy_done", nil, one, hDone},
	{"proxy_call_foreign_function", ints(6), one, func(*vm, []uint64) result { return resultNotFound }},
	{"proxy_get_shared_data", ints(5), one, hGetSharedData},
	{"proxy_set_shared_data", ints(5), one, hSetSharedData},
	{"proxy_register_shared_queue", ints(3), one, hRegisterSharedQueue},
	{"proxy_resolve_shared_queue", ints(5), one, hResolveSharedQueue},
	{"proxy_dequeue_shared_queue", ints(3), one, hDequeueSharedQueue},
	{"proxy_enqueue_shared_queue", ints(3), one, hEnqueueSharedQueue},
	{"proxy_define_metric", ints(4), one, hDefineMetric},
	{"proxy_increment_metric", []api.ValueType{i32, i64}, one, hIncrementMetric},
	{"proxy_record_metric", []api.ValueType{i32, i64}, one, hRecordMetric},
	{"proxy_get_metric", ints(2), one, hGetMetric},
	{"proxy_get_configuration", ints(2), one, hGetConfiguration},
	{"emscripten_notify_memory_growth", ints(1), nil, func(*vm, []uint64) result { return resultOk }},
}

var hostFuncIndex = func() map[string]*hostFunc {
	m := make(map[string]*hostFunc, len(hostFuncs))
	for _, h := range hostFuncs {
		m[h.name] = h
	}
	return m
}()
