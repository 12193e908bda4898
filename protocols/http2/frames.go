package http2

import (
	"time"

	"golang.org/x/net/http2"
)

const (
	// maxOutBuffered bounds the encoded frames waiting for the writer:
	// stream writers wait for room above it, so a client that reads slowly
	// holds the handlers back instead of growing memory. Control frames
	// are exempt (the reader never blocks) and bounded by count instead.
	maxOutBuffered = 256 << 10
	// keepSpareCap is the largest write buffer kept between writes.
	keepSpareCap = 1 << 20
	// closeFlushTimeout bounds flushing the last frames (a GOAWAY) of a
	// closing connection.
	closeFlushTimeout = time.Second
)

// outBuffer collects encoded frames; the Framer writes into it under
// serverConn.mu and the writer goroutine sends it.
type outBuffer struct{ b []byte }

func (o *outBuffer) Write(p []byte) (int, error) {
	o.b = append(o.b, p...)
	return len(p), nil
}

// writeLoop is the connection's only writer: it sends whatever frames
// accumulated while it was busy in one write, so frames of many streams
// batch into few syscalls and never interleave mid-frame. It exits once
// the connection is closing and everything was flushed, or a write fails.
func (sc *serverConn) writeLoop() {
	defer close(sc.writerDone)
	var spare []byte
	for {
		sc.mu.Lock()
		for len(sc.out.b) == 0 && !sc.closing {
			sc.writerIdle = true
			sc.writeCond.Wait()
		}
		sc.writerIdle = false
		if len(sc.out.b) == 0 {
			sc.mu.Unlock()
			// Flushed and closing: wake the reader, which finishes the
			// teardown.
			sc.conn.SetReadDeadline(aLongTimeAgo)
			return
		}
		buf := sc.out.b
		sc.out.b = spare[:0]
		ctrl := sc.ctrlQueued
		closing := sc.closing
		sc.mu.Unlock()

		sc.armWriteDeadline(closing)
		_, err := sc.conn.Write(buf)
		if cap(buf) <= keepSpareCap {
			spare = buf[:0]
		} else {
			spare = nil
		}

		sc.mu.Lock()
		sc.ctrlQueued -= ctrl
		if err != nil {
			sc.werr = err
		}
		sc.sendCond.Broadcast()
		sc.mu.Unlock()
		if err != nil {
			// The peer is gone or stalled past the write timeout: the
			// reader's next read fails and tears the connection down.
			sc.conn.Close()
			return
		}
	}
}

// armWriteDeadline bounds the next write by the write timeout (and by
// closeFlushTimeout while closing). A deadline still leaving at least
// seven eighths of the timeout is kept: renewing it costs a timer update
// per write.
func (sc *serverConn) armWriteDeadline(closing bool) {
	d := sc.writeTimeout
	if closing && (d == 0 || d > closeFlushTimeout) {
		d = closeFlushTimeout
	}
	if d == 0 {
		return
	}
	now := time.Now()
	if !sc.writeDeadline.IsZero() && sc.writeDeadline.Sub(now) >= d-d/8 && !sc.writeDeadline.After(now.Add(d)) {
		return
	}
	sc.writeDeadline = now.Add(d)
	sc.conn.SetWriteDeadline(sc.writeDeadline)
}

// wakeWriter tells the writer there is something to send. mu is held.
func (sc *serverConn) wakeWriter() {
	if sc.writerIdle {
		sc.writerIdle = false
		sc.writeCond.Signal()
	}
}

// queueControl accounts for one more control frame the peer elicited
// (SETTINGS or PING ACK, RST_STREAM) and reports false when too many are
// waiting to be written: a peer that floods us with frames while not
// reading the answers is cut off (PING and SETTINGS floods). mu is held.
func (sc *serverConn) queueControl() bool {
	if sc.ctrlQueued >= sc.maxCtrlFrames {
		return false
	}
	sc.ctrlQueued++
	return true
}

// The frame writers below run with mu held. The Framer's writes into
// outBuffer cannot fail; their errors only report invalid arguments,
// which the callers rule out.

func (sc *serverConn) writeSettings(s ...http2.Setting) {
	sc.fr.WriteSettings(s...)
	sc.wakeWriter()
}

func (sc *serverConn) writeSettingsAck() bool {
	if !sc.queueControl() {
		return false
	}
	sc.fr.WriteSettingsAck()
	sc.wakeWriter()
	return true
}

func (sc *serverConn) writePingAck(data [8]byte) bool {
	if !sc.queueControl() {
		return false
	}
	sc.fr.WritePing(true, data)
	sc.wakeWriter()
	return true
}

// writeRSTStream queues RST_STREAM; it reports false on a control frame
// flood.
func (sc *serverConn) writeRSTStream(id uint32, code http2.ErrCode) bool {
	if !sc.queueControl() {
		return false
	}
	sc.fr.WriteRSTStream(id, code)
	sc.wakeWriter()
	return true
}

func (sc *serverConn) writeGoAway(lastID uint32, code http2.ErrCode, debug string) {
	sc.goAwaySent = true
	sc.goAwayID = lastID
	sc.fr.WriteGoAway(lastID, code, []byte(debug))
	sc.wakeWriter()
}

func (sc *serverConn) writeWindowUpdate(id uint32, n int64) {
	if n > 0 {
		sc.fr.WriteWindowUpdate(id, uint32(n))
		sc.wakeWriter()
	}
}

// writeHeaderBlock sends an encoded header block as HEADERS and as many
// CONTINUATION frames as the peer's SETTINGS_MAX_FRAME_SIZE requires.
func (sc *serverConn) writeHeaderBlock(id uint32, endStream bool, block []byte) {
	max := int(sc.peerMaxFrame)
	first := block
	if len(first) > max {
		first = first[:max]
	}
	block = block[len(first):]
	sc.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID:      id,
		BlockFragment: first,
		EndStream:     endStream,
		EndHeaders:    len(block) == 0,
	})
	for len(block) > 0 {
		frag := block
		if len(frag) > max {
			frag = frag[:max]
		}
		block = block[len(frag):]
		sc.fr.WriteContinuation(id, len(block) == 0, frag)
	}
	sc.wakeWriter()
}

func (sc *serverConn) writeData(id uint32, endStream bool, p []byte) {
	sc.fr.WriteData(id, endStream, p)
	sc.dataFramesSent++
	sc.wakeWriter()
}
