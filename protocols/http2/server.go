package http2

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/stream"
)

// Defaults of the limits stream.ServerOptions leaves at zero.
const (
	defaultMaxConcurrentStreams = 100
	defaultStreamWindow         = 1 << 20
	defaultConnWindow           = 16 << 20
	defaultMaxHeaderListSize    = 60 << 10 // as the HTTP/1 codec's header block limit
	defaultMaxHeaders           = 100
	defaultMaxControlFrames     = 1000
	// defaultMaxResetsPerSecond is the rate of streams a client may reset
	// before their response completed; bursts of twice that pass. Honest
	// clients cancel a handful of requests a second; a rapid-reset attack
	// (CVE-2023-44487) needs thousands.
	defaultMaxResetsPerSecond = 100
)

const (
	// maxReadFrameSize is our SETTINGS_MAX_FRAME_SIZE (the protocol
	// default, so it is not advertised).
	maxReadFrameSize = 16 << 10
	// maxEmptyFrames bounds consecutive DATA frames without payload or
	// END_STREAM and empty HEADERS/CONTINUATION fragments: they cost us
	// work and carry nothing (as Envoy's
	// max_consecutive_inbound_frames_with_empty_payload).
	maxEmptyFrames = 10
	// Flood budgets of frames that carry no request progress, as
	// Envoy's: PRIORITY frames per opened stream and WINDOW_UPDATE
	// frames per DATA frame we sent, plus a base allowance.
	priorityFramesPerStream   = 100
	windowUpdatesPerDataFrame = 10
	frameFloodBase            = 1000
	// handlersPerStreamSlot bounds handler goroutines still running for
	// streams the client already closed, in units of the stream limit:
	// beyond it new streams are refused until handlers catch up.
	handlersPerStreamSlot = 2
	// lingerTimeout bounds reading (and dropping) what the peer still
	// sends after our GOAWAY, so it reads the GOAWAY instead of a reset.
	lingerTimeout = 500 * time.Millisecond
	// recentClosedSize is how many closed stream IDs we remember to tell
	// a frame on a closed stream from one on a stream never opened.
	recentClosedSize = 32
)

// Errors of the stream and connection API.
var (
	// ErrHeadersWritten: the response head was already sent.
	ErrHeadersWritten = errors.New("http2: headers already written")
	// ErrNoHeaders: a body or trailers were written before the head.
	ErrNoHeaders = errors.New("http2: body written before headers")
	// ErrStreamDone: the response was already complete.
	ErrStreamDone = errors.New("http2: write after end of stream")
	// ErrInvalidStatus: :status is missing, not three digits, or 101.
	ErrInvalidStatus = errors.New("http2: invalid :status")
	// ErrInvalidField: a header name or value cannot be sent.
	ErrInvalidField = errors.New("http2: invalid header field")
	// ErrNotHijackable: HTTP/2 streams have no raw connection to hand over.
	ErrNotHijackable = errors.New("http2: streams cannot be hijacked")
	// ErrHeadersTimeout: the connection preface and first request did not
	// arrive within ServerOptions.RequestHeadersTimeout.
	ErrHeadersTimeout = errors.New("http2: timeout waiting for the first request")
)

// ProtocolError is a connection error (RFC 9113 section 5.4.1) the codec
// detected: it sent GOAWAY with Code and closed the connection.
type ProtocolError struct {
	Code   http2.ErrCode
	Reason string
}

func (e *ProtocolError) Error() string {
	return "http2: connection error " + e.Code.String() + ": " + e.Reason
}

func connError(code http2.ErrCode, reason string) *ProtocolError {
	return &ProtocolError{Code: code, Reason: reason}
}

var (
	clientPreface = []byte(http2.ClientPreface)
	aLongTimeAgo  = time.Unix(1, 0)
)

// ServerCodec is the HTTP/2 server codec (stream.ServerCodec) for h2c with
// prior knowledge and for TLS connections that negotiated "h2". It holds no
// state: one value serves any number of connections.
type ServerCodec struct{}

// NewServerCodec returns the HTTP/2 server codec.
func NewServerCodec() *ServerCodec { return &ServerCodec{} }

var _ stream.ServerCodec = (*ServerCodec)(nil)

// ServeConn serves c until the peer closes it, a connection error, a
// timeout, or ctx is cancelled: then it sends GOAWAY, lets the streams in
// flight finish and closes. It returns once c is closed and every handler
// returned; the error is nil for an orderly end.
func (s *ServerCodec) ServeConn(ctx context.Context, c net.Conn, info *stream.ConnInfo, h stream.Handler, opts *stream.ServerOptions) error {
	sc := newServerConn(c, info, h, opts)
	return sc.serve(ctx)
}

// serverConn is one downstream HTTP/2 connection. The ServeConn goroutine
// reads and processes frames, one writer goroutine sends them, and each
// stream's handler runs on its own goroutine; mu guards the state they
// share.
type serverConn struct {
	conn    net.Conn
	info    *stream.ConnInfo
	handler stream.Handler
	br      *bufio.Reader
	fr      *http2.Framer
	hdec    *hpack.Decoder

	// Limits, fixed at start.
	scheme         string
	maxConcurrent  uint32
	streamWindow   int64 // advertised SETTINGS_INITIAL_WINDOW_SIZE
	connWindow     int64
	maxHeaderList  int
	maxHeaders     int
	maxCtrlFrames  int
	resetRate      float64
	writeTimeout   time.Duration
	idleTimeout    time.Duration
	headersTimeout time.Duration
	maxAge         time.Duration

	handlerWG  sync.WaitGroup
	writerDone chan struct{}
	// writeDeadline is the writer goroutine's last write deadline.
	writeDeadline time.Time

	mu sync.Mutex

	// Write side.
	out        outBuffer
	henc       *hpack.Encoder
	hbuf       bytes.Buffer
	writeCond  sync.Cond // wakes the writer
	sendCond   sync.Cond // wakes handlers waiting for window or buffer room
	writerIdle bool
	ctrlQueued int   // control frames queued and not yet written
	werr       error // the write that failed

	// Peer settings and flow control.
	peerMaxFrame      uint32
	peerInitialWindow int64
	connSend          sendWindow
	connRecv          recvWindow
	recvInitial       int64 // the stream window the peer assumes now
	settingsAcked     bool
	sawSettings       bool

	// Streams.
	streams      map[uint32]*serverStream // open and half-closed streams
	handlers     int                      // handler goroutines running
	maxClientID  uint32                   // highest stream ID the client used
	recentClosed [recentClosedSize]closedStream
	recentNext   int
	block        headerBlock

	// Life cycle.
	awaitingFirst bool // the RequestHeadersTimeout read deadline is set
	draining      bool // GOAWAY sent: streams above goAwayID are ignored
	goAwaySent    bool
	goAwayID      uint32
	closing       bool // tearing down: the writer flushes and exits
	idleTimer     *time.Timer
	notes         []resetNote

	// Flood accounting.
	emptyFrames    int
	priorityFrames int64
	windowUpdates  int64
	dataFramesSent int64
	streamsOpened  int64
	maxRequests    int64 // streams after which the connection drains (0: none)
	resetTokens    float64
	resetRefill    time.Time
}

// closedStream remembers a closed stream and whether we reset it, in
// which case frames still in flight for it are ignored (RFC 9113 section
// 5.4.2).
type closedStream struct {
	id      uint32
	weReset bool
}

// resetNote is a ResetNotifier callback to run once mu is released.
type resetNote struct {
	fn   func(code uint32)
	code uint32
}

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

func newServerConn(c net.Conn, info *stream.ConnInfo, h stream.Handler, o *stream.ServerOptions) *serverConn {
	if o == nil {
		o = &stream.ServerOptions{}
	}
	sc := &serverConn{
		conn:              c,
		info:              info,
		handler:           h,
		scheme:            o.Scheme,
		maxConcurrent:     o.HTTP2.MaxConcurrentStreams,
		streamWindow:      int64(o.HTTP2.InitialStreamWindow),
		connWindow:        int64(o.HTTP2.InitialConnWindow),
		maxHeaderList:     o.MaxHeaderBytes,
		maxHeaders:        o.MaxHeaders,
		maxCtrlFrames:     o.HTTP2.MaxOutboundControlFrames,
		resetRate:         float64(o.HTTP2.MaxResetsPerSecond),
		writeTimeout:      o.WriteTimeout,
		idleTimeout:       o.IdleTimeout,
		headersTimeout:    o.RequestHeadersTimeout,
		maxAge:            o.MaxConnectionDuration,
		maxRequests:       int64(o.MaxRequestsPerConnection),
		writerDone:        make(chan struct{}),
		peerMaxFrame:      16 << 10,
		peerInitialWindow: defaultWindow,
		connSend:          defaultWindow,
		recvInitial:       defaultWindow,
		streams:           make(map[uint32]*serverStream),
	}
	if sc.scheme == "" {
		sc.scheme = "http"
	}
	if sc.maxConcurrent == 0 {
		sc.maxConcurrent = defaultMaxConcurrentStreams
	}
	if sc.streamWindow <= 0 {
		sc.streamWindow = defaultStreamWindow
	}
	sc.streamWindow = min(sc.streamWindow, maxWindow)
	if sc.connWindow <= 0 {
		sc.connWindow = defaultConnWindow
	}
	sc.connWindow = min(max(sc.connWindow, defaultWindow), maxWindow)
	if sc.maxHeaderList <= 0 {
		sc.maxHeaderList = defaultMaxHeaderListSize
	}
	if sc.maxHeaders <= 0 {
		sc.maxHeaders = defaultMaxHeaders
	}
	if sc.maxCtrlFrames <= 0 {
		sc.maxCtrlFrames = defaultMaxControlFrames
	}
	if sc.resetRate <= 0 {
		sc.resetRate = defaultMaxResetsPerSecond
	}
	sc.resetTokens = 2 * sc.resetRate
	sc.connRecv.init(sc.connWindow)
	sc.writeCond.L = &sc.mu
	sc.sendCond.L = &sc.mu

	sc.br = readerPool.Get().(*bufio.Reader)
	sc.br.Reset(c)
	sc.fr = http2.NewFramer(&sc.out, sc.br)
	sc.fr.SetReuseFrames()
	sc.fr.SetMaxReadFrameSize(maxReadFrameSize)
	sc.hdec = hpack.NewDecoder(4096, sc.onHeaderField)
	sc.hdec.SetMaxStringLength(sc.maxHeaderList)
	sc.henc = hpack.NewEncoder(&sc.hbuf)
	return sc
}

func (sc *serverConn) serve(ctx context.Context) error {
	if sc.headersTimeout > 0 {
		sc.awaitingFirst = true
		sc.conn.SetReadDeadline(time.Now().Add(sc.headersTimeout))
	}
	sc.mu.Lock()
	sc.writeSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: sc.maxConcurrent},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(sc.streamWindow)},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(sc.maxHeaderList)},
	)
	sc.writeWindowUpdate(0, sc.connWindow-defaultWindow)
	if sc.idleTimeout > 0 {
		sc.idleTimer = time.AfterFunc(sc.idleTimeout, sc.onIdle)
	}
	sc.mu.Unlock()
	go sc.writeLoop()

	stopDrain := context.AfterFunc(ctx, sc.drain)
	var maxAge *time.Timer
	if sc.maxAge > 0 {
		maxAge = time.AfterFunc(sc.maxAge, sc.drain)
	}
	err := sc.readLoop()
	stopDrain()
	if maxAge != nil {
		maxAge.Stop()
	}
	return sc.teardown(err)
}

// readLoop reads and processes frames until the connection ends. It
// returns a *ProtocolError for a connection error to report with GOAWAY,
// nil for an orderly end, or the I/O error.
func (sc *serverConn) readLoop() error {
	if err := sc.readPreface(); err != nil {
		return err
	}
	for {
		fh, err := sc.fr.ReadFrameHeader()
		if err != nil {
			sc.mu.Lock()
			err = sc.readFailed(err)
			sc.mu.Unlock()
			return err
		}
		// The payload is read outside the lock: it may block.
		f, err := sc.fr.ReadFrameForHeader(fh)
		sc.mu.Lock()
		if err != nil {
			err = sc.frameFailed(fh, err)
		} else {
			err = sc.processFrame(fh, f)
		}
		notes := sc.takeNotes()
		sc.mu.Unlock()
		runNotes(notes)
		if err != nil {
			return err
		}
	}
}

func (sc *serverConn) readPreface() error {
	var buf [24]byte
	if _, err := io.ReadFull(sc.br, buf[:]); err != nil {
		sc.mu.Lock()
		defer sc.mu.Unlock()
		if err == io.ErrUnexpectedEOF {
			return connError(http2.ErrCodeProtocol, "truncated connection preface")
		}
		return sc.readFailed(err)
	}
	if !bytes.Equal(buf[:], clientPreface) {
		return connError(http2.ErrCodeProtocol, "invalid connection preface")
	}
	return nil
}

// readFailed classifies a failed read. mu is held.
func (sc *serverConn) readFailed(err error) error {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		return sc.framerConnError(http2.ErrCode(ce))
	case errors.Is(err, http2.ErrFrameTooLarge):
		return connError(http2.ErrCodeFrameSize, "frame larger than SETTINGS_MAX_FRAME_SIZE")
	case sc.closing:
		return nil // our own shutdown interrupted the read
	case sc.werr != nil:
		return fmt.Errorf("http2: write: %w", sc.werr)
	case err == io.EOF:
		return nil
	case sc.awaitingFirst && isTimeout(err):
		return ErrHeadersTimeout
	}
	return fmt.Errorf("http2: read: %w", err)
}

func (sc *serverConn) framerConnError(code http2.ErrCode) error {
	reason := "malformed frame"
	if d := sc.fr.ErrorDetail(); d != nil {
		reason = d.Error()
	}
	return connError(code, reason)
}

// frameFailed handles a frame the Framer refused. mu is held.
func (sc *serverConn) frameFailed(fh http2.FrameHeader, err error) error {
	var se http2.StreamError
	if !errors.As(err, &se) {
		return sc.readFailed(err)
	}
	if fh.Type == http2.FrameHeaders {
		// The header block was not decoded: HPACK state is lost.
		return connError(http2.ErrCodeProtocol, "malformed HEADERS frame")
	}
	// WINDOW_UPDATE with a zero increment on a stream.
	if se.StreamID > sc.maxClientID {
		return connError(http2.ErrCodeProtocol, "frame on an idle stream")
	}
	if st := sc.streams[se.StreamID]; st != nil {
		return sc.resetByCodec(st, se.Code)
	}
	if !sc.writeRSTStream(se.StreamID, se.Code) {
		return errControlFlood
	}
	return nil
}

var (
	errControlFlood = connError(http2.ErrCodeEnhanceYourCalm, "too many control frames queued")
	errResetFlood   = connError(http2.ErrCodeEnhanceYourCalm, "too many streams reset by the client")
	errEmptyFlood   = connError(http2.ErrCodeEnhanceYourCalm, "too many empty frames")
	errFrameFlood   = connError(http2.ErrCodeEnhanceYourCalm, "too many PRIORITY or WINDOW_UPDATE frames")
)

// processFrame applies one frame to the connection. It returns a
// connection error, or nil (stream errors are handled here). mu is held.
func (sc *serverConn) processFrame(fh http2.FrameHeader, f http2.Frame) error {
	if !sc.sawSettings {
		if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
			return connError(http2.ErrCodeProtocol, "connection preface not followed by SETTINGS")
		}
		sc.sawSettings = true
	}
	switch fh.Type {
	case http2.FrameData, http2.FrameHeaders, http2.FrameContinuation:
		empty := fh.Length == 0 && !fh.Flags.Has(http2.FlagDataEndStream)
		if fh.Type == http2.FrameContinuation {
			empty = fh.Length == 0 && !fh.Flags.Has(http2.FlagContinuationEndHeaders)
		}
		if !empty {
			sc.emptyFrames = 0
		} else if sc.emptyFrames++; sc.emptyFrames > maxEmptyFrames {
			return errEmptyFlood
		}
	}
	switch f := f.(type) {
	case *http2.DataFrame:
		return sc.onData(f)
	case *http2.HeadersFrame:
		return sc.onHeaders(f)
	case *http2.ContinuationFrame:
		return sc.onContinuation(f)
	case *http2.PriorityFrame:
		return sc.onPriority(f)
	case *http2.RSTStreamFrame:
		return sc.onRSTStream(f)
	case *http2.SettingsFrame:
		return sc.onSettings(f)
	case *http2.PushPromiseFrame:
		return connError(http2.ErrCodeProtocol, "PUSH_PROMISE from a client")
	case *http2.PingFrame:
		if !f.IsAck() && !sc.writePingAck(f.Data) {
			return errControlFlood
		}
		return nil
	case *http2.GoAwayFrame:
		// The client will open no more streams; the ones open finish.
		return nil
	case *http2.WindowUpdateFrame:
		return sc.onWindowUpdate(f)
	}
	return nil // unknown frame types are ignored (RFC 9113 section 5.5)
}

func (sc *serverConn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // flow control counts padding too
	if !sc.connRecv.take(n) {
		return connError(http2.ErrCodeFlowControl, "connection window exceeded")
	}
	st := sc.streams[id]
	if st == nil || st.remoteDone {
		sc.creditConn(n)
		switch {
		case id > sc.maxClientID:
			return connError(http2.ErrCodeProtocol, "DATA on an idle stream")
		case st != nil:
			return sc.resetByCodec(st, http2.ErrCodeStreamClosed)
		case sc.weReset(id):
			return nil
		}
		if !sc.writeRSTStream(id, http2.ErrCodeStreamClosed) {
			return errControlFlood
		}
		return nil
	}
	if !st.recv.take(n) {
		sc.creditConn(n)
		return sc.resetByCodec(st, http2.ErrCodeFlowControl)
	}
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		// Padding is never read by the handler: give it back now.
		sc.creditConn(pad)
		sc.creditStream(st, pad)
	}
	st.recvTotal += int64(len(data))
	if st.contentLength >= 0 && st.recvTotal > st.contentLength {
		return sc.resetByCodec(st, http2.ErrCodeProtocol)
	}
	if len(data) > 0 {
		if st.abandoned {
			sc.creditConn(int64(len(data)))
			sc.creditStream(st, int64(len(data)))
		} else {
			st.appendBody(data)
		}
	}
	if f.StreamEnded() {
		if st.contentLength >= 0 && st.recvTotal != st.contentLength {
			return sc.resetByCodec(st, http2.ErrCodeProtocol)
		}
		sc.endRemote(st)
	}
	st.readCond.Signal()
	return nil
}

func (sc *serverConn) onHeaders(f *http2.HeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return connError(http2.ErrCodeProtocol, "HEADERS on an even stream ID")
	}
	endStream := f.StreamEnded()
	selfDependent := f.HasPriority() && f.Priority.StreamDep == id
	kind, st := blockDiscard, (*serverStream)(nil)
	if cur := sc.streams[id]; cur != nil {
		switch {
		case cur.remoteDone:
			if err := sc.resetByCodec(cur, http2.ErrCodeStreamClosed); err != nil {
				return err
			}
		case selfDependent:
			if err := sc.resetByCodec(cur, http2.ErrCodeProtocol); err != nil {
				return err
			}
		default:
			kind, st = blockTrailers, cur
			st.trailers.Reset()
		}
	} else if id <= sc.maxClientID {
		switch {
		case sc.weReset(id):
			// Frames in flight when we reset the stream: decode and drop.
		case sc.recentlyClosed(id):
			return connError(http2.ErrCodeStreamClosed, "HEADERS on a closed stream")
		default:
			return connError(http2.ErrCodeProtocol, "stream ID lower than a previous one")
		}
	} else {
		sc.maxClientID = id
		switch {
		case sc.goAwaySent:
			// Above the last stream ID of our GOAWAY: the client retries
			// elsewhere.
		case selfDependent:
			sc.recordClosed(id, true)
			if !sc.writeRSTStream(id, http2.ErrCodeProtocol) {
				return errControlFlood
			}
		case uint32(len(sc.streams)) >= sc.maxConcurrent || sc.handlers >= handlersPerStreamSlot*int(sc.maxConcurrent):
			sc.recordClosed(id, true)
			if !sc.writeRSTStream(id, http2.ErrCodeRefusedStream) {
				return errControlFlood
			}
		default:
			kind, st = blockRequest, sc.newStream(id)
		}
	}
	sc.block.begin(kind, id, endStream, st)
	sc.hdec.SetEmitEnabled(kind != blockDiscard)
	return sc.headerFragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

func (sc *serverConn) onContinuation(f *http2.ContinuationFrame) error {
	// The Framer guarantees it follows HEADERS or CONTINUATION of the
	// same stream without END_HEADERS.
	b := &sc.block
	b.frames++
	if b.frames > sc.maxHeaderList/1024+16 {
		return connError(http2.ErrCodeEnhanceYourCalm, "too many CONTINUATION frames")
	}
	return sc.headerFragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

// headerFragment decodes one fragment of the header block in progress and
// finishes the block at END_HEADERS.
func (sc *serverConn) headerFragment(frag []byte, end bool) error {
	b := &sc.block
	b.encoded += len(frag)
	if b.encoded > 2*sc.maxHeaderList+1024 {
		// Far beyond the list limit: decoding it only burns CPU
		// (CONTINUATION flood, CVE-2024-27316).
		return connError(http2.ErrCodeEnhanceYourCalm, "header block too large")
	}
	if _, err := sc.hdec.Write(frag); err != nil {
		return connError(http2.ErrCodeCompression, err.Error())
	}
	if !end {
		return nil
	}
	if err := sc.hdec.Close(); err != nil {
		return connError(http2.ErrCodeCompression, err.Error())
	}
	kind := b.kind
	b.kind = blockNone
	switch kind {
	case blockRequest:
		return sc.openStream(b)
	case blockTrailers:
		st := b.st
		b.st = nil
		if b.tooLarge || b.finishTrailers() != nil {
			return sc.resetByCodec(st, http2.ErrCodeProtocol)
		}
		if st.contentLength >= 0 && st.recvTotal != st.contentLength {
			return sc.resetByCodec(st, http2.ErrCodeProtocol)
		}
		sc.endRemote(st)
		st.readCond.Signal()
	}
	return nil
}

// onHeaderField is the HPACK decoder's emit function.
func (sc *serverConn) onHeaderField(f hpack.HeaderField) {
	if !sc.block.field(f, sc.maxHeaderList, sc.maxHeaders) {
		sc.hdec.SetEmitEnabled(false)
	}
}

// openStream starts the stream of a complete request head, or refuses a
// malformed or oversized one.
func (sc *serverConn) openStream(b *headerBlock) error {
	st := b.st
	defer func() { b.st = nil }()
	if b.tooLarge {
		// Answer 431 as HTTP/1 does, without bothering a handler.
		sc.hbuf.Reset()
		sc.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "431"})
		sc.writeHeaderBlock(st.id, true, sc.hbuf.Bytes())
		return sc.refuseStream(st, b.endStream)
	}
	if err := b.finishRequest(sc.scheme); err != nil {
		sc.recordClosed(st.id, true)
		sc.releaseStream(st)
		if !sc.writeRSTStream(b.streamID, http2.ErrCodeProtocol) {
			return errControlFlood
		}
		return nil
	}
	st.contentLength = b.contentLength
	st.hasBody = !b.endStream
	st.expectContinue = b.expectContinue && !b.endStream
	st.remoteDone = b.endStream
	st.recv.init(sc.recvInitial)
	st.send = sendWindow(sc.peerInitialWindow)
	st.open = true
	sc.streams[st.id] = st
	sc.streamsOpened++
	if sc.maxRequests > 0 && sc.streamsOpened >= sc.maxRequests {
		// max_requests_per_connection: this stream is the last one; the
		// client moves to a new connection (Envoy sends GOAWAY too).
		sc.drainLocked()
	}
	if sc.awaitingFirst {
		sc.awaitingFirst = false
		sc.conn.SetReadDeadline(time.Time{})
	}
	if sc.idleTimer != nil {
		sc.idleTimer.Stop()
	}
	sc.handlers++
	sc.handlerWG.Add(1)
	go sc.runHandler(st)
	return nil
}

// refuseStream closes a stream answered by the codec itself; with the
// request body still coming, RST_STREAM NO_ERROR tells the client to stop
// sending it (RFC 9113 section 8.1).
func (sc *serverConn) refuseStream(st *serverStream, requestDone bool) error {
	sc.recordClosed(st.id, true)
	id := st.id
	sc.releaseStream(st)
	if !requestDone && !sc.writeRSTStream(id, http2.ErrCodeNo) {
		return errControlFlood
	}
	return nil
}

func (sc *serverConn) onPriority(f *http2.PriorityFrame) error {
	sc.priorityFrames++
	if sc.priorityFrames > frameFloodBase+priorityFramesPerStream*sc.streamsOpened {
		return errFrameFlood
	}
	if f.StreamDep != f.StreamID {
		return nil // priorities are advisory and we schedule FIFO
	}
	if st := sc.streams[f.StreamID]; st != nil {
		return sc.resetByCodec(st, http2.ErrCodeProtocol)
	}
	if !sc.writeRSTStream(f.StreamID, http2.ErrCodeProtocol) {
		return errControlFlood
	}
	return nil
}

func (sc *serverConn) onRSTStream(f *http2.RSTStreamFrame) error {
	if f.StreamID > sc.maxClientID {
		return connError(http2.ErrCodeProtocol, "RST_STREAM on an idle stream")
	}
	st := sc.streams[f.StreamID]
	if st == nil {
		return nil
	}
	premature := !st.localDone
	sc.resetStream(st, f.ErrCode, resetByPeer)
	if premature && !sc.takeResetToken() {
		return errResetFlood
	}
	return nil
}

// takeResetToken spends one token of the premature-reset bucket, which
// refills at resetRate per second up to two seconds' worth.
func (sc *serverConn) takeResetToken() bool {
	now := time.Now()
	if !sc.resetRefill.IsZero() {
		sc.resetTokens = min(sc.resetTokens+now.Sub(sc.resetRefill).Seconds()*sc.resetRate, 2*sc.resetRate)
	}
	sc.resetRefill = now
	if sc.resetTokens < 1 {
		return false
	}
	sc.resetTokens--
	return true
}

func (sc *serverConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		if !sc.settingsAcked {
			// The peer now uses our stream window: resize the windows of
			// streams opened under the default.
			sc.settingsAcked = true
			sc.recvInitial = sc.streamWindow
			for _, st := range sc.streams {
				st.recv.resize(sc.streamWindow)
			}
		}
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingHeaderTableSize:
			sc.henc.SetMaxDynamicTableSize(s.Val)
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - sc.peerInitialWindow
			sc.peerInitialWindow = int64(s.Val)
			for _, st := range sc.streams {
				if !st.send.add(delta) {
					return connError(http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window")
				}
			}
		case http2.SettingMaxFrameSize:
			sc.peerMaxFrame = s.Val
		}
		return nil
	})
	if err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return connError(http2.ErrCode(ce), "invalid SETTINGS value")
		}
		return err
	}
	sc.sendCond.Broadcast()
	if !sc.writeSettingsAck() {
		return errControlFlood
	}
	return nil
}

func (sc *serverConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	sc.windowUpdates++
	if sc.windowUpdates > frameFloodBase+windowUpdatesPerDataFrame*sc.dataFramesSent {
		return errFrameFlood
	}
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		if !sc.connSend.add(inc) {
			return connError(http2.ErrCodeFlowControl, "connection window overflow")
		}
		sc.sendCond.Broadcast()
		return nil
	}
	if f.StreamID > sc.maxClientID {
		return connError(http2.ErrCodeProtocol, "WINDOW_UPDATE on an idle stream")
	}
	st := sc.streams[f.StreamID]
	if st == nil {
		return nil
	}
	if !st.send.add(inc) {
		return sc.resetByCodec(st, http2.ErrCodeFlowControl)
	}
	sc.sendCond.Broadcast()
	return nil
}

// creditConn gives n bytes that left the connection window back to the
// peer, batched. mu is held.
func (sc *serverConn) creditConn(n int64) {
	sc.writeWindowUpdate(0, sc.connRecv.consume(n))
}

// creditStream does the same for a stream still receiving.
func (sc *serverConn) creditStream(st *serverStream, n int64) {
	inc := st.recv.consume(n)
	if !st.remoteDone && st.open {
		sc.writeWindowUpdate(st.id, inc)
	}
}

func (sc *serverConn) recordClosed(id uint32, weReset bool) {
	sc.recentClosed[sc.recentNext] = closedStream{id, weReset}
	sc.recentNext = (sc.recentNext + 1) % recentClosedSize
}

func (sc *serverConn) lookupClosed(id uint32) (closedStream, bool) {
	for _, c := range sc.recentClosed {
		if c.id == id {
			return c, true
		}
	}
	return closedStream{}, false
}

func (sc *serverConn) weReset(id uint32) bool {
	c, ok := sc.lookupClosed(id)
	return ok && c.weReset
}

func (sc *serverConn) recentlyClosed(id uint32) bool {
	_, ok := sc.lookupClosed(id)
	return ok
}

func (sc *serverConn) takeNotes() []resetNote {
	if len(sc.notes) == 0 {
		return nil
	}
	n := sc.notes
	sc.notes = nil
	return n
}

func runNotes(notes []resetNote) {
	for _, n := range notes {
		n.fn(n.code)
	}
}

// drain starts a graceful shutdown: GOAWAY with the last stream ID we
// processed, then close once the open streams finished.
func (sc *serverConn) drain() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.drainLocked()
}

// drainLocked is drain with mu held.
func (sc *serverConn) drainLocked() {
	if sc.closing || sc.draining {
		return
	}
	sc.draining = true
	sc.writeGoAway(sc.maxClientID, http2.ErrCodeNo, "")
	if len(sc.streams) == 0 {
		sc.beginClose()
	}
}

// onIdle closes a connection that had no open stream for IdleTimeout.
func (sc *serverConn) onIdle() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closing || len(sc.streams) > 0 {
		return
	}
	if !sc.goAwaySent {
		sc.writeGoAway(sc.maxClientID, http2.ErrCodeNo, "idle timeout")
	}
	sc.beginClose()
}

// beginClose has the writer flush what is queued and wake the reader,
// which tears the connection down. mu is held.
func (sc *serverConn) beginClose() {
	sc.closing = true
	sc.writerIdle = false
	sc.writeCond.Signal()
	sc.sendCond.Broadcast()
}

// teardown ends the connection after the read loop returned: it reports a
// connection error with GOAWAY, resets the streams still open, flushes,
// closes and waits for the handlers.
func (sc *serverConn) teardown(readErr error) error {
	sc.mu.Lock()
	code, remote := http2.ErrCodeCancel, true
	var pe *ProtocolError
	switch {
	case errors.As(readErr, &pe):
		if !sc.closing {
			sc.writeGoAway(sc.maxClientID, pe.Code, pe.Reason)
		}
		code, remote = pe.Code, false
	case readErr == ErrHeadersTimeout && !sc.closing:
		sc.writeGoAway(sc.maxClientID, http2.ErrCodeNo, "request headers timeout")
	}
	for _, st := range sc.streams {
		sc.resetStream(st, code, resetByConn(remote))
	}
	sc.beginClose()
	notes := sc.takeNotes()
	sc.mu.Unlock()
	runNotes(notes)

	t := time.NewTimer(closeFlushTimeout + 100*time.Millisecond)
	select {
	case <-sc.writerDone:
	case <-t.C:
		sc.conn.Close()
		<-sc.writerDone
	}
	t.Stop()
	if sc.idleTimer != nil {
		sc.idleTimer.Stop()
	}
	sc.mu.Lock()
	linger := sc.goAwaySent && sc.werr == nil
	sc.mu.Unlock()
	if linger {
		sc.lingerClose()
	}
	sc.conn.Close()
	sc.handlerWG.Wait()
	sc.br.Reset(nil)
	readerPool.Put(sc.br)
	sc.br = nil
	return readErr
}

// lingerClose half-closes and drops what the peer still sends for a
// moment: closing with unread input would reset the connection and could
// destroy the GOAWAY before the peer reads it.
func (sc *serverConn) lingerClose() {
	cw, ok := sc.conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	sc.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, io.LimitReader(sc.conn, 1<<20))
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
