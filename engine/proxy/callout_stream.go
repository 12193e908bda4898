package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/upstream"
)

// ErrStreamNeedsHTTP2 is returned by a stream call on a cluster whose
// connection is not multiplexed: a request body sent while the response
// is read needs HTTP/2.
var ErrStreamNeedsHTTP2 = errors.New("proxy: stream call: the cluster does not speak HTTP/2 (protocol http2 is required)")

// errCalloutClosed is what a closed CalloutStream's sides return.
var errCalloutClosed = errors.New("proxy: stream call: closed")

// streamAcquireTimeout bounds the wait for a stream of the cluster's pool
// when the caller's context sets no deadline (a pool at its limits would
// otherwise hold the call forever).
const streamAcquireTimeout = 30 * time.Second

// OpenStream implements stream.StreamCaller: a streaming call of the
// filter's own, ended by the stream's end at the latest.
func (s *activeStream) OpenStream(ctx context.Context, cluster string, h *header.Map) (stream.CalloutStream, error) {
	cs, err := OpenStream(ctx, s.cm.clusters, cluster, h)
	if err != nil {
		return nil, err
	}
	return cs, nil
}

// CalloutStream is a streaming exchange of a filter's own with a cluster
// (stream.CalloutStream): one stream of the cluster's HTTP/2 pool, counted
// in the cluster's and host's request stats, with the request body sent
// while the response is read (as the proxy's full-duplex exchange does).
type CalloutStream struct {
	ctx     context.Context
	cl      *upstream.Cluster
	cluster string
	h       header.Map

	once sync.Once // connect
	err  error     // connect's outcome

	mu     sync.Mutex
	closed bool
	host   *upstream.Host
	conn   *upstream.Conn
	cc     stream.ClientConn // set once by connect, never cleared
	stop   func() bool       // unregisters the ctx watch

	resp header.Map // receive side only
}

var _ stream.CalloutStream = (*CalloutStream)(nil)

// OpenStream starts a streaming call to a cluster of set (a gRPC stream
// of a Wasm filter, from a stream or a root context). h needs :method and
// :path; :scheme and :authority default as for HTTPCall. It only checks
// the cluster and the head: the first Send or ResponseHeaders takes a
// stream of the cluster's HTTP/2 pool and sends the head. The end of ctx
// resets the stream and frees it.
func OpenStream(ctx context.Context, set *upstream.Set, cluster string, h *header.Map) (*CalloutStream, error) {
	var cl *upstream.Cluster
	if set != nil {
		cl = set.Get(cluster)
	}
	if cl == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownCluster, cluster)
	}
	if h.Value(":method") == "" || h.Value(":path") == "" {
		return nil, errors.New("proxy: stream call: :method and :path are required")
	}
	s := &CalloutStream{ctx: ctx, cl: cl, cluster: cluster}
	s.h.CopyFrom(h)
	if !s.h.Has(":scheme") {
		scheme := "http"
		if cl.Config().TLS != nil {
			scheme = "https"
		}
		s.h.Set(":scheme", scheme)
	}
	if !s.h.Has(":authority") {
		s.h.Set(":authority", cluster)
	}
	return s, nil
}

// connect takes a stream of the pool and sends the request head, once;
// both sides call it first and get its outcome.
func (s *CalloutStream) connect() error {
	s.once.Do(func() { s.err = s.dial() })
	return s.err
}

func (s *CalloutStream) dial() error {
	if s.ctx.Err() != nil {
		return s.wrap(s.ctx.Err())
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return s.wrap(errCalloutClosed)
	}
	var lb upstream.LBContext
	host := s.cl.Pick(&lb)
	if host == nil {
		return fmt.Errorf("%w in %q", ErrNoHealthyUpstream, s.cluster)
	}
	deadline := time.Now().Add(streamAcquireTimeout)
	ctxDeadline, hasDeadline := s.ctx.Deadline()
	if hasDeadline && ctxDeadline.Before(deadline) {
		deadline = ctxDeadline
	}
	// downstreamHTTP2: a cluster with protocol "downstream" takes the
	// multiplexed pool, the only one a stream call can use.
	conn, err := host.AcquireFor(deadline, true)
	if err != nil {
		return s.wrap(err)
	}
	if !conn.Multiplexed() {
		conn.Release(false)
		return fmt.Errorf("%w: cluster %q", ErrStreamNeedsHTTP2, s.cluster)
	}
	cc := conn.ClientConn()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Release(false)
		return s.wrap(errCalloutClosed)
	}
	s.host, s.conn, s.cc = host, conn, cc
	host.RequestStarted()
	s.cl.Stats.RqTotal.Inc()
	// The caller's end (a cancelled call, the stream or VM gone) resets it.
	s.stop = context.AfterFunc(s.ctx, func() { s.Close() })
	s.mu.Unlock()

	if hasDeadline {
		cc.SetDeadline(ctxDeadline)
	}
	if err := cc.WriteRequestHeaders(&s.h, false); err != nil {
		return s.wrap(err)
	}
	if err := cc.Flush(); err != nil {
		return s.wrap(err)
	}
	return nil
}

// wrap names the call in an error; once the caller's context ended, its
// cause is the error (the stream's own failure is a consequence).
func (s *CalloutStream) wrap(err error) error {
	if s.ctx.Err() != nil {
		err = context.Cause(s.ctx)
	}
	return fmt.Errorf("proxy: stream call to %q: %w", s.cluster, err)
}

// Send implements stream.CalloutStream.
func (s *CalloutStream) Send(p []byte, end bool) error {
	if err := s.connect(); err != nil {
		return err
	}
	if err := s.cc.WriteRequestBody(p, end); err != nil {
		return s.wrap(err)
	}
	return nil
}

// ResponseHeaders implements stream.CalloutStream. Interim 1xx heads are
// skipped.
func (s *CalloutStream) ResponseHeaders() (*header.Map, bool, error) {
	if err := s.connect(); err != nil {
		return nil, false, err
	}
	for {
		s.resp.Reset()
		if err := s.cc.ReadResponseHeaders(&s.resp); err != nil {
			return nil, false, s.wrap(err)
		}
		if st := statusOf(&s.resp); st >= 200 || st == 0 {
			break
		}
	}
	ended := false
	if re, ok := s.cc.(stream.ResponseEnder); ok {
		ended = re.ResponseEnded()
	}
	return &s.resp, ended, nil
}

// Read implements stream.CalloutStream.
func (s *CalloutStream) Read(p []byte) (int, error) {
	if err := s.connect(); err != nil {
		return 0, err
	}
	n, err := s.cc.ResponseBody().Read(p)
	if err != nil && err != io.EOF {
		err = s.wrap(err)
	}
	return n, err
}

// ResponseTrailers implements stream.CalloutStream.
func (s *CalloutStream) ResponseTrailers() *header.Map {
	if s.connect() != nil {
		return &header.Map{}
	}
	return s.cc.ResponseTrailers()
}

// Close implements stream.CalloutStream: the pool's stream is released
// (reset unless the exchange completed both ways) and counted.
func (s *CalloutStream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	cc, stop := s.cc, s.stop
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	if cc == nil {
		return nil // never connected, or connect will see closed
	}
	complete := cc.Reusable()
	// Counted before the release: a reset reaches the upstream at release,
	// and whoever saw it must find the stream already counted as done.
	s.host.RequestDone()
	if complete {
		s.host.Stats.RqSuccess.Add(1)
	} else {
		s.host.Stats.RqError.Add(1)
	}
	s.conn.Release(complete)
	s.conn = nil
	return nil
}
