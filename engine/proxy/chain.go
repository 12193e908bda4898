package proxy

import (
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strconv"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// direction is the way data flows through the filter chain.
type direction int

const (
	dirRequest  direction = iota // filters in declaration order
	dirResponse                  // filters in reverse order
)

// chunkSize is how much body one read moves.
const chunkSize = 32 << 10

// phase runs one direction of a stream through the filter chain: headers,
// body (streamed, or buffered when a filter asks) and trailers. Positions
// count filters in the direction's order.
type phase struct {
	s   *activeStream
	dir direction
	n   int  // filters taking part
	end bool // the headers end the stream

	body      *stream.Buffer // the whole body, once a filter asked to buffer
	delivered int            // positions that have seen body
	stoppedAt int            // position of a filter that replied locally

	src       io.Reader      // where more body comes from
	localBody *stream.Buffer // a local reply's complete body

	cc      stream.ClientConn // the upstream: request sink, response source
	replay  *stream.Buffer    // request bytes kept for a retry; nil once too big
	err     error             // the first sink or source error
	srcErr  bool              // err came from the source, not the sink
	srcDone bool              // the source reached its end: replay holds all of it
}

// filter returns the filter at position pos, or nil when it does not take
// part. Request filters are created on first use.
func (p *phase) filter(pos int) stream.Filter {
	s := p.s
	if p.dir == dirRequest {
		if pos >= s.reached {
			s.reached = pos + 1
		}
		return s.filterAt(pos)
	}
	return s.filters[p.n-1-pos]
}

func (p *phase) existing(pos int) stream.Filter {
	if p.dir == dirRequest {
		return p.s.filters[pos]
	}
	return p.s.filters[p.n-1-pos]
}

// call runs one filter callback, turning a panic into a local 500 so a
// broken filter fails its request only.
func (p *phase) call(pos int, fn func() stream.Status) (st stream.Status) {
	s := p.s
	if s.duplex {
		// The request body moves on its own goroutine: filters still see
		// one callback at a time, as on one event loop.
		s.fmu.Lock()
		defer s.fmu.Unlock()
	}
	defer func() {
		if r := recover(); r != nil {
			idx := pos
			if p.dir == dirResponse {
				idx = p.n - 1 - pos
			}
			s.cm.log.Error("filter panicked", "filter", s.cm.filters[idx].name, "panic", fmt.Sprint(r), "stream", s.id, "stack", string(debug.Stack()))
			s.flags |= flagFilterError
			s.cm.stats.filterError.Inc()
			s.sendLocal(500, "filter error\n", "filter_panic")
			st = stream.LocalReply
		}
	}()
	st = s.settle(fn())
	if st == stream.LocalReply && s.pending == nil {
		s.sendLocal(500, "filter error\n", "filter_returned_local_reply_without_reply")
	}
	return st
}

// headers runs the headers through the chain. It returns false when a
// filter replied locally or the body could not be buffered; a local reply
// is then pending.
func (p *phase) headers(h *header.Map) bool {
	s := p.s
	for pos := 0; pos < p.n; pos++ {
		f := p.filter(pos)
		if f == nil {
			continue
		}
		var st stream.Status
		if p.dir == dirRequest {
			st = p.call(pos, func() stream.Status { return f.OnRequestHeaders(h, p.end) })
			if s.routeDirt {
				s.refreshRoute()
			}
		} else {
			st = p.call(pos, func() stream.Status { return f.OnResponseHeaders(h, p.end) })
		}
		switch st {
		case stream.LocalReply:
			p.stoppedAt = pos
			return false
		case stream.StopAndBuffer:
			if p.end {
				continue
			}
			if p.body == nil && !p.bufferAll() {
				p.stoppedAt = pos
				return false
			}
			if !p.deliverBody(pos + 1) {
				return false
			}
		}
	}
	if p.body != nil {
		if !p.deliverBody(p.n) {
			return false
		}
		// Filters may have changed the body; the new length is known.
		h.Set("content-length", strconv.Itoa(p.body.Len()))
	}
	return true
}

// bufferAll reads the rest of the body into p.body.
func (p *phase) bufferAll() bool {
	s := p.s
	if p.localBody != nil {
		p.body = p.localBody
		return true
	}
	b := stream.GetBuffer()
	p.body = b
	err := readAll(b, p.src, s.cm.bufferLimit)
	if err == nil {
		return true
	}
	p.err, p.srcErr = err, true
	switch {
	case errors.Is(err, errBodyTooLarge) && p.dir == dirRequest:
		s.sendLocal(413, "payload too large\n", "request_payload_too_large")
	case errors.Is(err, errBodyTooLarge):
		s.sendLocal(500, "response too large to buffer\n", "response_payload_too_large")
	case p.dir == dirRequest:
		s.flags |= flagDownstreamTerminated
		s.sendLocal(400, "bad request body\n", "downstream_body_error")
	default:
		s.flags |= flagUpstreamReset
		s.sendLocal(502, "upstream reset while reading the body\n", "upstream_reset_in_body")
	}
	return false
}

// deliverBody hands the buffered body to positions [p.delivered, upto).
func (p *phase) deliverBody(upto int) bool {
	for pos := p.delivered; pos < upto; pos++ {
		f := p.existing(pos)
		if f == nil {
			continue
		}
		if st := p.callBody(pos, f, p.body, true); st == stream.LocalReply {
			p.stoppedAt = pos
			return false
		}
	}
	p.delivered = upto
	return true
}

func (p *phase) callBody(pos int, f stream.Filter, b *stream.Buffer, end bool) stream.Status {
	if p.dir == dirRequest {
		return p.call(pos, func() stream.Status { return f.OnRequestBody(b, end) })
	}
	return p.call(pos, func() stream.Status { return f.OnResponseBody(b, end) })
}

// runChunk passes one streamed chunk through positions [from, to). A filter
// that asks to buffer gets the rest of the body appended (each further
// chunk first passing the filters before it) and is called again with the
// whole, so the caller then writes b as the last chunk.
func (p *phase) runChunk(from, to int, b *stream.Buffer, end bool) (stream.Status, bool) {
	for pos := from; pos < to; pos++ {
		f := p.existing(pos)
		if f == nil {
			continue
		}
		switch p.callBody(pos, f, b, end) {
		case stream.LocalReply:
			p.stoppedAt = pos
			return stream.LocalReply, end
		case stream.StopAndBuffer:
			if end {
				continue
			}
			tmp := stream.GetBuffer()
			for !end {
				_, err := tmp.ReadOnce(p.src, chunkSize)
				if err != nil && err != io.EOF {
					stream.PutBuffer(tmp)
					p.err, p.srcErr = err, true
					return stream.StopAndBuffer, false
				}
				end = err == io.EOF
				if st, _ := p.runChunk(0, pos, tmp, end); st == stream.LocalReply {
					stream.PutBuffer(tmp)
					return st, end
				}
				b.Append(tmp.Bytes())
				if b.Len() > p.s.cm.bufferLimit {
					stream.PutBuffer(tmp)
					p.err, p.srcErr = errBodyTooLarge, true
					return stream.StopAndBuffer, false
				}
			}
			stream.PutBuffer(tmp)
			pos-- // call the same filter again with the whole body
		}
	}
	return stream.Continue, end
}

// writeBody sends body bytes to this direction's sink.
func (p *phase) writeBody(b []byte, end bool) error {
	if p.dir == dirRequest {
		if p.replay != nil {
			if p.replay.Len()+len(b) > retryBufferLimit {
				stream.PutBuffer(p.replay)
				p.replay = nil
			} else {
				p.replay.Append(b)
			}
		}
		p.s.reqBytes += int64(len(b))
		return p.cc.WriteRequestBody(b, end)
	}
	p.s.respBytes += int64(len(b))
	return p.s.ss.WriteBody(b, end)
}

func (p *phase) writeTrailers(t *header.Map) error {
	if p.dir == dirRequest {
		return p.cc.WriteRequestTrailers(t)
	}
	return p.s.ss.WriteTrailers(t)
}

// sourceTrailers returns the trailers that followed the body, or nil.
func (p *phase) sourceTrailers() *header.Map {
	var t *header.Map
	switch {
	case p.localBody != nil:
		return nil
	case p.dir == dirRequest:
		t = p.s.ss.RequestTrailers()
	case p.cc != nil:
		t = p.cc.ResponseTrailers()
	}
	if t == nil || t.Len() == 0 {
		return nil
	}
	return t
}

// runTrailers passes trailers through every filter.
func (p *phase) runTrailers(t *header.Map) bool {
	for pos := 0; pos < p.n; pos++ {
		f := p.existing(pos)
		if f == nil {
			continue
		}
		var st stream.Status
		if p.dir == dirRequest {
			st = p.call(pos, func() stream.Status { return f.OnRequestTrailers(t) })
		} else {
			st = p.call(pos, func() stream.Status { return f.OnResponseTrailers(t) })
		}
		if st == stream.LocalReply {
			p.stoppedAt = pos
			return false
		}
	}
	return true
}

// pump moves the body (and trailers) from source to sink through the
// filters. It returns false when it stopped early: p.err says why, or a
// local reply is pending.
func (p *phase) pump() bool {
	if p.body != nil {
		return p.finishBody(p.body)
	}
	if p.end {
		return true
	}
	chunk := stream.GetBuffer()
	defer stream.PutBuffer(chunk)
	for {
		_, err := chunk.ReadOnce(p.src, chunkSize)
		if err != nil && err != io.EOF {
			p.err, p.srcErr = err, true
			return false
		}
		eof := err == io.EOF
		st, eof := p.runChunk(0, p.n, chunk, eof)
		p.srcDone = eof
		if st == stream.LocalReply {
			return false
		}
		if p.err != nil {
			return false
		}
		if !eof && chunk.Len() == 0 {
			continue
		}
		var trailers *header.Map
		if eof {
			trailers = p.sourceTrailers()
		}
		if err := p.writeBody(chunk.Bytes(), eof && trailers == nil); err != nil {
			p.err = err
			return false
		}
		if eof {
			if trailers != nil {
				if !p.runTrailers(trailers) {
					return false
				}
				if err := p.writeTrailers(trailers); err != nil {
					p.err = err
					return false
				}
			}
			return true
		}
	}
}

// finishBody writes a complete body (buffered or a local reply's).
func (p *phase) finishBody(b *stream.Buffer) bool {
	if p.body == nil {
		if st, _ := p.runChunk(0, p.n, b, true); st == stream.LocalReply {
			return false
		}
	}
	trailers := p.sourceTrailers()
	if err := p.writeBody(b.Bytes(), trailers == nil); err != nil {
		p.err = err
		return false
	}
	if trailers != nil {
		if !p.runTrailers(trailers) {
			return false
		}
		if err := p.writeTrailers(trailers); err != nil {
			p.err = err
			return false
		}
	}
	return true
}

// release returns the buffered body to the pool.
func (p *phase) release() {
	if p.body != nil && p.body != p.localBody {
		stream.PutBuffer(p.body)
	}
	p.body = nil
	if p.replay != nil {
		stream.PutBuffer(p.replay)
		p.replay = nil
	}
}
