//go:build wasip1

// gRPC streams. Mode "grpcstream" opens one from the stream context (the
// request path picks the scenario, against the test service
// sluice.test.Streamer whose messages are google.protobuf.StringValue)
// and, when the stream is over, hands what it saw to the upstream in
// x-stream and continues the request. Mode "grpcstream-root" opens one
// from the root context on its first tick and keeps what it saw in shared
// data "root_stream", which requests copy into x-root-stream.
//
// Like the Rust SDK, the guest treats a callback for a stream it does not
// know (never opened, or already closed) as a bug: it panics, which traps
// the VM and fails the request.
package main

import (
	"strconv"
	"strings"
	"unsafe"
)

type gstream struct {
	ctx    uint32 // the context that opened it
	path   string
	root   bool
	events []string
}

var (
	gstreams   = map[uint32]*gstream{} // open streams by token
	rootOpened bool                    // grpcstream-root: one stream per VM
	streamMsgs uint32                  // metric id
)

const streamService = "sluice.test.Streamer"

func itoa(r uint32) string { return strconv.Itoa(int(r)) }

// stringValue encodes a google.protobuf.StringValue (short strings).
func stringValue(s string) []byte {
	if s == "" {
		return nil
	}
	return append([]byte{0x0a, byte(len(s))}, s...)
}

func stringValueOf(b []byte) string {
	if len(b) < 2 || b[0] != 0x0a || len(b) < 2+int(b[1]) {
		return ""
	}
	return string(b[2 : 2+int(b[1])])
}

// grpcService encodes an envoy.config.core.v3.GrpcService naming an
// Envoy cluster (envoy_grpc.cluster_name).
func grpcService(cluster string) []byte {
	inner := append([]byte{0x0a, byte(len(cluster))}, cluster...)
	return append([]byte{0x0a, byte(len(inner))}, inner...)
}

func openStream(svc []byte, method string) (uint32, uint32) {
	md := encodePairs("x-from-wasm", "stream")
	service := streamService
	var token uint32
	r := proxyGrpcStream(ptr(svc), uint32(len(svc)), sptr(service), uint32(len(service)),
		sptr(method), uint32(len(method)), ptr(md), uint32(len(md)), unsafe.Pointer(&token))
	return token, r
}

func sendString(token uint32, s string, end bool) uint32 {
	b := stringValue(s)
	e := uint32(0)
	if end {
		e = 1
	}
	return proxyGrpcSend(token, ptr(b), uint32(len(b)), e)
}

// streamRequest starts the scenario of a request path.
func streamRequest(id uint32, path string) uint32 {
	var token, r uint32
	switch path {
	case "/count", "/panic": // server streaming: three messages, then OK
		token, r = openStream(grpcService("grpc_cluster"), "Count")
		if r == resultOk {
			sendString(token, "3", true)
		}
	case "/count-bad": // refused before any message: a trailers-only response
		token, r = openStream(grpcService("grpc_cluster"), "Count")
		if r == resultOk {
			sendString(token, "many", true)
		}
	case "/count-raw": // the cluster named by the raw bytes
		token, r = openStream([]byte("grpc_cluster"), "Count")
		if r == resultOk {
			sendString(token, "2", true)
		}
	case "/chat", "/chat-fail": // bidi: each answer brings the next message
		token, r = openStream(grpcService("grpc_cluster"), "Chat")
		if r == resultOk {
			sendString(token, "a", false)
		}
	case "/hold": // cancelled after its first message
		token, r = openStream(grpcService("grpc_cluster"), "Hold")
		if r == resultOk {
			sendString(token, "x", true)
		}
	case "/down": // a cluster that refuses connections
		token, r = openStream(grpcService("down_cluster"), "Count")
		if r == resultOk {
			sendString(token, "1", true)
		}
	case "/unknown":
		_, r1 := openStream(grpcService("no_such_cluster"), "Count")
		_, r2 := openStream([]byte("no_such_cluster"), "Count")
		addHeader(mapRequestHeaders, "x-stream", "open:"+itoa(r1)+":"+itoa(r2))
		return actionContinue
	case "/misuse":
		token, r = openStream(grpcService("grpc_cluster"), "Chat")
		if r != resultOk {
			break
		}
		res := []uint32{
			sendString(token+1, "x", false),  // a call token: BadArgument
			sendString(token+2, "x", false),  // no such stream: NotFound
			proxyGrpcClose(token),            // Ok: our side ends
			sendString(token, "late", false), // after our end: BadArgument
			proxyGrpcCancel(token),           // Ok
			proxyGrpcCancel(token),           // NotFound
		}
		if _, ok := getHeader(mapGrpcInitial, "content-type"); !ok {
			res = append(res, resultNotFound) // no metadata outside its callback
		}
		s := make([]string, len(res))
		for i, x := range res {
			s[i] = itoa(x)
		}
		addHeader(mapRequestHeaders, "x-stream", "misuse:"+strings.Join(s, ":"))
		return actionContinue
	default:
		return actionContinue
	}
	if r != resultOk {
		addHeader(mapRequestHeaders, "x-stream", "open:"+itoa(r))
		return actionContinue
	}
	gstreams[token] = &gstream{ctx: id, path: path}
	return actionPause
}

// openRootStream runs on the root context's ticks until a stream opens
// (the server may not run the config yet).
func openRootStream(root uint32) {
	if rootOpened {
		return
	}
	token, r := openStream(grpcService("grpc_cluster"), "Count")
	if r != resultOk {
		setShared("root_stream", []byte("open:"+itoa(r)), 0)
		return
	}
	rootOpened = true
	sendString(token, "2", true)
	gstreams[token] = &gstream{ctx: root, root: true}
}

func knownStream(id, token uint32, what string) *gstream {
	st := gstreams[token]
	if st == nil {
		panic(what + " for unknown stream " + itoa(token))
	}
	if st.ctx != id {
		panic(what + " in context " + itoa(id) + " for a stream of context " + itoa(st.ctx))
	}
	return st
}

//go:wasmexport proxy_on_grpc_receive_initial_metadata
func proxyOnGrpcReceiveInitialMetadata(id, token, n uint32) {
	st := knownStream(id, token, "initial metadata")
	ct, ok := getHeader(mapGrpcInitial, "content-type")
	if !ok {
		ct = "-"
	}
	st.events = append(st.events, "im:"+ct)
}

//go:wasmexport proxy_on_grpc_receive_trailing_metadata
func proxyOnGrpcReceiveTrailingMetadata(id, token, n uint32) {
	st := knownStream(id, token, "trailing metadata")
	v, ok := getHeader(mapGrpcTrailing, "x-count")
	if !ok {
		v = "-"
	}
	st.events = append(st.events, "tm:"+v)
}

func streamMessage(id, token, size uint32) {
	st := knownStream(id, token, "message")
	if st.path == "/panic" {
		panic("panic in a grpc stream message")
	}
	msg := stringValueOf(getBuffer(bufGrpcReceive, 0, size))
	st.events = append(st.events, "m:"+msg)
	proxyIncrementMetric(streamMsgs, 1)
	switch {
	case st.path == "/chat" && msg == "A":
		sendString(token, "b", false)
	case st.path == "/chat" && msg == "B":
		st.events = append(st.events, "half:"+itoa(proxyGrpcClose(token)))
	case st.path == "/chat-fail" && msg == "A":
		sendString(token, "fail", false)
	case st.path == "/hold":
		first, second := proxyGrpcCancel(token), proxyGrpcCancel(token)
		st.events = append(st.events, "cancel:"+itoa(first)+":"+itoa(second))
		delete(gstreams, token)
		report(st)
	}
}

func streamClose(id, token, status uint32) {
	st := knownStream(id, token, "close")
	var code, p, n uint32
	msg := ""
	if proxyGetStatus(unsafe.Pointer(&code), unsafe.Pointer(&p), unsafe.Pointer(&n)) == resultOk {
		msg = string(take(p, n))
	}
	st.events = append(st.events, "close:"+itoa(status)+":"+msg)
	// The stream is over: closing forgets it (Ok once, then NotFound).
	first, second := proxyGrpcClose(token), proxyGrpcClose(token)
	st.events = append(st.events, "after:"+itoa(first)+":"+itoa(second))
	delete(gstreams, token)
	report(st)
}

func report(st *gstream) {
	if st.root {
		setShared("root_stream", []byte(strings.Join(st.events, ",")), 0)
		return
	}
	addHeader(mapRequestHeaders, "x-stream", strings.Join(st.events, ","))
	proxyContinueStream(0)
}
