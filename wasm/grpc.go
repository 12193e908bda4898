package wasm

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// gRPC calls (proxy_grpc_call). A unary call is an HTTP/2 POST to
// /<service>/<method> on a cluster, made through the same path as
// proxy_http_call. Its outcome reaches the guest as Envoy delivers a unary
// call's (source/extensions/common/wasm/context.cc, onGrpcReceiveWrapper and
// onGrpcCloseWrapper): an OK call with a response message gets only
// proxy_on_grpc_receive (the message in the GRPC_CALL_MESSAGE buffer);
// anything else gets only proxy_on_grpc_close with the status code, its
// message readable with proxy_get_status during the callback. SDKs rely on
// that: the Rust SDK forgets the call's token in either callback and panics
// on a second one, or on metadata callbacks for a call token.

// gRPC status codes the host produces itself.
const (
	grpcOK                = 0
	grpcCancelled         = 1
	grpcUnknown           = 2
	grpcDeadlineExceeded  = 4
	grpcPermissionDenied  = 7
	grpcResourceExhausted = 8
	grpcUnimplemented     = 12
	grpcInternal          = 13
	grpcUnavailable       = 14
	grpcUnauthenticated   = 16
)

// grpcToken hands out the next gRPC token of the VM. As in Envoy, call
// tokens are odd and stream tokens even, so proxy_grpc_cancel and
// proxy_grpc_close know which kind a token names; none is 0 or in use.
func (v *vm) grpcToken(forStream bool) uint32 {
	for {
		t := v.nextGrpcToken
		v.nextGrpcToken++
		if t == 0 || (t&1 == 0) != forStream {
			continue
		}
		if _, used := v.grpcCalls[t]; used {
			continue
		}
		if _, used := v.grpcStreams[t]; used {
			continue
		}
		return t
	}
}

func isStreamToken(t uint32) bool { return t&1 == 0 }

// grpcCall is an outstanding proxy_grpc_call.
type grpcCall struct {
	f      *filter // the calling stream; nil for the root context
	cancel context.CancelFunc
}

// rootCallTimeout bounds calls from the root context that ask for no
// timeout: nothing else would ever end them.
const rootCallTimeout = 30 * time.Second

// grpcTarget is where a proxy_grpc_call goes.
type grpcTarget struct {
	cluster, authority string
	metadata           []header.Field
	raw                bool // the bytes named the cluster, not a GrpcService
}

// parseGrpcService reads the call's first argument: a serialized
// envoy.config.core.v3.GrpcService naming its cluster (envoy_grpc), or, as
// Envoy accepts when the bytes do not parse as one, the cluster name itself.
func parseGrpcService(b []byte) (grpcTarget, bool) {
	var svc corev3.GrpcService
	if len(b) > 0 && proto.Unmarshal(b, &svc) == nil {
		if eg := svc.GetEnvoyGrpc(); eg.GetClusterName() != "" {
			t := grpcTarget{cluster: eg.GetClusterName(), authority: eg.GetAuthority()}
			for _, hv := range svc.GetInitialMetadata() {
				t.metadata = append(t.metadata, header.Field{Name: lowerName(hv.GetKey()), Value: hv.GetValue()})
			}
			return t, true
		}
	}
	// Not a GrpcService with an Envoy cluster (google_grpc is not
	// supported): the bytes name the cluster.
	name := string(b)
	if name == "" || !utf8.ValidString(name) || strings.ContainsAny(name, "\x00\r\n") {
		return grpcTarget{}, false
	}
	return grpcTarget{cluster: name, raw: true}, true
}

// grpcTimeout formats a grpc-timeout header value (at most 8 digits).
func grpcTimeout(d time.Duration) string {
	if ms := d.Milliseconds(); ms <= 99999999 {
		return strconv.FormatInt(ms, 10) + "m"
	}
	return strconv.FormatInt(min(int64(d/time.Second), 99999999), 10) + "S"
}

// hGrpcCall implements proxy_grpc_call.
func hGrpcCall(v *vm, s []uint64) result {
	svcBytes, ok1 := v.bytes(uint32(s[0]), uint32(s[1]))
	service, ok2 := v.str(uint32(s[2]), uint32(s[3]))
	method, ok3 := v.str(uint32(s[4]), uint32(s[5]))
	mdBytes, ok4 := v.bytes(uint32(s[6]), uint32(s[7]))
	msg, ok5 := v.bytes(uint32(s[8]), uint32(s[9]))
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
		return resultInvalidMemoryAccess
	}
	target, ok := parseGrpcService(svcBytes)
	if !ok {
		// The spec's (and Envoy's) answer for an unknown upstream.
		return resultParseFailure
	}
	md, err := decodePairs(mdBytes)
	if err != nil {
		return resultParseFailure
	}
	f := v.current()
	call := v.p.callout
	if f != nil {
		call = f.caller()
	}
	if call == nil {
		return resultInternalFailure
	}
	timeout := time.Duration(uint32(s[10])) * time.Millisecond

	h := grpcRequestHead(target, service, method, md, timeout)
	body := grpcFrame(msg)

	token := v.grpcToken(false)
	if !v.mem.WriteUint32Le(uint32(s[11]), token) {
		return resultInvalidMemoryAccess
	}

	var (
		ctx    context.Context
		cancel context.CancelFunc
	)
	if f == nil {
		ctx, cancel = context.WithCancel(context.Background())
		if timeout <= 0 {
			timeout = rootCallTimeout
		}
	} else {
		ctx, cancel = context.WithCancel(f.context())
		f.pendingCalls++
	}
	if v.grpcCalls == nil {
		v.grpcCalls = map[uint32]*grpcCall{}
	}
	v.grpcCalls[token] = &grpcCall{f: f, cancel: cancel}
	cluster := target.cluster
	go func() {
		start := time.Now()
		resp, err := call(ctx, cluster, &h, body, timeout)
		code, message, reply := grpcOutcome(resp, err, timeout > 0 && time.Since(start) >= timeout)
		if err != nil {
			v.logger().Debug("wasm: grpc call failed", "plugin", v.p.name, "cluster", cluster, "error", err)
		}
		v.deliverGrpc(token, code, message, reply)
	}()
	return resultOk
}

// grpcRequestHead is the HTTP/2 request head of a gRPC call or stream:
// POST /<service>/<method> with the service's and the guest's metadata;
// grpc-timeout when timeout is set.
func grpcRequestHead(target grpcTarget, service, method string, md []header.Field, timeout time.Duration) header.Map {
	var h header.Map
	h.Add(":method", "POST")
	h.Add(":path", "/"+service+"/"+method)
	authority := target.authority
	if authority == "" {
		authority = target.cluster
	}
	h.Add(":authority", authority)
	h.Add("content-type", "application/grpc")
	h.Add("te", "trailers")
	if timeout > 0 {
		h.Add("grpc-timeout", grpcTimeout(timeout))
	}
	for _, fl := range append(target.metadata, md...) {
		name := lowerName(fl.Name)
		if strings.HasPrefix(name, ":") {
			continue // the call's own pseudo-headers stay
		}
		h.Add(name, fl.Value)
	}
	return h
}

// grpcFrame prefixes a message with its gRPC frame header (not
// compressed, big-endian length).
func grpcFrame(msg []byte) []byte {
	b := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:5], uint32(len(msg)))
	copy(b[5:], msg)
	return b
}

// grpcStatusOf reads grpc-status and grpc-message (percent-decoded) from
// trailers, or the headers of a trailers-only response. A missing status
// is INTERNAL, as for the unary call; one that is not a number UNKNOWN.
func grpcStatusOf(m *header.Map) (uint32, string) {
	raw, ok := m.Get("grpc-status")
	if !ok {
		return grpcInternal, "response without grpc-status"
	}
	n, err := strconv.ParseUint(strings.TrimSpace(raw), 10, 32)
	if err != nil {
		return grpcUnknown, "invalid grpc-status " + strconv.Quote(raw)
	}
	message := m.Value("grpc-message")
	if dec, err := url.PathUnescape(message); err == nil {
		message = dec
	}
	return uint32(n), message
}

// grpcOutcome turns the HTTP exchange of a unary call into its gRPC
// status, status message and response message.
func grpcOutcome(resp *stream.HTTPResponse, err error, timedOut bool) (uint32, string, []byte) {
	if err != nil {
		var ne net.Error
		if timedOut || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			return grpcDeadlineExceeded, "deadline exceeded", nil
		}
		return grpcUnavailable, err.Error(), nil
	}
	if st := resp.Headers.Value(":status"); st != "200" {
		code, _ := strconv.Atoi(st) // not a number: 0, UNKNOWN
		return uint32(proxy.GRPCStatusForHTTP(code)), "http status " + st, nil
	}
	// The status is in the trailers, or in the headers of a trailers-only
	// response.
	src := &resp.Trailers
	if !src.Has("grpc-status") {
		src = &resp.Headers
	}
	if n, message := grpcStatusOf(src); n != grpcOK {
		return n, message, nil
	}
	if ct := resp.Headers.Value("content-type"); !strings.HasPrefix(ct, "application/grpc") {
		return grpcUnknown, "response content-type " + strconv.Quote(ct), nil
	}
	b := resp.Body
	if len(b) < 5 {
		// An OK unary call without a message is a failure for the client,
		// as in Envoy's AsyncRequestImpl.
		return grpcInternal, "response without a message", nil
	}
	if b[0] != 0 {
		return grpcInternal, "compressed response message", nil
	}
	size := binary.BigEndian.Uint32(b[1:5])
	if uint64(size) > uint64(len(b)-5) {
		return grpcInternal, "truncated response message", nil
	}
	return grpcOK, "", append([]byte{}, b[5:5+size]...)
}

// deliverGrpc hands a call's outcome to the context that made it, under
// the VM lock: proxy_on_grpc_receive for an OK call, proxy_on_grpc_close
// otherwise. A call cancelled or closed by the guest, or whose stream or
// VM is gone, is dropped.
func (v *vm) deliverGrpc(token, code uint32, message string, reply []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	c := v.grpcCalls[token]
	if c == nil {
		return
	}
	delete(v.grpcCalls, token)
	c.cancel()
	f := c.f
	if f != nil {
		f.pendingCalls--
	}
	if v.broken.Load() {
		return
	}
	id := v.root
	if f != nil {
		if f.done || v.streams[f.id] != f {
			return
		}
		id = f.id
	}
	v.effective = id
	var err error
	if code == grpcOK {
		v.grpcRecv, v.inGrpcRecv = reply, true
		_, err = v.invoke(v.ex.onGrpcReceive, uint64(id), uint64(token), uint64(len(reply)))
		v.grpcRecv, v.inGrpcRecv = nil, false
	} else {
		v.status, v.statusMsg = code, message
		_, err = v.invoke(v.ex.onGrpcClose, uint64(id), uint64(token), uint64(code))
		v.status, v.statusMsg = 0, ""
	}
	if err != nil {
		v.trapped(err)
		return
	}
	v.flush()
}

// hGrpcCancel ends an outstanding call or a stream of the current
// context; no callback follows (as in Envoy).
func hGrpcCancel(v *vm, s []uint64) result {
	if t := uint32(s[0]); isStreamToken(t) {
		return v.cancelGrpcStream(t)
	}
	return v.endGrpcCall(uint32(s[0]))
}

// hGrpcClose drops an outstanding call like hGrpcCancel; on a stream it
// ends the guest's side (see closeGrpcStream).
func hGrpcClose(v *vm, s []uint64) result {
	if t := uint32(s[0]); isStreamToken(t) {
		return v.closeGrpcStream(t)
	}
	return v.endGrpcCall(uint32(s[0]))
}

func (v *vm) endGrpcCall(token uint32) result {
	c := v.grpcCalls[token]
	if c == nil || c.f != v.current() {
		return resultNotFound
	}
	delete(v.grpcCalls, token)
	c.cancel()
	if c.f != nil {
		c.f.pendingCalls--
	}
	return resultOk
}

// cancelGrpcCalls aborts every outstanding call and stream (the VM is
// going away). Callers hold v.mu.
func (v *vm) cancelGrpcCalls() {
	for token, c := range v.grpcCalls {
		delete(v.grpcCalls, token)
		c.cancel()
	}
	for token, g := range v.grpcStreams {
		v.dropGrpcStream(token, g)
	}
}

// hGetStatus implements proxy_get_status: during proxy_on_grpc_close, the
// call's gRPC status and message; otherwise 0 and nothing.
func hGetStatus(v *vm, s []uint64) result {
	if !v.mem.WriteUint32Le(uint32(s[0]), v.status) {
		return resultInvalidMemoryAccess
	}
	return v.copyOut([]byte(v.statusMsg), uint32(s[1]), uint32(s[2]))
}
