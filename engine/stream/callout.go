package stream

import (
	"context"

	"github.com/sluice-proxy/sluice/engine/header"
)

// CalloutStream is a streaming exchange of a filter's own with a cluster
// (behind proxy-wasm's gRPC streams): the request body goes up piece by
// piece while the response comes back, so either side may lead.
//
// The send side (Send) and the receive side (ResponseHeaders, Read,
// ResponseTrailers) may each run on a goroutine of its own; neither is
// safe for concurrent use with itself. Close may be called from any
// goroutine at any time and unblocks both sides.
type CalloutStream interface {
	// Send writes p as the next piece of the request body; end ends the
	// request (a half-close). The first call of either side connects. It
	// blocks while the upstream's flow-control windows are closed.
	Send(p []byte, end bool) error
	// ResponseHeaders waits for the final response head (":status"
	// first). ended reports that the head also ended the response: no
	// body and no trailers follow (a gRPC trailers-only response).
	ResponseHeaders() (h *header.Map, ended bool, err error)
	// Read reads the response body; io.EOF at its end.
	Read(p []byte) (int, error)
	// ResponseTrailers holds the response trailers once Read returned
	// io.EOF; it may be empty.
	ResponseTrailers() *header.Map
	// Close ends the exchange and frees it: an exchange not complete both
	// ways is reset. It is idempotent.
	Close() error
}

// StreamCaller is implemented by Callbacks that open streaming calls (the
// proxy's streams do): a filter type-asserts its Callbacks to it.
type StreamCaller interface {
	// OpenStream checks the cluster and the request head h (which needs
	// :method, :path and :authority) and returns at once, without network
	// I/O: the first Send or ResponseHeaders connects. The end of ctx
	// resets the stream.
	OpenStream(ctx context.Context, cluster string, h *header.Map) (CalloutStream, error)
}
