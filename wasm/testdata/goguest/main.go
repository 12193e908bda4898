//go:build wasip1

// The Go test guest of Sluice's wasm host. Its plugin configuration
// ("mode=<name>", then options "key=value" separated by spaces) selects
// what it does; see the cases below and tcp.go.
package main

import (
	"encoding/hex"
	"strconv"
	"strings"
	"unsafe"
)

func main() {}

var (
	mode     string
	opts     = map[string]string{}
	vmConfig string
	queueID  uint32

	requests, gauge, hist uint32 // metric ids

	// Per stream context.
	paths = map[uint32]string{}
)

//go:wasmexport proxy_on_context_create
func proxyOnContextCreate(id, root uint32) {}

//go:wasmexport proxy_on_vm_start
func proxyOnVMStart(root, size uint32) uint32 {
	vmConfig = string(getBuffer(bufVMConfig, 0, size))
	requests = defineMetric(0, "goguest_requests_total")
	gauge = defineMetric(1, "goguest_gauge")
	hist = defineMetric(2, "goguest_hist")
	streamMsgs = defineMetric(0, "goguest_grpc_stream_messages")
	tcpBytes = defineMetric(0, "goguest_tcp_bytes_total")
	q := "goguest_queue"
	proxyRegisterSharedQueue(sptr(q), uint32(len(q)), unsafe.Pointer(&queueID))
	return 1
}

//go:wasmexport proxy_on_configure
func proxyOnConfigure(root, size uint32) uint32 {
	cfg := strings.Fields(string(getBuffer(bufPluginConfig, 0, size)))
	if len(cfg) > 0 {
		mode = strings.TrimPrefix(cfg[0], "mode=")
	}
	for _, kv := range cfg[min(1, len(cfg)):] {
		k, v, _ := strings.Cut(kv, "=")
		opts[k] = v
	}
	switch mode {
	case "refuse":
		return 0
	case "tick", "tick-call", "grpcstream-root":
		proxySetTickPeriod(5)
	case "trap-configure":
		panic("trap in on_configure")
	}
	return 1
}

//go:wasmexport proxy_on_tick
func proxyOnTick(root uint32) {
	incShared("ticks")
	if mode == "grpcstream-root" {
		openRootStream(root)
	}
	if mode == "tick-call" && !tickCalled {
		// An http_call from the root context: no stream to borrow.
		tickCalled = true
		h := encodePairs(":method", "GET", ":path", "/from-tick", ":authority", "auth")
		up := "auth_cluster"
		var token uint32
		if r := proxyHTTPCall(sptr(up), uint32(len(up)), ptr(h), uint32(len(h)), nil, 0, nil, 0, 1000, unsafe.Pointer(&token)); r != resultOk {
			setShared("tick_call", []byte("failed "+strconv.Itoa(int(r))), 0)
		}
	}
}

// tickCalled makes the tick-call mode call once per VM.
var tickCalled bool

//go:wasmexport proxy_on_queue_ready
func proxyOnQueueReady(root, id uint32) {
	for {
		b, r := call(func(p, n unsafe.Pointer) uint32 { return proxyDequeueSharedQueue(id, p, n) })
		if r != resultOk {
			return
		}
		setShared("dequeued", b, 0)
	}
}

// incShared increments a counter in shared data with compare-and-swap.
func incShared(key string) int {
	for {
		b, cas, r := getShared(key)
		n := 0
		if r == resultOk {
			n, _ = strconv.Atoi(string(b))
		}
		n++
		if setShared(key, []byte(strconv.Itoa(n)), cas) != resultCasMismatch {
			return n
		}
	}
}

//go:wasmexport proxy_on_request_headers
func proxyOnRequestHeaders(id, n, end uint32) uint32 {
	proxyIncrementMetric(requests, 1)
	path, _ := getHeader(mapRequestHeaders, ":path")
	paths[id] = path
	switch mode {
	case "addheader":
		addHeader(mapRequestHeaders, "x-wasm", "1")
	case "headers":
		addHeader(mapRequestHeaders, "x-wasm-req", "added")
		replaceHeader(mapRequestHeaders, "x-replace", "replaced")
		removeHeader(mapRequestHeaders, "x-remove")
		var size uint32
		proxyGetHeaderMapSize(mapRequestHeaders, unsafe.Pointer(&size))
		addHeader(mapRequestHeaders, "x-size", strconv.Itoa(int(size)))
		pairs, _ := call(func(p, n unsafe.Pointer) uint32 { return proxyGetHeaderMapPairs(mapRequestHeaders, p, n) })
		addHeader(mapRequestHeaders, "x-first", decodePairs(pairs)[0][0])
		addHeader(mapRequestHeaders, "x-vm-config", vmConfig)
		if _, ok := getHeader(mapRequestHeaders, "x-absent"); !ok {
			addHeader(mapRequestHeaders, "x-absent-result", "notfound")
		}
	case "setpairs":
		p := encodePairs(":method", "GET", ":path", "/replaced", ":authority", "example", "x-only", "1")
		proxySetHeaderMapPairs(mapRequestHeaders, ptr(p), uint32(len(p)))
	case "local":
		if path == "/grpc" {
			sendLocal(403, "wasm_denied", "no way", 7, "x-wasm", "local")
		} else {
			sendLocal(403, "wasm_denied", "denied by wasm\n", -1, "x-wasm", "local")
		}
		return actionPause
	case "close":
		proxyCloseStream(0)
		return actionPause
	case "props":
		v, _ := getProperty("request", "path")
		addHeader(mapRequestHeaders, "x-path", string(v))
		v, _ = getProperty("source", "address")
		addHeader(mapRequestHeaders, "x-source", string(v))
		v, _ = getProperty("xds", "route_name")
		addHeader(mapRequestHeaders, "x-route", string(v))
		v, _ = getProperty("plugin_root_id")
		addHeader(mapRequestHeaders, "x-root-id", string(v))
		v, _ = getProperty("source", "port")
		if len(v) == 8 {
			addHeader(mapRequestHeaders, "x-port", strconv.Itoa(int(uint64(v[0])|uint64(v[1])<<8)))
		}
		v, _ = getProperty("request", "headers", "user-agent")
		addHeader(mapRequestHeaders, "x-ua", string(v))
		if _, r := getProperty("no", "such"); r == resultNotFound {
			addHeader(mapRequestHeaders, "x-missing", "notfound")
		}
		k, val := "my_prop", "v1"
		proxySetProperty(sptr(k), uint32(len(k)), sptr(val), uint32(len(val)))
		v, _ = getProperty("my_prop")
		addHeader(mapRequestHeaders, "x-prop", string(v))
	case "httpcall", "httpcall-body":
		h := encodePairs(":method", "GET", ":path", "/check"+path, ":authority", "auth")
		body := "probe"
		up := "auth_cluster"
		var token uint32
		if r := proxyHTTPCall(sptr(up), uint32(len(up)), ptr(h), uint32(len(h)), sptr(body), uint32(len(body)), nil, 0, 1000, unsafe.Pointer(&token)); r != resultOk {
			sendLocal(500, "call_failed", "call failed "+strconv.Itoa(int(r)), -1)
			return actionPause
		}
		return actionPause
	case "grpccall":
		// grpc.health.v1.Health/Check with an empty request. "/raw" names
		// the cluster directly; otherwise it goes in a serialized
		// envoy.config.core.v3.GrpcService (envoy_grpc.cluster_name).
		cluster := "grpc_cluster"
		svc := []byte(cluster)
		if path != "/raw" {
			inner := append([]byte{0x0a, byte(len(cluster))}, cluster...)
			svc = append([]byte{0x0a, byte(len(inner))}, inner...)
		}
		if path == "/bad-service" {
			svc = nil
		}
		service, method := "grpc.health.v1.Health", "Check"
		md := encodePairs("x-from-wasm", "1")
		var token uint32
		r := proxyGrpcCall(ptr(svc), uint32(len(svc)), sptr(service), uint32(len(service)), sptr(method), uint32(len(method)), ptr(md), uint32(len(md)), nil, 0, 1000, unsafe.Pointer(&token))
		if r != resultOk {
			sendLocal(500, "grpc_call_failed", "grpc call failed "+strconv.Itoa(int(r)), -1)
			return actionPause
		}
		if path == "/cancel" {
			first, second := proxyGrpcCancel(token), proxyGrpcCancel(token)
			addHeader(mapRequestHeaders, "x-cancel", strconv.Itoa(int(first))+" "+strconv.Itoa(int(second)))
			return actionContinue
		}
		return actionPause
	case "grpcstream":
		return streamRequest(id, path)
	case "grpcstream-root":
		v, _, _ := getShared("root_stream")
		addHeader(mapRequestHeaders, "x-root-stream", string(v))
	case "shared":
		addHeader(mapRequestHeaders, "x-count", strconv.Itoa(incShared("count")))
	case "queue":
		var q uint32
		vm, name := "", "goguest_queue"
		proxyResolveSharedQueue(sptr(vm), 0, sptr(name), uint32(len(name)), unsafe.Pointer(&q))
		proxyEnqueueSharedQueue(q, sptr(path), uint32(len(path)))
	case "metrics":
		proxyRecordMetric(gauge, 42)
		proxyRecordMetric(hist, 7)
		var v uint64
		proxyGetMetric(requests, unsafe.Pointer(&v))
		addHeader(mapRequestHeaders, "x-requests", strconv.FormatUint(v, 10))
	case "misc":
		logInfo("hello from the go guest")
		var lvl uint32
		proxyGetLogLevel(unsafe.Pointer(&lvl))
		addHeader(mapRequestHeaders, "x-log-level", strconv.Itoa(int(lvl)))
		var t uint64
		proxyGetCurrentTime(unsafe.Pointer(&t))
		if t > 1600000000000000000 {
			addHeader(mapRequestHeaders, "x-time", "ok")
		}
		fn := "nope"
		var p, sz uint32
		r := proxyCallForeignFunction(sptr(fn), uint32(len(fn)), nil, 0, unsafe.Pointer(&p), unsafe.Pointer(&sz))
		addHeader(mapRequestHeaders, "x-foreign", strconv.Itoa(int(r)))
		var tok uint32
		r = proxyGrpcCall(nil, 0, nil, 0, nil, 0, nil, 0, nil, 0, 100, unsafe.Pointer(&tok))
		addHeader(mapRequestHeaders, "x-grpc", strconv.Itoa(int(r)))
		addHeader(mapRequestHeaders, "x-effective-bad", strconv.Itoa(int(proxySetEffectiveContext(9999))))
		proxySetEffectiveContext(id)
		addHeader(mapRequestHeaders, "x-done", strconv.Itoa(int(proxyDone())))
	case "trap":
		switch path {
		case "/panic":
			panic("deliberate panic")
		case "/nil":
			var p *struct{ x int }
			addHeader(mapRequestHeaders, "x", strconv.Itoa(p.x))
		case "/oom":
			var keep [][]byte
			for {
				keep = append(keep, make([]byte, 1<<20))
				keep[len(keep)-1][0] = 1
			}
		}
		addHeader(mapRequestHeaders, "x-trap-mode", "alive")
	case "wait-body":
		if end == 0 {
			return actionPause // see the whole body first
		}
	}
	return actionContinue
}

//go:wasmexport proxy_on_http_call_response
func proxyOnHTTPCallResponse(id, token, nh, bodySize, nt uint32) {
	if isTCP() {
		tcpCallResponse(id, bodySize)
		return
	}
	if mode == "tick-call" {
		status, _ := getHeader(mapCallResponseHeaders, ":status")
		body := string(getBuffer(bufCallResponseBody, 0, bodySize))
		setShared("tick_call", []byte(status+" "+body), 0)
		return
	}
	if paths[id] == "/call-panic" {
		panic("panic in the call response")
	}
	status, _ := getHeader(mapCallResponseHeaders, ":status")
	body := string(getBuffer(bufCallResponseBody, 0, bodySize))
	if status != "200" {
		sendLocal(403, "wasm_auth_denied", "denied: "+status+" "+body, -1)
		return
	}
	addHeader(mapRequestHeaders, "x-auth", body)
	proxyContinueStream(0)
}

//go:wasmexport proxy_on_grpc_receive
func proxyOnGrpcReceive(id, token, size uint32) {
	if strings.HasPrefix(mode, "grpcstream") {
		streamMessage(id, token, size)
		return
	}
	if paths[id] == "/grpc-panic" {
		panic("panic in the grpc response")
	}
	msg := getBuffer(bufGrpcReceive, 0, size)
	addHeader(mapRequestHeaders, "x-grpc-result", "0 "+hex.EncodeToString(msg))
	proxyContinueStream(0)
}

//go:wasmexport proxy_on_grpc_close
func proxyOnGrpcClose(id, token, status uint32) {
	if strings.HasPrefix(mode, "grpcstream") {
		streamClose(id, token, status)
		return
	}
	if paths[id] == "/grpc-panic" {
		panic("panic in the grpc close")
	}
	var code, p, n uint32
	msg := ""
	if proxyGetStatus(unsafe.Pointer(&code), unsafe.Pointer(&p), unsafe.Pointer(&n)) == resultOk {
		msg = string(take(p, n))
	}
	sendLocal(503, "wasm_grpc_failed", "grpc "+strconv.Itoa(int(status))+" "+strconv.Itoa(int(code))+" "+msg, -1)
}

//go:wasmexport proxy_on_request_body
func proxyOnRequestBody(id, size, end uint32) uint32 {
	switch mode {
	case "body", "wait-body":
		if end == 0 {
			return actionPause
		}
		var n, flags uint32
		proxyGetBufferStatus(bufRequestBody, unsafe.Pointer(&n), unsafe.Pointer(&flags))
		b := getBuffer(bufRequestBody, 0, n)
		setBuffer(bufRequestBody, []byte("REQ:"+strings.ToUpper(string(b))))
		if mode == "wait-body" {
			replaceHeader(mapRequestHeaders, "x-body-seen", strconv.Itoa(len(b)))
		}
	case "trap":
		if paths[id] == "/body-panic" {
			panic("body panic")
		}
	}
	return actionContinue
}

//go:wasmexport proxy_on_request_trailers
func proxyOnRequestTrailers(id, n uint32) uint32 {
	if mode == "headers" {
		addHeader(mapRequestTrailers, "x-wasm-trailer", "yes")
	}
	return actionContinue
}

//go:wasmexport proxy_on_response_headers
func proxyOnResponseHeaders(id, n, end uint32) uint32 {
	switch mode {
	case "headers":
		addHeader(mapResponseHeaders, "x-wasm-resp", "yes")
		replaceHeader(mapResponseHeaders, "server", "wasm")
		removeHeader(mapResponseHeaders, "x-secret")
		v, _ := getHeader(mapRequestHeaders, "x-wasm-req")
		addHeader(mapResponseHeaders, "x-saw-req", v)
	case "trap":
		if paths[id] == "/resp-panic" {
			panic("response panic")
		}
	}
	return actionContinue
}

//go:wasmexport proxy_on_response_body
func proxyOnResponseBody(id, size, end uint32) uint32 {
	if mode == "body" {
		if end == 0 {
			return actionPause
		}
		b := getBuffer(bufResponseBody, 0, size)
		setBuffer(bufResponseBody, []byte("RESP:"+string(b)))
		suffix := "!"
		proxySetBufferBytes(bufResponseBody, size+5, 0, sptr(suffix), 1) // append
		prefix := ">"
		proxySetBufferBytes(bufResponseBody, 0, 0, sptr(prefix), 1) // prepend
	}
	return actionContinue
}

//go:wasmexport proxy_on_response_trailers
func proxyOnResponseTrailers(id, n uint32) uint32 {
	if mode == "headers" {
		replaceHeader(mapResponseTrailers, "grpc-status", "0")
	}
	return actionContinue
}

//go:wasmexport proxy_on_done
func proxyOnDone(id uint32) uint32 { return 1 }

//go:wasmexport proxy_on_log
func proxyOnLog(id uint32) {
	tcpDone(id, "log")
	if mode == "log" {
		v, _ := getProperty("response", "code")
		if len(v) == 8 {
			setShared("last_code", []byte(strconv.Itoa(int(uint64(v[0])|uint64(v[1])<<8))), 0)
		}
	}
}

//go:wasmexport proxy_on_delete
func proxyOnDelete(id uint32) {
	delete(paths, id)
	tcpDone(id, "delete")
}
