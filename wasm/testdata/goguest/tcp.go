//go:build wasip1

// Network (TCP) modes. Every mode counts the downstream bytes it lets
// through in the counter goguest_tcp_bytes_total and records each
// connection's first callbacks, which proxy_on_delete leaves in shared
// data "tcp_events" (the last connection's).
//
//   - tcp-upper: upper-cases the client's bytes.
//   - tcp-hold: holds the client's bytes until a newline arrives, then
//     lets them all through.
//   - tcp-deny: closes a connection whose first bytes are not the
//     prefix=... option (default "HELLO"); once they were, passes all.
//   - tcp-trap: panics on client bytes containing "trap".
//   - tcp-call: pauses the new connection on an http_call to auth_cluster
//     (GET /tcp-check); 200 continues it, anything else closes it.
//   - tcp-call-data: the same on the first client bytes (sent as the
//     call's body).
//   - tcp-props: reads properties and tries HTTP-only calls on the new
//     connection (shared data "tcp_props"), and wraps the upstream's
//     bytes in "<" and ">" (prepend, then append).
//   - tcp-grpcstream: opens a gRPC stream to grpc_cluster on the new
//     connection (its result in the events).
package main

import (
	"bytes"
	"encoding/binary"
	"strings"
	"unsafe"
)

const (
	bufDownstreamData = 2
	bufUpstreamData   = 3

	streamDownstream = 2
	streamUpstream   = 3
)

var (
	tcpBytes uint32 // metric id
	// Per connection context.
	tcpEvents  = map[uint32][]string{}
	tcpChecked = map[uint32]bool{}
)

// tcpEvent records a callback of a connection (the first 32: a long
// connection must not grow the guest's memory without end).
func tcpEvent(id uint32, e string) {
	if ev := tcpEvents[id]; len(ev) < 32 {
		tcpEvents[id] = append(ev, e)
	}
}

func isTCP() bool { return strings.HasPrefix(mode, "tcp-") }

//go:wasmexport proxy_on_new_connection
func proxyOnNewConnection(id uint32) uint32 {
	tcpEvent(id, "new")
	switch mode {
	case "tcp-call":
		if r := tcpCall(id, nil); r != resultOk {
			tcpEvent(id, "call-failed:"+itoa(r))
			return actionContinue
		}
		return actionPause
	case "tcp-props":
		tcpProps()
	case "tcp-grpcstream":
		token, r := openStream(grpcService("grpc_cluster"), "Count")
		tcpEvent(id, "stream:"+itoa(r)+":"+itoa(token))
		if r == resultOk {
			proxyGrpcCancel(token)
		}
	}
	return actionContinue
}

func tcpCall(id uint32, body []byte) uint32 {
	h := encodePairs(":method", "GET", ":path", "/tcp-check", ":authority", "auth")
	up := "auth_cluster"
	var token uint32
	return proxyHTTPCall(sptr(up), uint32(len(up)), ptr(h), uint32(len(h)), ptr(body), uint32(len(body)), nil, 0, 1000, unsafe.Pointer(&token))
}

// tcpCallResponse ends tcp-call's pause.
func tcpCallResponse(id, bodySize uint32) {
	status, _ := getHeader(mapCallResponseHeaders, ":status")
	tcpEvent(id, "call:"+status)
	if status == "200" {
		tcpEvent(id, "continue:"+itoa(proxyContinueStream(streamDownstream)))
		return
	}
	proxyCloseStream(streamDownstream)
}

//go:wasmexport proxy_on_downstream_data
func proxyOnDownstreamData(id, size, end uint32) uint32 {
	tcpEvent(id, "down:"+itoa(size)+":"+itoa(end))
	data := getBuffer(bufDownstreamData, 0, size)
	action := uint32(actionContinue)
	switch mode {
	case "tcp-upper":
		setBuffer(bufDownstreamData, bytes.ToUpper(data))
	case "tcp-hold":
		if bytes.IndexByte(data, '\n') < 0 && end == 0 {
			action = actionPause
		}
	case "tcp-deny":
		if !tcpChecked[id] {
			prefix := opts["prefix"]
			if prefix == "" {
				prefix = "HELLO"
			}
			switch {
			case bytes.HasPrefix(data, []byte(prefix)):
				tcpChecked[id] = true
			case len(data) < len(prefix) && strings.HasPrefix(prefix, string(data)) && end == 0:
				action = actionPause // too few bytes to tell
			default:
				tcpEvent(id, "deny")
				proxyCloseStream(streamDownstream)
				return actionPause
			}
		}
	case "tcp-trap":
		if bytes.Contains(data, []byte("trap")) {
			panic("tcp trap")
		}
	case "tcp-call-data":
		if !tcpChecked[id] {
			tcpChecked[id] = true
			if r := tcpCall(id, data); r != resultOk {
				tcpEvent(id, "call-failed:"+itoa(r))
				return actionContinue
			}
			return actionPause
		}
	}
	if action == actionContinue {
		var n uint32
		proxyGetBufferStatus(bufDownstreamData, unsafe.Pointer(&n), unsafe.Pointer(new(uint32)))
		proxyIncrementMetric(tcpBytes, int64(n))
	}
	return action
}

//go:wasmexport proxy_on_upstream_data
func proxyOnUpstreamData(id, size, end uint32) uint32 {
	tcpEvent(id, "up:"+itoa(size)+":"+itoa(end))
	if mode == "tcp-props" && size > 0 {
		open, close := "<", ">"
		proxySetBufferBytes(bufUpstreamData, 0, 0, sptr(open), 1)       // prepend
		proxySetBufferBytes(bufUpstreamData, size+1, 0, sptr(close), 1) // append
		r := proxySetBufferBytes(bufUpstreamData, 1, 1, sptr(close), 1) // a splice: refused
		tcpEvent(id, "splice:"+itoa(r))
	}
	return actionContinue
}

//go:wasmexport proxy_on_downstream_connection_close
func proxyOnDownstreamConnectionClose(id, peer uint32) { tcpEvent(id, "downclose:"+itoa(peer)) }

//go:wasmexport proxy_on_upstream_connection_close
func proxyOnUpstreamConnectionClose(id, peer uint32) { tcpEvent(id, "upclose:"+itoa(peer)) }

// tcpDone runs in proxy_on_log and proxy_on_delete of a connection.
func tcpDone(id uint32, what string) {
	if !isTCP() {
		return
	}
	tcpEvent(id, what)
	if what == "delete" {
		setShared("tcp_events", []byte(strings.Join(tcpEvents[id], ",")), 0)
		delete(tcpEvents, id)
		delete(tcpChecked, id)
	}
}

// tcpProps records what a connection context can read and do.
func tcpProps() {
	var out []string
	prop := func(path ...string) {
		v, r := getProperty(path...)
		s := string(v)
		if len(v) == 8 && (path[0] == "connection_id" || path[len(path)-1] == "port") {
			s = itoa(uint32(binary.LittleEndian.Uint64(v)))
		}
		out = append(out, strings.Join(path, ".")+"="+itoa(r)+":"+s)
	}
	prop("source", "address")
	prop("destination", "port")
	prop("upstream", "address")
	prop("connection_id")
	prop("plugin_name")
	prop("request", "path")
	k, val := "my_prop", "v1"
	proxySetProperty(sptr(k), uint32(len(k)), sptr(val), uint32(len(val)))
	prop("my_prop")
	_, r := call(func(p, n unsafe.Pointer) uint32 {
		k := ":path"
		return proxyGetHeaderMapValue(mapRequestHeaders, sptr(k), uint32(len(k)), p, n)
	})
	out = append(out, "header="+itoa(r))
	out = append(out, "local="+itoa(proxySendLocalResponse(403, nil, 0, nil, 0, nil, 0, -1)))
	out = append(out, "continue-up="+itoa(proxyContinueStream(streamUpstream)))
	out = append(out, "continue-req="+itoa(proxyContinueStream(0)))
	out = append(out, "close-bad="+itoa(proxyCloseStream(9)))
	setShared("tcp_props", []byte(strings.Join(out, ",")), 0)
}
