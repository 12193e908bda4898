package proxy

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/upstream"
)

// failure classifies why an attempt did not produce a response.
type failure int

const (
	failNone failure = iota
	failConnect
	failReset
	failTimeout
	failStatus // a response whose status the retry policy retries
)

// outcome of one attempt.
type outcome int

const (
	outDone  outcome = iota // the stream is finished (response or local reply sent)
	outRetry                // try again
)

// exchange is the upstream part of a stream: attempts, retries, timeouts.
type exchange struct {
	s        *activeStream
	p        *phase
	ra       *config.RouteAction
	cl       *upstream.Cluster
	policy   *config.RetryPolicy
	deadline time.Time // route timeout; zero when none
	attempts int
	max      int
	tried    [4]*upstream.Host
	ntried   int
	last     failure
	retryEnd func()
	sentReq  bool // the request body has been read from downstream once

	staleRetry   bool // the next attempt resends after a stale pooled connection
	staleRetried bool // that happened already for this request

	grpcStatus int    // grpc-status of a trailers-only response head, or -1
	resetCode  uint32 // HTTP/2 error code of the last upstream stream reset

	// pumpDone is closed when the request body pump running beside the
	// response (full duplex) returns; pumpOK is its result.
	pumpDone chan struct{}
	pumpOK   bool
}

// codeRefusedStream is HTTP/2's REFUSED_STREAM: the upstream did not
// process the stream, so it is always safe to send again.
const codeRefusedStream = 7

func randUint32() uint32 { return rand.Uint32() }

func (e *exchange) run() {
	s := e.s
	e.policy = e.ra.RetryPolicy
	if e.policy == nil && s.route.VirtualHost.Config.RetryPolicy != nil {
		e.policy = s.route.VirtualHost.Config.RetryPolicy
	}
	e.max = 1
	if e.policy != nil {
		e.max += int(e.policy.NumRetries)
	}
	timeout := e.ra.Timeout
	if s.grpc {
		// The client's deadline caps the route timeout.
		if t, ok := parseGRPCTimeout(s.req.Value("grpc-timeout")); ok && (timeout <= 0 || t < timeout) {
			timeout = max(t, time.Nanosecond)
		}
	}
	if timeout > 0 {
		e.deadline = s.start.Add(timeout)
	}
	if !e.p.end && e.p.body == nil {
		// Keep the streamed body (up to retryBufferLimit) for a retry, or
		// for resending it when a reused connection turns out stale.
		e.p.replay = stream.GetBuffer()
	}
	defer func() {
		if e.retryEnd != nil {
			e.retryEnd()
		}
	}()

	var hash uint64
	var hasHash bool
	if len(e.ra.HashPolicy) > 0 {
		hash, hasHash = s.route.HashKey(s.req, s.DownstreamRemote().Addr().Unmap().String())
	}
	for {
		e.attempts++
		s.attempts = e.attempts
		lb := &s.lb
		*lb = upstream.LBContext{Hash: hash, HasHash: hasHash, Attempt: e.attempts}
		if e.attempts > 1 && e.policy != nil && e.policy.RetryOtherHosts {
			lb.Exclude = e.triedHost
		}
		host := e.cl.Pick(lb)
		if host == nil && e.cl.OriginalDst() {
			// Not on an ordinary cluster's path: its Pick has a host.
			var err error
			if host, err = s.originalDstHost(e.cl); err != nil {
				s.cm.log.Debug("original destination refused", "err", err, "stream", s.id)
				s.flags |= flagNoHealthyUpstream
				s.sendLocal(503, "no healthy upstream\n", "no_healthy_upstream")
				s.finishLocal(s.reached)
				return
			}
		}
		if host == nil {
			s.flags |= flagNoHealthyUpstream
			s.sendLocal(503, "no healthy upstream\n", "no_healthy_upstream")
			s.finishLocal(s.reached)
			return
		}
		s.host = host
		if s.route.AutoHostRewrite() {
			// A DNS cluster's host carries the name it was resolved from,
			// which Envoy sends (its address is an IP now).
			if name := host.Hostname(); name != "" {
				s.req.Set(":authority", name)
			} else {
				s.req.Set(":authority", host.Address())
			}
		}
		if e.ntried < len(e.tried) {
			e.tried[e.ntried] = host
			e.ntried++
		}
		if e.attempt(host) == outDone {
			return
		}
		if e.staleRetry {
			e.staleRetry = false
			continue // not the upstream's fault: no back-off
		}
		if !e.backoff() {
			e.fail()
			return
		}
	}
}

func (e *exchange) triedHost(h *upstream.Host) bool {
	for _, t := range e.tried[:e.ntried] {
		if t == h {
			return true
		}
	}
	return false
}

// retriable reports whether the policy retries a failure or status.
func (e *exchange) retriable(f failure, status int) bool {
	if e.policy == nil {
		return false
	}
	for _, on := range e.policy.RetryOn {
		switch on {
		case "5xx":
			if f != failStatus || status >= 500 {
				return true
			}
		case "gateway-error":
			if f != failStatus || status == 502 || status == 503 || status == 504 {
				return true
			}
		case "connect-failure":
			if f == failConnect {
				return true
			}
		case "reset", "reset-before-request":
			if f == failReset || f == failTimeout {
				return true
			}
		case "retriable-4xx":
			if f == failStatus && status == 409 {
				return true
			}
		case "refused-stream":
			if f == failReset && e.resetCode == codeRefusedStream {
				return true
			}
		case "cancelled":
			if f == failStatus && e.grpcStatus == grpcCancelled {
				return true
			}
		case "deadline-exceeded":
			if f == failStatus && e.grpcStatus == grpcDeadlineExceeded {
				return true
			}
		case "internal":
			if f == failStatus && e.grpcStatus == grpcInternal {
				return true
			}
		case "resource-exhausted":
			if f == failStatus && e.grpcStatus == grpcResourceExhausted {
				return true
			}
		case "unavailable":
			if f == failStatus && e.grpcStatus == grpcUnavailable {
				return true
			}
		case "retriable-status-codes":
			if f == failStatus {
				for _, c := range e.policy.RetriableStatusCodes {
					if int(c) == status {
						return true
					}
				}
			}
		}
	}
	return false
}

// canRetry reports whether another attempt may be made now, taking a retry
// from the cluster's budget when it may.
func (e *exchange) canRetry(f failure, status int) bool {
	if e.attempts >= e.max || !e.retriable(f, status) || !e.replayable() {
		return false
	}
	if e.retryEnd != nil {
		e.retryEnd()
		e.retryEnd = nil
	}
	done, ok := e.cl.TryStartRetry()
	if !ok {
		e.s.flags |= flagUpstreamOverflow
		return false
	}
	e.retryEnd = done
	e.s.cm.stats.retry.Inc()
	return true
}

// replayable reports whether the request can be sent again: it had no
// body, its body was buffered, it was never sent, or all of it was kept.
func (e *exchange) replayable() bool {
	p := e.p
	return p.end || p.body != nil || !e.sentReq || p.replay != nil && p.srcDone
}

// startPump moves the request body upstream on its own goroutine while
// this one waits for the response.
func (e *exchange) startPump(cc stream.ClientConn) {
	s := e.s
	s.duplex = true
	done := make(chan struct{})
	e.pumpDone = done
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				s.cm.log.Error("request body pump panicked", "panic", fmt.Sprint(r), "stream", s.id, "stack", string(debug.Stack()))
				e.pumpOK = false
				cc.Close()
			}
		}()
		e.pumpOK = e.p.pump()
		if !e.pumpOK && (e.p.srcErr || s.pending != nil) {
			// The request broke on the way in: stop the upstream part,
			// which the response side then sees fail.
			cc.Close()
		}
	}()
}

// joinPump waits for the request body pump. If the exchange ended before
// the client finished sending, the rest of the body is abandoned (HTTP/2:
// discarded, and the stream reset with NO_ERROR once the response is
// complete; HTTP/1: the connection closes).
func (e *exchange) joinPump(cc stream.ClientConn) {
	done := e.pumpDone
	if done == nil {
		return
	}
	select {
	case <-done:
	default:
		if ba, ok := e.s.ss.(stream.BodyAbandoner); ok {
			ba.AbandonBody()
		} else {
			e.s.ss.Reset()
		}
		cc.Close()
		<-done
	}
	e.pumpDone = nil
}

// bodyFailedOut is bodyFailed for a pump that ran beside the response.
func (e *exchange) bodyFailedOut() outcome {
	out, f, _ := e.bodyFailed()
	if out == outDone {
		return outDone
	}
	e.last = f
	if e.canRetry(f, 0) {
		return outRetry
	}
	e.fail()
	return outDone
}

// backoff sleeps Envoy's jittered exponential back-off before a retry; false
// when the route deadline leaves no time.
func (e *exchange) backoff() bool {
	base, limit := 25*time.Millisecond, 250*time.Millisecond
	if e.policy != nil && e.policy.BackoffBase > 0 {
		base = e.policy.BackoffBase
		limit = 10 * base
		if e.policy.BackoffMax > 0 {
			limit = e.policy.BackoffMax
		}
	}
	d := base << min(max(e.attempts-1, 0), 16)
	if d > limit || d <= 0 {
		d = limit
	}
	d = time.Duration(rand.Int64N(int64(d) + 1))
	if !e.deadline.IsZero() && time.Now().Add(d).After(e.deadline) {
		e.last = failTimeout
		return false
	}
	time.Sleep(d)
	return true
}

// fail sends the local reply for the last failure.
func (e *exchange) fail() {
	s := e.s
	switch e.last {
	case failConnect:
		s.flags |= flagUpstreamConnectFailure
		s.sendLocal(503, "upstream connect error or disconnect/reset before headers. reset reason: connection failure\n", "upstream_reset_before_response_started{connection_failure}")
	case failTimeout:
		s.flags |= flagUpstreamTimeout
		s.sendLocal(504, "upstream request timeout\n", "upstream_response_timeout")
	default:
		s.flags |= flagUpstreamReset
		s.sendLocal(503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination\n", "upstream_reset_before_response_started{connection_termination}")
	}
	if e.attempts > 1 {
		s.flags |= flagUpstreamRetryLimit
	}
	s.finishLocal(s.reached)
}

// tryDeadline is when the current attempt must have its response.
func (e *exchange) tryDeadline() time.Time {
	d := e.deadline
	if e.policy != nil && e.policy.PerTryTimeout > 0 {
		t := time.Now().Add(e.policy.PerTryTimeout)
		if d.IsZero() || t.Before(d) {
			d = t
		}
	}
	return d
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// attempt makes one upstream exchange.
func (e *exchange) attempt(host *upstream.Host) outcome {
	s := e.s
	deadline := e.tryDeadline()
	conn, err := host.AcquireFor(deadline, s.downH2)
	if err != nil {
		if errors.Is(err, upstream.ErrPendingOverflow) || errors.Is(err, upstream.ErrConnectionOverflow) {
			s.flags |= flagUpstreamOverflow
			s.cm.stats.overflow.Inc()
			s.sendLocal(503, "upstream overflow\n", "upstream_overflow")
			s.finishLocal(s.reached)
			return outDone
		}
		e.last = failConnect
		if isTimeout(err) && !errors.Is(err, upstream.ErrConnectFailure) {
			e.last = failTimeout
		}
		if e.canRetry(e.last, 0) {
			return outRetry
		}
		e.fail()
		return outDone
	}
	host.RequestStarted()
	defer host.RequestDone()
	e.cl.Stats.RqTotal.Inc()
	reusable := false
	defer func() { conn.Release(reusable) }()
	cc := conn.ClientConn()
	if s.up != nil {
		if !s.up.attach(cc) {
			s.flags |= flagDownstreamTerminated
			return outDone
		}
		defer s.up.detach()
	}
	cc.SetDeadline(deadline)

	defer e.joinPump(cc)

	out, f, status := e.send(cc, conn.Multiplexed())
	if out == outDone {
		return outDone
	}
	if f != failNone && e.pumpDone != nil {
		e.joinPump(cc)
		if !e.pumpOK {
			switch {
			case s.up != nil && s.up.wasReset():
			case errors.Is(e.p.err, stream.ErrBodyAbandoned):
			case s.pending != nil || e.p.srcErr:
				// The request failed on the way in (a filter replied, or
				// the client's body broke) and stopped the upstream.
				return e.bodyFailedOut()
			}
		}
	}
	if f != failNone && s.up != nil && s.up.wasReset() {
		// The client went away: nothing to retry or reply to.
		s.flags |= flagDownstreamTerminated
		return outDone
	}
	if f == failNone {
		// A response head is in s.resp.
		if status >= 500 {
			host.Stats.RqError.Add(1)
		} else {
			host.Stats.RqSuccess.Add(1)
		}
		host.OutlierStatus(status)
		return e.respond(conn, cc, &reusable, status)
	}
	host.Stats.RqError.Add(1)
	if f == failStatus {
		host.OutlierStatus(status)
	}
	if f == failTimeout {
		host.OutlierLocalFailure(true)
		host.Stats.RqTimeout.Add(1)
		if !e.deadline.IsZero() && !time.Now().Before(e.deadline) {
			e.cl.Stats.RqTimeout.Inc()
		} else {
			e.cl.Stats.RqPerTryTimeout.Inc()
		}
	}
	if f == failStatus {
		// Retried status: drop the connection rather than read its body.
		return outRetry
	}
	// A reused keep-alive connection the upstream closed as we wrote is not
	// the upstream failing: try once more on a fresh one.
	// An HTTP/2 upstream that refused the stream (RST_STREAM REFUSED_STREAM,
	// or a GOAWAY below its id) did not process it: the same holds.
	if f == failReset && (conn.Reused() || e.resetCode == codeRefusedStream) && e.replayable() && !e.staleRetried {
		e.attempts-- // not counted as a retry, and done at most once
		e.staleRetried, e.staleRetry = true, true
		return outRetry
	}
	if f == failReset {
		host.OutlierLocalFailure(false)
	}
	e.last = f
	if e.canRetry(f, 0) {
		return outRetry
	}
	e.fail()
	return outDone
}

// send writes the request and reads the response head.
func (e *exchange) send(cc stream.ClientConn, duplex bool) (outcome, failure, int) {
	s := e.s
	p := e.p
	p.cc = cc
	switch {
	case p.end:
		if err := cc.WriteRequestHeaders(s.req, true); err != nil {
			return outRetry, failReset, 0
		}
	case p.body != nil:
		if err := cc.WriteRequestHeaders(s.req, false); err != nil {
			return outRetry, failReset, 0
		}
		if !e.sentReq {
			e.sentReq = true
			if !p.finishBody(p.body) {
				return e.bodyFailed()
			}
		} else if err := writeReplay(cc, p.body, s.ss.RequestTrailers()); err != nil {
			return outRetry, failReset, 0
		}
	case !e.sentReq:
		e.sentReq = true
		if err := cc.WriteRequestHeaders(s.req, false); err != nil {
			return outRetry, failReset, 0
		}
		if duplex {
			// HTTP/2 upstream: the response may start (and a gRPC
			// bidirectional stream needs it to) before the request ends.
			if err := cc.Flush(); err != nil {
				return outRetry, e.classify(err), 0
			}
			e.startPump(cc)
		} else if !p.pump() {
			return e.bodyFailed()
		}
	default:
		if err := cc.WriteRequestHeaders(s.req, false); err != nil {
			return outRetry, failReset, 0
		}
		if err := writeReplay(cc, p.replay, s.ss.RequestTrailers()); err != nil {
			return outRetry, failReset, 0
		}
	}
	if err := cc.Flush(); err != nil {
		return outRetry, e.classify(err), 0
	}
	for {
		s.resp.Reset()
		if err := cc.ReadResponseHeaders(&s.resp); err != nil {
			return outRetry, e.classify(err), 0
		}
		status := statusOf(&s.resp)
		if status >= 200 || status == 101 {
			e.grpcStatus = -1
			if s.grpc {
				e.grpcStatus = grpcStatusOf(&s.resp)
			}
			if e.retriable(failStatus, status) && e.canRetry(failStatus, status) {
				s.cl().RecordResponse(status, time.Since(s.start))
				return outRetry, failStatus, status
			}
			return outRetry, failNone, status
		}
		if status == 100 {
			continue // the codec answered the downstream's Expect itself
		}
		if err := s.ss.WriteInformational(&s.resp); err != nil {
			s.flags |= flagDownstreamTerminated
			return outDone, failNone, 0
		}
	}
}

func (s *activeStream) cl() *upstream.Cluster { return s.cluster }

// bodyFailed handles a request body that could not be moved upstream.
func (e *exchange) bodyFailed() (outcome, failure, int) {
	s, p := e.s, e.p
	if s.pending != nil {
		s.finishLocal(p.stoppedAt)
		return outDone, failNone, 0
	}
	if p.srcErr {
		if errors.Is(p.err, errBodyTooLarge) {
			s.sendLocal(413, "payload too large\n", "request_payload_too_large")
		} else {
			s.flags |= flagDownstreamTerminated
			s.sendLocal(400, "bad request body\n", "downstream_body_error")
		}
		s.finishLocal(s.reached)
		return outDone, failNone, 0
	}
	if p.replay == nil {
		// Part of the body is gone: it cannot be sent again.
		e.max = e.attempts
	}
	return outRetry, e.classify(p.err), 0
}

func (e *exchange) classify(err error) failure {
	if isTimeout(err) {
		return failTimeout
	}
	e.resetCode = 0
	var rst *stream.ErrStreamReset
	if errors.As(err, &rst) {
		e.resetCode = rst.Code
	}
	return failReset
}

// writeReplay sends a kept request body again on a retry.
func writeReplay(cc stream.ClientConn, b *stream.Buffer, trailers *header.Map) error {
	hasTrailers := trailers != nil && trailers.Len() > 0
	if err := cc.WriteRequestBody(b.Bytes(), !hasTrailers); err != nil {
		return err
	}
	if hasTrailers {
		return cc.WriteRequestTrailers(trailers)
	}
	return nil
}

// respond forwards the response whose head is in s.resp.
func (e *exchange) respond(conn *upstream.Conn, cc stream.ClientConn, reusable *bool, status int) outcome {
	s := e.s
	s.firstByte = time.Since(s.start)
	upgrade := status == 101
	stripHopByHop(&s.resp, upgrade)
	s.route.ApplyResponseMutations(&s.resp, e.wc())
	method := s.req.Value(":method")
	end := method == "HEAD" || status == 204 || status == 304 || s.resp.Value("content-length") == "0"
	if re, ok := cc.(stream.ResponseEnder); ok && re.ResponseEnded() {
		end = true
	}
	if upgrade {
		end = false
	}
	rp := phase{s: s, dir: dirResponse, n: s.reached, end: end, src: cc.ResponseBody(), cc: cc}
	defer rp.release()
	s.code = status // response.code for the response filters
	if !rp.headers(&s.resp) {
		if s.pending != nil {
			s.finishLocal(0)
		} else {
			e.last = failReset
			e.fail()
		}
		return outDone
	}
	s.code = statusOf(&s.resp)
	e.cl.RecordResponse(s.code, s.firstByte)
	s.setServer(&s.resp)
	if err := s.ss.WriteHeaders(&s.resp, rp.end && !upgrade); err != nil {
		s.flags |= flagDownstreamTerminated
		return outDone
	}
	s.headSent = true
	if upgrade {
		e.tunnel(conn, cc)
		return outDone
	}
	if rp.pump() {
		*reusable = cc.Reusable()
		return outDone
	}
	switch {
	case s.pending != nil:
		// A filter replied after the head went out: all we can do is reset.
		s.pending = nil
		s.flags |= flagLocalReset
		s.ss.Reset()
	case rp.srcErr && s.grpc && isTimeout(rp.err) && s.downH2:
		// The route timeout (capped by grpc-timeout) ended a gRPC call
		// mid-response: end it as a gRPC server would, with
		// DEADLINE_EXCEEDED in trailers, not with a reset the client
		// would report as INTERNAL.
		s.flags |= flagUpstreamTimeout
		var t header.Map
		t.Add("grpc-status", "4")
		t.Add("grpc-message", "upstream request timeout")
		if s.ss.WriteTrailers(&t) != nil {
			s.ss.Reset()
		}
	case rp.srcErr:
		s.flags |= flagUpstreamReset
		resetDownstream(s.ss, rp.err)
	default:
		s.flags |= flagDownstreamTerminated
	}
	return outDone
}

func (e *exchange) wc() *config.WeightedCluster { return e.s.wc }

// tunnel copies bytes both ways after a 101 until either side closes.
func (e *exchange) tunnel(conn *upstream.Conn, cc stream.ClientConn) {
	s := e.s
	down, err := s.ss.Hijack()
	if err != nil {
		return
	}
	defer down.Close()
	cc.SetDeadline(time.Time{})
	up, err := cc.Hijack()
	if err != nil {
		return
	}
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n, _ := io.Copy(up, down)
		s.reqBytes += n
		closeWrite(up)
	}()
	n, _ := io.Copy(down, up)
	s.respBytes += n
	closeWrite(down)
	wg.Wait()
}

func closeWrite(c io.ReadWriteCloser) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// resetDownstream resets the client's stream after the upstream failed
// mid-response, passing an HTTP/2 upstream's reset code on when the
// downstream speaks HTTP/2 too (HTTP/1: the connection is closed).
func resetDownstream(ss stream.ServerStream, err error) {
	var rst *stream.ErrStreamReset
	if rc, ok := ss.(stream.ResetWithCode); ok && errors.As(err, &rst) && rst.Remote {
		rc.ResetWithCode(rst.Code)
		return
	}
	ss.Reset()
}

// originalDstHost is an ORIGINAL_DST cluster's pooled host for the
// request's downstream connection's original destination (its local
// address as the original_dst listener filter restored it). A destination
// that is the address the connection arrived on (it was not redirected)
// would make the proxy send the request to itself, again and again: it is
// refused, as the TCP proxy does.
func (s *activeStream) originalDstHost(c *upstream.Cluster) (*upstream.Host, error) {
	ci := s.ss.Conn()
	dst := netip.AddrPortFrom(ci.Local.Addr().Unmap(), ci.Local.Port())
	if !dst.IsValid() {
		return nil, fmt.Errorf("proxy: cluster %q: no original destination", c.Name())
	}
	if a := ci.Accepted; a.IsValid() && netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) == dst {
		return nil, fmt.Errorf("proxy: cluster %q: the original destination %s is this listener (not redirected)", c.Name(), dst)
	}
	h, err := c.OriginalDstPooled(dst)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	return h, nil
}
