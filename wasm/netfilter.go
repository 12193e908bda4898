package wasm

// Proxy-wasm network filters (Envoy's envoy.filters.network.wasm): one
// stream context per proxied TCP connection, on the same plugins, VM pools
// and fail policy as the HTTP filter.
//
// Per connection, as Envoy calls them:
//   - proxy_on_context_create, then proxy_on_new_connection, before the
//     upstream is connected;
//   - proxy_on_downstream_data (bytes from the client, buffer
//     DOWNSTREAM_DATA) and proxy_on_upstream_data (bytes from the upstream,
//     buffer UPSTREAM_DATA), readable and writable with
//     proxy_get_buffer_bytes / proxy_set_buffer_bytes during the callback
//     (Envoy's start/length rules); after the upstream's last bytes,
//     proxy_on_upstream_connection_close(UNKNOWN), as Envoy calls it;
//   - when the connection has ended: proxy_on_upstream_connection_close
//     (if it was not called yet), proxy_on_downstream_connection_close
//     (LOCAL when the guest closed it, REMOTE when the client ended it,
//     UNKNOWN otherwise), then proxy_on_done, proxy_on_log,
//     proxy_on_delete.
//
// How the guest's actions map onto the network filter contract
// (engine/stream/network.go):
//   - Continue passes the bytes (or the new connection) on.
//   - Pause on data holds them: the next bytes are appended and the guest
//     is called again with the whole (data_size grows), as in Envoy. When
//     the guest paused the downstream with an http or gRPC call of its own
//     in flight, the callback instead waits (the contract lets a filter
//     block; only this connection waits) until the guest calls
//     proxy_continue_stream(DOWNSTREAM) or proxy_close_stream, or its
//     calls are all answered (then the bytes are held as above).
//   - Pause from proxy_on_new_connection waits the same way while a call
//     is in flight; with none it lets the connection go on (Envoy waits
//     for the first bytes; here the upstream is connected at once, and
//     the data callbacks still decide what passes).
//   - proxy_close_stream(DOWNSTREAM or UPSTREAM) closes the connection,
//     both sides (Envoy closes the downstream connection either way, and
//     tcp_proxy the upstream with it); the bytes of the current callback
//     are not forwarded. proxy_continue_stream(DOWNSTREAM) resumes a
//     waiting callback; on bytes merely held it has no effect (the
//     contract cannot push held bytes without new ones).
//     proxy_continue_stream(UPSTREAM) is UNIMPLEMENTED, as in Envoy.
//     HTTP stream types, proxy_send_local_response, header maps and
//     proxy_clear_route_cache do nothing on a connection (Envoy: OK, or
//     NOT_FOUND for maps).
//   - http and gRPC calls go through the plugin's Callout and
//     StreamCallout (the running config's clusters) and end with the
//     connection.
//   - A trap fails the connection by the plugin's policy: closed
//     (fail_open false) or passed through untouched from then on
//     (fail_open); the VM is replaced. Other connections bound to the same
//     VM lose their guest state with it and fail the same way at their
//     next callback, as in Envoy.

import (
	"context"

	"github.com/sluice-proxy/sluice/engine/stream"
)

// NetworkFactory makes the per-connection filters of one compiled Wasm
// network filter config.
type NetworkFactory struct{ p *plugin }

// NewNetworkFilter implements stream.NetworkFactory. The connection binds
// to a VM in OnNewConnection.
func (f *NetworkFactory) NewNetworkFilter(cb stream.NetworkCallbacks) stream.NetworkFilter {
	n := &netFilter{nc: cb}
	n.p, n.net = f.p, n
	return n
}

// Close frees the factory's VMs now instead of when it is collected.
func (f *NetworkFactory) Close() { f.p.close() }

// netFilter is one connection's proxy-wasm stream context. The embedded
// filter is the context the VM knows (id, VM binding, calls in flight,
// the data buffer during a callback); its HTTP methods are never called.
type netFilter struct {
	filter
	nc    stream.NetworkCallbacks
	state stream.Metadata // proxy_set_property values

	// Guarded by v.mu.
	closing    bool // the guest asked to close the connection
	closed     bool // nc.Close was called
	downEnded  bool // the client ended its side
	upReported bool // proxy_on_upstream_connection_close was called
}

// Directions of data callbacks.
const (
	netDown = iota
	netUp
)

// OnNewConnection implements stream.NetworkFilter: the context is
// created, then proxy_on_new_connection.
func (n *netFilter) OnNewConnection() stream.NetworkStatus {
	if n.passThrough.Load() {
		return stream.NetworkContinue
	}
	v := n.lockVM()
	if v == nil {
		return n.fail()
	}
	defer v.mu.Unlock()
	action, ok := n.call(v, v.ex.onNewConnection, uint64(n.id))
	if !ok {
		return n.fail()
	}
	return n.outcome(v, action, netDown, true)
}

// OnDownstreamData implements stream.NetworkFilter.
func (n *netFilter) OnDownstreamData(b *stream.Buffer, end bool) stream.NetworkStatus {
	return n.data(netDown, b, end)
}

// OnUpstreamData implements stream.NetworkFilter.
func (n *netFilter) OnUpstreamData(b *stream.Buffer, end bool) stream.NetworkStatus {
	return n.data(netUp, b, end)
}

// data runs proxy_on_downstream_data or proxy_on_upstream_data with b as
// the direction's buffer.
func (n *netFilter) data(dir int, b *stream.Buffer, end bool) stream.NetworkStatus {
	if n.passThrough.Load() {
		return stream.NetworkContinue
	}
	v := n.lockVM()
	if v == nil {
		return n.fail()
	}
	defer v.mu.Unlock()
	e, t := v.ex.onDownstreamData, uint32(bufferDownstreamData)
	if dir == netUp {
		e, t = v.ex.onUpstreamData, bufferUpstreamData
	}
	n.body, n.bodyType = b, t
	action, ok := n.call(v, e, uint64(n.id), uint64(b.Len()), b2u(end))
	if !ok {
		n.body = nil
		return n.fail()
	}
	st := n.outcome(v, action, dir, false)
	n.body = nil
	if end && dir == netDown {
		n.downEnded = true
	}
	if !end || dir == netDown || st != stream.NetworkContinue {
		return st
	}
	// As Envoy: the upstream's end of stream is its close.
	n.upReported = true
	if _, ok := n.call(v, v.ex.onUpstreamClose, uint64(n.id), peerUnknown); !ok {
		return n.fail()
	}
	if n.closing {
		return n.closeNow()
	}
	return st
}

// OnClose implements stream.NetworkFilter: the close callbacks not made
// yet, then the context ends (proxy_on_done, proxy_on_log,
// proxy_on_delete).
func (n *netFilter) OnClose() {
	v := n.v
	if v == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	n.done = true
	if v.broken.Load() || v.streams[n.id] != &n.filter {
		return
	}
	if !n.upReported {
		n.upReported = true
		if _, ok := n.call(v, v.ex.onUpstreamClose, uint64(n.id), peerUnknown); !ok {
			return
		}
	}
	peer := uint64(peerUnknown)
	switch {
	case n.closing:
		peer = peerLocal
	case n.downEnded:
		peer = peerRemote
	}
	if _, ok := n.call(v, v.ex.onDownstreamClose, uint64(n.id), peer); !ok {
		return
	}
	n.finish(v)
}

// call runs one callback of the context; false when the guest trapped
// (the VM is then discarded). Callers hold v.mu.
func (n *netFilter) call(v *vm, e export, args ...uint64) (uint32, bool) {
	n.inCallback = true
	v.effective = n.id
	action, err := v.invoke(e, args...)
	if err != nil {
		n.inCallback = false
		v.trapped(err)
		return 0, false
	}
	v.flush()
	n.inCallback = false
	return uint32(action), true
}

// outcome turns the guest's action, and what it asked for during the
// callback, into the chain's status (see the top of the file). Callers
// hold v.mu.
func (n *netFilter) outcome(v *vm, action uint32, dir int, start bool) stream.NetworkStatus {
	cont := n.pendingContinue && dir == netDown
	n.pendingContinue = false
	switch {
	case n.closing:
		return n.closeNow()
	case action == actionContinue || cont:
		return stream.NetworkContinue
	}
	if dir == netDown && n.pendingCalls > 0 {
		n.wait(v)
		cont := n.pendingContinue
		n.pendingContinue = false
		switch {
		case v.broken.Load():
			return n.fail()
		case n.closing:
			return n.closeNow()
		case cont:
			return stream.NetworkContinue
		case n.nc.Context().Err() != nil:
			return stream.NetworkStopIteration // the connection is gone
		}
		// Every call was answered and the guest did not continue: the
		// pause stands.
	}
	if start {
		return stream.NetworkContinue
	}
	return stream.NetworkStopIteration
}

// wait blocks, with v.mu released, until the guest continues or closes
// the connection, its calls are all answered, the VM breaks or the
// connection ends. Callers hold v.mu.
func (n *netFilter) wait(v *vm) {
	ctx := n.nc.Context()
	n.waiting = true
	v.netWaiting++
	stop := context.AfterFunc(ctx, func() {
		v.mu.Lock()
		v.cond.Broadcast()
		v.mu.Unlock()
	})
	for !n.pendingContinue && !n.closing && n.pendingCalls > 0 && !v.broken.Load() && ctx.Err() == nil {
		v.cond.Wait()
	}
	stop()
	v.netWaiting--
	n.waiting = false
}

// fail applies the fail policy to a connection whose VM failed: it passes
// untouched from now on (fail_open), or it is closed.
func (n *netFilter) fail() stream.NetworkStatus {
	n.passThrough.Store(true) // the guest is out either way
	if n.p.failOpen {
		return stream.NetworkContinue
	}
	n.nc.Close()
	return stream.NetworkStopIteration
}

// closeNow closes the connection the guest asked to close. Callers hold
// v.mu.
func (n *netFilter) closeNow() stream.NetworkStatus {
	if !n.closed {
		n.closed = true
		n.nc.Close()
	}
	return stream.NetworkStopIteration
}

// flushed applies, after another context's callback, what it asked of
// this connection (vm.flush): a close at once; a continue wakes a waiting
// callback (the broadcast that ends flush), and is dropped otherwise.
// Callers hold v.mu.
func (n *netFilter) flushed() {
	if n.closing {
		n.closeNow()
	}
	if !n.waiting {
		n.pendingContinue = false
	}
}

// continueStream is proxy_continue_stream on a connection.
func (n *netFilter) continueStream(t uint32) result {
	switch t {
	case streamDownstream:
		n.pendingContinue = true
		n.v.dirty = append(n.v.dirty, &n.filter)
		return resultOk
	case streamUpstream:
		return resultUnimplemented // as Envoy
	case streamRequest, streamResponse:
		return resultOk // no HTTP stream: nothing to do, as Envoy
	}
	return resultBadArgument
}

// closeStream is proxy_close_stream on a connection.
func (n *netFilter) closeStream(t uint32) result {
	switch t {
	case streamDownstream, streamUpstream:
		n.closing = true
		n.v.dirty = append(n.v.dirty, &n.filter)
		return resultOk
	case streamRequest, streamResponse:
		return resultOk // as continueStream
	}
	return resultBadArgument
}
