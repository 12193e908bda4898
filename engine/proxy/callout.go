package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/upstream"
)

// Errors of HTTPCall and OpenStream.
var (
	ErrUnknownCluster    = errors.New("proxy: callout: unknown cluster")
	ErrNoHealthyUpstream = errors.New("proxy: callout: no healthy upstream")
	ErrCalloutTooLarge   = errors.New("proxy: http call: response body over the buffer limit")
)

// HTTPCall implements stream.Callbacks: a request of the filter's own to
// a cluster, on the cluster's pools, counted in its stats.
func (s *activeStream) HTTPCall(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*stream.HTTPResponse, error) {
	return s.cm.httpCall(ctx, cluster, h, body, timeout)
}

func (cm *ConnectionManager) httpCall(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*stream.HTTPResponse, error) {
	return HTTPCall(ctx, cm.clusters, cm.bufferLimit, cluster, h, body, timeout)
}

// HTTPCall makes a request of a filter's own to a cluster of set, outside
// any stream (a Wasm root context's http_call, a timer): as
// Callbacks.HTTPCall, with the response body bounded by bodyLimit.
func HTTPCall(ctx context.Context, set *upstream.Set, bodyLimit int, cluster string, h *header.Map, body []byte, timeout time.Duration) (_ *stream.HTTPResponse, err error) {
	if bodyLimit <= 0 {
		bodyLimit = defaultBufferLimit
	}
	cl := set.Get(cluster)
	if cl == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownCluster, cluster)
	}
	if h.Value(":method") == "" || h.Value(":path") == "" {
		return nil, errors.New("proxy: http call: :method and :path are required")
	}
	if !h.Has(":scheme") {
		scheme := "http"
		if cl.Config().TLS != nil {
			scheme = "https"
		}
		h.Set(":scheme", scheme)
	}
	if !h.Has(":authority") {
		h.Set(":authority", cluster)
	}
	var lb upstream.LBContext
	host := cl.Pick(&lb)
	if host == nil {
		return nil, fmt.Errorf("%w in %q", ErrNoHealthyUpstream, cluster)
	}
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	conn, err := host.AcquireFor(deadline, false)
	if err != nil {
		return nil, fmt.Errorf("proxy: http call to %q: %w", cluster, err)
	}
	host.RequestStarted()
	defer host.RequestDone()
	cl.Stats.RqTotal.Inc()
	reusable := false
	defer func() { conn.Release(reusable) }()
	cc := conn.ClientConn()
	cc.SetDeadline(deadline)
	// The stream's end (or the caller's cancel) aborts the call.
	stop := context.AfterFunc(ctx, func() { cc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() {
		if err != nil {
			host.Stats.RqError.Add(1)
			if ctx.Err() != nil {
				err = fmt.Errorf("proxy: http call to %q: %w", cluster, context.Cause(ctx))
			}
		}
	}()

	if err := cc.WriteRequestHeaders(h, len(body) == 0); err != nil {
		return nil, fmt.Errorf("proxy: http call to %q: %w", cluster, err)
	}
	if len(body) > 0 {
		if err := cc.WriteRequestBody(body, true); err != nil {
			return nil, fmt.Errorf("proxy: http call to %q: %w", cluster, err)
		}
	}
	if err := cc.Flush(); err != nil {
		return nil, fmt.Errorf("proxy: http call to %q: %w", cluster, err)
	}
	resp := &stream.HTTPResponse{}
	for {
		resp.Headers.Reset()
		if err := cc.ReadResponseHeaders(&resp.Headers); err != nil {
			return nil, fmt.Errorf("proxy: http call to %q: %w", cluster, err)
		}
		if st := statusOf(&resp.Headers); st >= 200 || st == 0 {
			break
		}
	}
	status := statusOf(&resp.Headers)
	noBody := h.Value(":method") == "HEAD" || status == 204 || status == 304
	if !noBody {
		buf := stream.GetBuffer()
		defer stream.PutBuffer(buf)
		if err := readAll(buf, cc.ResponseBody(), bodyLimit); err != nil {
			if errors.Is(err, errBodyTooLarge) {
				return nil, fmt.Errorf("%w (%d bytes) from %q", ErrCalloutTooLarge, bodyLimit, cluster)
			}
			return nil, fmt.Errorf("proxy: http call to %q: reading the body: %w", cluster, err)
		}
		resp.Body = append([]byte(nil), buf.Bytes()...)
		if t := cc.ResponseTrailers(); t != nil {
			resp.Trailers.CopyFrom(t)
		}
	}
	if status >= 500 {
		host.Stats.RqError.Add(1)
	} else {
		host.Stats.RqSuccess.Add(1)
	}
	reusable = cc.Reusable()
	return resp, nil
}

// DynamicMetadata implements stream.Callbacks.
func (s *activeStream) DynamicMetadata() *stream.Metadata {
	if s.dynMeta == nil {
		s.dynMeta = &stream.Metadata{}
	}
	return s.dynMeta
}

// FilterState implements stream.Callbacks.
func (s *activeStream) FilterState() *stream.Metadata {
	if s.filterState == nil {
		s.filterState = &stream.Metadata{}
	}
	return s.filterState
}

// RouteMetadata implements stream.Callbacks.
func (s *activeStream) RouteMetadata(ns string) map[string]any {
	if s.route == nil {
		return nil
	}
	return s.route.Config.Metadata[ns]
}

// Logger implements stream.Callbacks.
func (s *activeStream) Logger() *slog.Logger { return s.cm.log }
