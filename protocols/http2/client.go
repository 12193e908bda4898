package http2

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/stream"
)

// Defaults of the client codec, where stream.ClientOptions leaves zero.
const (
	clientDefaultStreamWindow  = 1 << 20
	clientDefaultConnWindow    = 16 << 20
	clientDefaultMaxHeaderList = 60 << 10

	// clientPreSettingsMaxStreams is the concurrency assumed until the
	// server's SETTINGS arrive. RFC 9113 allows unlimited streams until
	// then, but a server that turns out to allow fewer would refuse them.
	clientPreSettingsMaxStreams = 100
	// clientUnlimitedMaxStreams stands in for a server that sets no
	// limit: piling thousands of exchanges on one connection only puts
	// them all at the mercy of one socket.
	clientUnlimitedMaxStreams = 1000
)

const (
	clInitialWindow   = 65535 // RFC 9113 section 6.9.2
	clMaxWindow       = 1<<31 - 1
	clMinMaxFrameSize = 16384
	clMaxStreamID     = 1<<31 - 1

	clWriteBufferSize = 32 << 10
	clReadBufferSize  = 32 << 10
	// clMaxQueuedControl bounds control frames (PING and SETTINGS acks,
	// resets, window updates) waiting for the write lock: a server that
	// floods PINGs while not reading what we write is cut off.
	clMaxQueuedControl = 4096
	// clGoAwayWriteTimeout bounds the courtesy GOAWAY written before a
	// connection that failed is closed.
	clGoAwayWriteTimeout = time.Second
)

// clKeepalivePing is the payload of keepalive PINGs.
var clKeepalivePing = [8]byte{'s', 'l', 'u', 'i', 'c', 'e', 'k', 'a'}

// Errors of the client codec. Stream failures caused by the peer or the
// connection wrap *stream.ErrStreamReset and stream.ErrConnClosed instead.
var (
	clErrStreamClosed  = errors.New("http2: stream closed")
	clErrDeadline      = fmt.Errorf("http2: stream deadline exceeded: %w", os.ErrDeadlineExceeded)
	clErrHeadersSent   = errors.New("http2: request headers already written")
	clErrNoHeaders     = errors.New("http2: request body written before the request headers")
	clErrWriteAfterEnd = errors.New("http2: request written after its end of stream")
	clErrNoRequest     = errors.New("http2: response read before the request headers were written")
	clErrHeadRead      = errors.New("http2: final response head already read")
	clErrBodyTooEarly  = errors.New("http2: response body read before the final response head")
	clErrHijack        = errors.New("http2: streams cannot be hijacked")
	clErrGoingAway     = fmt.Errorf("http2: connection going away: %w", stream.ErrConnClosed)
	clErrStreamLimit   = fmt.Errorf("http2: %w", stream.ErrStreamLimit)
	clErrClosed        = errors.New("http2: connection closed locally")
	clErrShutdown      = errors.New("http2: connection shut down after its last stream")
	clErrKeepalive     = errors.New("http2: keepalive ping unanswered")
)

// ClientCodec makes HTTP/2 upstream connections (stream.MuxClientCodec),
// speaking h2c or h2 over whatever net.Conn it is given (TLS is the
// dialler's business).
type ClientCodec struct{}

// NewClientCodec returns the HTTP/2 client codec.
func NewClientCodec() *ClientCodec { return &ClientCodec{} }

var _ stream.MuxClientCodec = (*ClientCodec)(nil)

// clientConnError is how the streams of a failed connection fail: it
// matches stream.ErrConnClosed and, through errors.As, *stream.ErrStreamReset
// (the GOAWAY's code when the server gave one), and unwraps to its cause.
type clientConnError struct {
	cause error
	reset stream.ErrStreamReset
}

func (e *clientConnError) Error() string {
	return "http2: connection closed: " + e.cause.Error()
}

func (e *clientConnError) Unwrap() []error {
	return []error{stream.ErrConnClosed, &e.reset, e.cause}
}

// clProtocolError is a connection error we detected: the connection is
// closed with GOAWAY carrying code.
type clProtocolError struct {
	code   http2.ErrCode
	reason string
}

func (e *clProtocolError) Error() string {
	return fmt.Sprintf("http2: server protocol error (%v): %s", e.code, e.reason)
}

// clControlKind is the kind of a control frame queued for writing.
type clControlKind uint8

const (
	clCtlSettingsAck clControlKind = iota
	clCtlPingAck
	clCtlPing
	clCtlReset
	clCtlWindowUpdate
	clCtlGoAway
)

// clControlFrame is a frame written on behalf of the reader or of a
// caller that must not block on the write lock (Close, deadlines, body
// reads returning credit).
type clControlFrame struct {
	kind     clControlKind
	streamID uint32
	val      uint32 // reset code or window increment
	ping     [8]byte
	// Settings the server sent, applied to the writing side when the ACK is
	// written: from then on the server expects them (RFC 9113 6.5.3).
	maxFrameSize uint32 // 0: unchanged
	tableSize    uint32
	hasTableSize bool
}

// clientConn is one HTTP/2 upstream connection (stream.MuxConn).
//
// Locking: wmu serialises writers and owns everything below it up to mu;
// mu guards the connection and stream state. wmu is taken before mu,
// never the other way round, and nothing blocks on the network holding mu.
type clientConn struct {
	conn net.Conn
	fr   *http2.Framer

	streamWindow  int64 // receive window advertised per stream
	connWindow    int64 // receive window of the connection
	optMaxStreams uint32
	kaInterval    time.Duration
	kaTimeout     time.Duration

	wmu       sync.Mutex
	wWaiters  atomic.Int32 // goroutines waiting for wmu
	bw        *bufio.Writer
	henc      *hpack.Encoder
	hbuf      bytes.Buffer
	wMaxFrame uint32 // the server's acknowledged SETTINGS_MAX_FRAME_SIZE
	// wNeedFlush: a writer left frames in bw for the next holder to flush.
	wNeedFlush bool

	ctlPending atomic.Int32 // len(ctl), read without mu

	mu       sync.Mutex
	sendCond sync.Cond // request writers waiting for send window
	streams  map[uint32]*clientStream
	ctl      []clControlFrame
	ctlSpare []clControlFrame

	slots        int    // streams reserved by NewStream and not yet closed
	idsLeft      uint32 // stream ids not yet reserved
	nextStreamID uint32

	sawSettings       bool
	peerMaxStreams    uint32
	peerInitialWindow int64
	peerMaxHeaderList uint32 // 0: unlimited
	peerConnectProto  bool

	sendWindow  int64 // connection send window
	recvWindow  int64 // bytes the server may still send on the connection
	recvUnacked int64 // bytes consumed or dropped, not yet returned

	goAwayRecv   bool
	goAwayLastID uint32
	goAwayCode   http2.ErrCode
	goAwaySent   bool

	err error // why the connection failed; set once

	framesRead      atomic.Uint64
	kaTimer         *time.Timer
	kaLastFrames    uint64
	pingOutstanding bool

	done      chan struct{}
	ready     chan struct{} // closed at the server's first SETTINGS or on failure
	readyOnce sync.Once
}

var _ stream.MuxConn = (*clientConn)(nil)

// Ready is closed once the server's first SETTINGS was applied, or the
// connection failed.
func (cc *clientConn) Ready() <-chan struct{} { return cc.ready }

// NewMuxConn writes the client preface, SETTINGS and the connection
// window, then starts the connection's reader. It does not wait for the
// server's SETTINGS. On error the caller still owns (and closes) c.
func (*ClientCodec) NewMuxConn(c net.Conn, opts *stream.ClientOptions) (stream.MuxConn, error) {
	if opts == nil {
		opts = &stream.ClientOptions{}
	}
	streamWindow := int64(opts.InitialStreamWindow)
	if streamWindow == 0 {
		streamWindow = clientDefaultStreamWindow
	}
	connWindow := int64(opts.InitialConnWindow)
	if connWindow == 0 {
		connWindow = clientDefaultConnWindow
	}
	if streamWindow > clMaxWindow || connWindow > clMaxWindow {
		return nil, fmt.Errorf("http2: receive windows of %d and %d: at most 2^31-1", streamWindow, connWindow)
	}
	// The connection window starts at 65535 and can only grow.
	connWindow = max(connWindow, clInitialWindow)
	maxHeaderList := opts.MaxHeaderListSize
	if maxHeaderList == 0 {
		maxHeaderList = clientDefaultMaxHeaderList
	}

	cc := &clientConn{
		conn:              c,
		streamWindow:      streamWindow,
		connWindow:        connWindow,
		optMaxStreams:     opts.MaxConcurrentStreams,
		kaInterval:        opts.KeepaliveInterval,
		kaTimeout:         opts.KeepaliveTimeout,
		wMaxFrame:         clMinMaxFrameSize,
		streams:           make(map[uint32]*clientStream),
		idsLeft:           (clMaxStreamID + 1) / 2,
		nextStreamID:      1,
		peerMaxStreams:    clientPreSettingsMaxStreams,
		peerInitialWindow: clInitialWindow,
		sendWindow:        clInitialWindow,
		recvWindow:        connWindow,
		done:              make(chan struct{}),
		ready:             make(chan struct{}),
	}
	if cc.kaInterval > 0 && cc.kaTimeout <= 0 {
		cc.kaTimeout = cc.kaInterval
	}
	cc.sendCond.L = &cc.mu
	cc.bw = bufio.NewWriterSize(c, clWriteBufferSize)
	cc.fr = http2.NewFramer(cc.bw, bufio.NewReaderSize(c, clReadBufferSize))
	cc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	cc.fr.MaxHeaderListSize = maxHeaderList
	cc.fr.SetReuseFrames()
	cc.henc = hpack.NewEncoder(&cc.hbuf)

	cc.bw.WriteString(http2.ClientPreface)
	cc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(streamWindow)},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
	)
	if connWindow > clInitialWindow {
		cc.fr.WriteWindowUpdate(0, uint32(connWindow-clInitialWindow))
	}
	if err := cc.bw.Flush(); err != nil {
		return nil, fmt.Errorf("http2: writing the client preface: %w", err)
	}
	go cc.readLoop()
	if cc.kaInterval > 0 {
		cc.mu.Lock()
		cc.kaTimer = time.AfterFunc(cc.kaInterval, cc.keepalive)
		cc.mu.Unlock()
	}
	return cc, nil
}

// NewStream reserves a stream; its id is assigned when its HEADERS are
// written, so ids go on the wire in increasing order.
func (cc *clientConn) NewStream() (stream.ClientConn, error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	switch {
	case cc.err != nil:
		return nil, fmt.Errorf("http2: new stream: %w", cc.err)
	case cc.drainingLocked():
		return nil, clErrGoingAway
	case cc.capacityLocked() == 0:
		return nil, clErrStreamLimit
	}
	cc.slots++
	cc.idsLeft--
	s := &clientStream{cc: cc, contentLength: -1}
	s.cond.L = &cc.mu
	s.body.s = s
	s.heads = s.headsBuf[:0]
	return s, nil
}

// drainingLocked reports whether the connection takes no new streams
// though it has not failed.
func (cc *clientConn) drainingLocked() bool {
	return cc.goAwayRecv || cc.goAwaySent || cc.idsLeft == 0
}

func (cc *clientConn) capacityLocked() int {
	if cc.err != nil || cc.drainingLocked() {
		return 0
	}
	limit := cc.peerMaxStreams
	if cc.optMaxStreams > 0 {
		limit = min(limit, cc.optMaxStreams)
	}
	n := int64(limit) - int64(cc.slots)
	n = min(n, int64(cc.idsLeft))
	return int(max(n, 0))
}

// Capacity is how many more streams NewStream would reserve now.
func (cc *clientConn) Capacity() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.capacityLocked()
}

// Active is the number of streams reserved and not yet closed.
func (cc *clientConn) Active() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.slots
}

// Usable is false once the connection failed, was closed, or either side
// sent GOAWAY, or its stream ids are spent.
func (cc *clientConn) Usable() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err == nil && !cc.drainingLocked()
}

// Done is closed once the connection is closed and its reader has exited.
func (cc *clientConn) Done() <-chan struct{} { return cc.done }

// Shutdown sends GOAWAY and closes the connection when its last stream
// is closed (at once when it has none). It does not block on the network.
func (cc *clientConn) Shutdown() error {
	cc.mu.Lock()
	if cc.err != nil || cc.goAwaySent {
		cc.mu.Unlock()
		return nil
	}
	cc.goAwaySent = true
	idle := cc.slots == 0
	if !idle {
		cc.queueControlLocked(clControlFrame{kind: clCtlGoAway, val: uint32(http2.ErrCodeNo)})
	}
	cc.mu.Unlock()
	if idle {
		cc.fail(clErrShutdown, http2.ErrCodeNo, false, true)
		return nil
	}
	cc.kickControl()
	return nil
}

// Close closes the connection at once: every stream fails.
func (cc *clientConn) Close() error {
	cc.fail(clErrClosed, http2.ErrCodeCancel, false, false)
	return nil
}

// fail tears the connection down once: every stream whose response is
// not complete fails with an error wrapping cause, and the socket is
// closed, which unblocks the reader and any writer. With goAway a GOAWAY
// carrying code is attempted first, when no writer holds the lock.
func (cc *clientConn) fail(cause error, code http2.ErrCode, remote, goAway bool) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	if code == http2.ErrCodeNo && len(cc.streams) > 0 {
		// A stream cut short did not end without error.
		code = http2.ErrCodeInternal
	}
	cc.err = &clientConnError{cause: cause, reset: stream.ErrStreamReset{Code: uint32(code), Remote: remote}}
	for _, s := range cc.streams {
		s.failLocked(cc.err)
	}
	cc.sendCond.Broadcast()
	if cc.kaTimer != nil {
		cc.kaTimer.Stop()
	}
	cc.mu.Unlock()

	if goAway && cc.wmu.TryLock() {
		cc.conn.SetWriteDeadline(time.Now().Add(clGoAwayWriteTimeout))
		cc.fr.WriteGoAway(0, code, nil)
		cc.bw.Flush()
		cc.wmu.Unlock()
	}
	cc.conn.Close()
}

// writeFailed fails the connection after a write error and returns what
// the writer should report.
func (cc *clientConn) writeFailed(err error) error {
	cc.fail(fmt.Errorf("http2: write: %w", err), http2.ErrCodeInternal, false, false)
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err
}

// lockWrite takes the write lock, counted as a waiter meanwhile so the
// current holder leaves the flush to us.
func (cc *clientConn) lockWrite() {
	cc.wWaiters.Add(1)
	cc.wmu.Lock()
	cc.wWaiters.Add(-1)
}

// unlockWrite writes the queued control frames and releases the write
// lock. With flush (or a flush deferred by an earlier holder) buffered
// frames go to the network, unless another writer waits for the lock: it
// will flush them with its own, batching frames of many streams into one
// write. A control frame queued while the lock was held is written by the
// holder, or by whoever takes the lock next.
func (cc *clientConn) unlockWrite(flush bool) {
	for {
		if cc.ctlPending.Load() > 0 {
			cc.writeControlLocked()
			flush = true
		}
		if flush || cc.wNeedFlush {
			if cc.wWaiters.Load() > 0 {
				cc.wNeedFlush = true
			} else {
				cc.wNeedFlush = false
				if err := cc.bw.Flush(); err != nil {
					cc.wmu.Unlock()
					cc.writeFailed(err)
					return
				}
			}
		}
		cc.wmu.Unlock()
		// A frame queued between our check and Unlock found the lock held:
		// write it unless someone else now holds the lock (and will).
		if cc.ctlPending.Load() == 0 || !cc.wmu.TryLock() {
			return
		}
		flush = false
	}
}

// queueControlLocked queues a control frame; kickControl (after mu is
// released) or the write lock's holder writes it.
func (cc *clientConn) queueControlLocked(f clControlFrame) {
	cc.ctl = append(cc.ctl, f)
	cc.ctlPending.Add(1)
}

// kickControl writes queued control frames now, unless a writer holds
// the lock: it writes them before releasing it. It never blocks, so Close
// and deadlines work while a writer is stuck on a server not reading.
// It must not be called with mu held.
func (cc *clientConn) kickControl() {
	if cc.ctlPending.Load() > 0 && cc.wmu.TryLock() {
		cc.unlockWrite(true)
	}
}

// writeControlLocked writes the queued control frames; wmu is held.
func (cc *clientConn) writeControlLocked() {
	cc.mu.Lock()
	q := cc.ctl
	cc.ctl = cc.ctlSpare[:0]
	cc.ctlPending.Store(0)
	cc.mu.Unlock()
	for i := range q {
		f := &q[i]
		switch f.kind {
		case clCtlSettingsAck:
			if f.maxFrameSize != 0 {
				cc.wMaxFrame = f.maxFrameSize
			}
			if f.hasTableSize {
				cc.henc.SetMaxDynamicTableSizeLimit(f.tableSize)
			}
			cc.fr.WriteSettingsAck()
		case clCtlPingAck:
			cc.fr.WritePing(true, f.ping)
		case clCtlPing:
			cc.fr.WritePing(false, f.ping)
		case clCtlReset:
			cc.fr.WriteRSTStream(f.streamID, http2.ErrCode(f.val))
		case clCtlWindowUpdate:
			cc.fr.WriteWindowUpdate(f.streamID, f.val)
		case clCtlGoAway:
			// A client's GOAWAY names the last server-initiated stream: none.
			cc.fr.WriteGoAway(0, http2.ErrCode(f.val), nil)
		}
	}
	clear(q)
	cc.mu.Lock()
	cc.ctlSpare = q[:0]
	cc.mu.Unlock()
	// Write errors stick in bw and surface at the flush that follows.
}

// creditConnLocked returns n received bytes (consumed or dropped) to the
// connection window. Credit goes back in batches of half the window, or
// at once when the server's view of the window is below half: then
// streams nobody reads hold the rest, and waiting for a batch could stall
// the streams that are being read.
func (cc *clientConn) creditConnLocked(n int64) {
	if n <= 0 || cc.err != nil {
		return
	}
	cc.recvUnacked += n
	if cc.recvUnacked >= cc.connWindow/2 || cc.recvWindow < cc.connWindow/2 {
		cc.queueControlLocked(clControlFrame{kind: clCtlWindowUpdate, val: uint32(cc.recvUnacked)})
		cc.recvWindow += cc.recvUnacked
		cc.recvUnacked = 0
	}
}

// keepalive runs on a timer: it pings a connection that read nothing for
// an interval, and closes it when the ping goes unanswered.
func (cc *clientConn) keepalive() {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	if cc.pingOutstanding {
		cc.mu.Unlock()
		cc.fail(clErrKeepalive, http2.ErrCodeNo, false, true)
		return
	}
	if n := cc.framesRead.Load(); n != cc.kaLastFrames {
		cc.kaLastFrames = n
		cc.kaTimer.Reset(cc.kaInterval)
		cc.mu.Unlock()
		return
	}
	cc.pingOutstanding = true
	cc.queueControlLocked(clControlFrame{kind: clCtlPing, ping: clKeepalivePing})
	cc.kaTimer.Reset(cc.kaTimeout)
	cc.mu.Unlock()
	cc.kickControl()
}

// readLoop reads and dispatches the server's frames until the connection
// fails or closes.
func (cc *clientConn) readLoop() {
	defer close(cc.done)
	defer cc.readyOnce.Do(func() { close(cc.ready) })
	for {
		f, err := cc.fr.ReadFrame()
		if err != nil {
			if cc.readFailed(err) {
				continue
			}
			return
		}
		cc.framesRead.Add(1)
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			err = cc.onHeaders(f)
		case *http2.DataFrame:
			err = cc.onData(f)
		case *http2.SettingsFrame:
			err = cc.onSettings(f)
		case *http2.WindowUpdateFrame:
			err = cc.onWindowUpdate(f)
		case *http2.RSTStreamFrame:
			err = cc.onReset(f)
		case *http2.PingFrame:
			cc.onPing(f)
		case *http2.GoAwayFrame:
			cc.onGoAway(f)
		case *http2.PushPromiseFrame:
			err = &clProtocolError{http2.ErrCodeProtocol, "PUSH_PROMISE after SETTINGS_ENABLE_PUSH=0"}
		}
		// PRIORITY and unknown frames are ignored (RFC 9113 sections 5.5, 6.3).
		if err == nil && cc.ctlPending.Load() > clMaxQueuedControl {
			err = &clProtocolError{http2.ErrCodeEnhanceYourCalm, "control frames queued faster than they can be written"}
		}
		if err != nil {
			var pe *clProtocolError
			errors.As(err, &pe)
			cc.fail(err, pe.code, false, true)
			return
		}
		cc.kickControl()
	}
}

// readFailed handles a ReadFrame error; true when reading goes on.
func (cc *clientConn) readFailed(err error) bool {
	var se http2.StreamError
	if errors.As(err, &se) {
		// A malformed header block: the hpack state is intact.
		cc.mu.Lock()
		if s := cc.streams[se.StreamID]; s != nil && !s.resetSent && !s.resetRecv {
			cc.resetStreamLocked(s, se.Code, fmt.Errorf("http2: malformed response: %v: %w", se.Cause, &stream.ErrStreamReset{Code: uint32(se.Code)}))
		}
		cc.mu.Unlock()
		cc.kickControl()
		return true
	}
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		reason := "frame rejected"
		if d := cc.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		cc.fail(&clProtocolError{http2.ErrCode(ce), reason}, http2.ErrCode(ce), false, true)
	case errors.Is(err, http2.ErrFrameTooLarge):
		cc.fail(&clProtocolError{http2.ErrCodeFrameSize, "frame larger than SETTINGS_MAX_FRAME_SIZE"}, http2.ErrCodeFrameSize, false, true)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		// After a GOAWAY with an error code, the streams it cut carry it.
		cc.mu.Lock()
		code := http2.ErrCodeInternal
		if cc.goAwayRecv && cc.goAwayCode != http2.ErrCodeNo {
			code = cc.goAwayCode
		}
		cc.mu.Unlock()
		cc.fail(errors.New("http2: server closed the connection"), code, true, false)
	default:
		cc.fail(fmt.Errorf("http2: read: %w", err), http2.ErrCodeInternal, false, false)
	}
	return false
}

// streamForFrameLocked finds the stream a frame is for: nil (and no
// error) when it is one we closed or reset, whose late frames are
// dropped; a connection error when it names a stream never opened.
func (cc *clientConn) streamForFrameLocked(id uint32) (*clientStream, error) {
	if s := cc.streams[id]; s != nil {
		if s.resetSent || s.resetRecv {
			return nil, nil
		}
		return s, nil
	}
	if id%2 == 0 || id >= cc.nextStreamID {
		return nil, &clProtocolError{http2.ErrCodeProtocol, fmt.Sprintf("frame for idle stream %d", id)}
	}
	return nil, nil
}

// resetStreamLocked resets s on our side: RST_STREAM code, and its reads
// and writes fail with err.
func (cc *clientConn) resetStreamLocked(s *clientStream, code http2.ErrCode, err error) {
	if s.id != 0 && !s.resetSent && !s.resetRecv && cc.err == nil {
		cc.queueControlLocked(clControlFrame{kind: clCtlReset, streamID: s.id, val: uint32(code)})
		s.resetSent = true
	}
	s.failLocked(err)
}

// streamProtocolErrorLocked resets s for a malformed response.
func (cc *clientConn) streamProtocolErrorLocked(s *clientStream, code http2.ErrCode, why string) {
	cc.resetStreamLocked(s, code, fmt.Errorf("http2: malformed response: %s: %w", why, &stream.ErrStreamReset{Code: uint32(code)}))
}

func (cc *clientConn) onHeaders(f *http2.MetaHeadersFrame) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	s, err := cc.streamForFrameLocked(f.StreamID)
	if s == nil {
		return err
	}
	switch {
	case s.recvEnd:
		cc.streamProtocolErrorLocked(s, http2.ErrCodeStreamClosed, "HEADERS after END_STREAM")
	case f.Truncated:
		cc.streamProtocolErrorLocked(s, http2.ErrCodeProtocol, "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE")
	case !s.recvFinal:
		if why := s.acceptHeadLocked(f); why != "" {
			cc.streamProtocolErrorLocked(s, http2.ErrCodeProtocol, why)
		}
	default:
		if why := s.acceptTrailersLocked(f); why != "" {
			cc.streamProtocolErrorLocked(s, http2.ErrCodeProtocol, why)
		}
	}
	s.cond.Broadcast()
	return nil
}

func (cc *clientConn) onData(f *http2.DataFrame) error {
	n := int64(f.Length) // padding is flow-controlled too
	data := f.Data()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.recvWindow -= n
	if cc.recvWindow < 0 {
		return &clProtocolError{http2.ErrCodeFlowControl, "DATA beyond the connection window"}
	}
	s, err := cc.streamForFrameLocked(f.StreamID)
	if s == nil {
		cc.creditConnLocked(n)
		return err
	}
	switch {
	case s.recvEnd:
		cc.creditConnLocked(n)
		cc.streamProtocolErrorLocked(s, http2.ErrCodeStreamClosed, "DATA after END_STREAM")
		return nil
	case !s.recvFinal:
		cc.creditConnLocked(n)
		cc.streamProtocolErrorLocked(s, http2.ErrCodeProtocol, "DATA before the final response head")
		return nil
	}
	s.recvWindow -= n
	if s.recvWindow < 0 {
		cc.creditConnLocked(n)
		cc.streamProtocolErrorLocked(s, http2.ErrCodeFlowControl, "DATA beyond the stream window")
		return nil
	}
	if s.noBody && len(data) > 0 {
		cc.creditConnLocked(n)
		cc.streamProtocolErrorLocked(s, http2.ErrCodeProtocol, "body in a response to HEAD, or a 204 or 304")
		return nil
	}
	s.recvBytes += int64(len(data))
	if s.contentLength >= 0 && s.recvBytes > s.contentLength {
		cc.creditConnLocked(n)
		cc.streamProtocolErrorLocked(s, http2.ErrCodeProtocol, "body longer than its content-length")
		return nil
	}
	if s.readErr == nil {
		s.recv.write(data)
		// Padding is returned at once: nobody will read it.
		pad := n - int64(len(data))
		s.creditStreamLocked(pad)
		cc.creditConnLocked(pad)
	} else {
		// Reads already failed (a deadline while uploading): drop it.
		cc.creditConnLocked(n)
	}
	if f.StreamEnded() {
		if why := s.endOfBodyLocked(); why != "" {
			cc.streamProtocolErrorLocked(s, http2.ErrCodeProtocol, why)
		}
	}
	s.cond.Broadcast()
	return nil
}

func (cc *clientConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	ack := clControlFrame{kind: clCtlSettingsAck}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	sawMaxStreams := false
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			var ce http2.ConnectionError
			errors.As(err, &ce)
			return &clProtocolError{http2.ErrCode(ce), fmt.Sprintf("invalid setting %v", st)}
		}
		switch st.ID {
		case http2.SettingEnablePush:
			if st.Val != 0 {
				return &clProtocolError{http2.ErrCodeProtocol, "server sent SETTINGS_ENABLE_PUSH=1"}
			}
		case http2.SettingMaxConcurrentStreams:
			cc.peerMaxStreams, sawMaxStreams = st.Val, true
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - cc.peerInitialWindow
			cc.peerInitialWindow = int64(st.Val)
			for _, s := range cc.streams {
				s.sendWindow += delta
				if s.sendWindow > clMaxWindow {
					return &clProtocolError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window"}
				}
			}
		case http2.SettingMaxFrameSize:
			ack.maxFrameSize = st.Val
		case http2.SettingHeaderTableSize:
			ack.tableSize, ack.hasTableSize = st.Val, true
		case http2.SettingMaxHeaderListSize:
			cc.peerMaxHeaderList = st.Val
		case http2.SettingEnableConnectProtocol:
			cc.peerConnectProto = st.Val == 1
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !cc.sawSettings {
		cc.sawSettings = true
		if !sawMaxStreams {
			cc.peerMaxStreams = clientUnlimitedMaxStreams
		}
		cc.readyOnce.Do(func() { close(cc.ready) })
	}
	cc.queueControlLocked(ack)
	cc.sendCond.Broadcast()
	return nil
}

func (cc *clientConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	incr := int64(f.Increment)
	if f.StreamID == 0 {
		cc.sendWindow += incr
		if cc.sendWindow > clMaxWindow {
			return &clProtocolError{http2.ErrCodeFlowControl, "connection send window above 2^31-1"}
		}
		cc.sendCond.Broadcast()
		return nil
	}
	s, err := cc.streamForFrameLocked(f.StreamID)
	if s == nil {
		return err
	}
	s.sendWindow += incr
	if s.sendWindow > clMaxWindow {
		cc.resetStreamLocked(s, http2.ErrCodeFlowControl, fmt.Errorf("http2: stream send window above 2^31-1: %w", &stream.ErrStreamReset{Code: uint32(http2.ErrCodeFlowControl)}))
	}
	cc.sendCond.Broadcast()
	return nil
}

func (cc *clientConn) onReset(f *http2.RSTStreamFrame) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	s, err := cc.streamForFrameLocked(f.StreamID)
	if s == nil {
		return err
	}
	s.resetRecv = true
	s.failLocked(fmt.Errorf("http2: stream reset by the server (%v): %w", f.ErrCode, &stream.ErrStreamReset{Code: uint32(f.ErrCode), Remote: true}))
	return nil
}

func (cc *clientConn) onPing(f *http2.PingFrame) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if f.IsAck() {
		if f.Data == clKeepalivePing {
			cc.pingOutstanding = false
		}
		return
	}
	cc.queueControlLocked(clControlFrame{kind: clCtlPingAck, ping: f.Data})
}

// onGoAway stops new streams; streams above the last one the server
// processes fail as refused, which the proxy may retry elsewhere.
func (cc *clientConn) onGoAway(f *http2.GoAwayFrame) {
	cc.mu.Lock()
	if !cc.goAwayRecv || f.LastStreamID < cc.goAwayLastID {
		cc.goAwayLastID = f.LastStreamID
	}
	cc.goAwayRecv = true
	cc.goAwayCode = f.ErrCode
	for id, s := range cc.streams {
		if id > cc.goAwayLastID && !s.resetSent && !s.resetRecv {
			// The server dropped it unprocessed: no RST_STREAM is needed.
			s.resetRecv = true
			s.failLocked(fmt.Errorf("http2: stream %d refused by GOAWAY (last stream %d): %w",
				id, cc.goAwayLastID, &stream.ErrStreamReset{Code: uint32(http2.ErrCodeRefusedStream), Remote: true}))
		}
	}
	idle := cc.slots == 0
	cc.mu.Unlock()
	if idle {
		cc.fail(clErrShutdown, http2.ErrCodeNo, false, false)
	}
}
