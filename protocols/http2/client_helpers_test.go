package http2

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	xhttp2 "golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// clTestServer is x/net's HTTP/2 server speaking h2c on a loopback port.
type clTestServer struct {
	ln  net.Listener
	hs  *http.Server
	h2  *xhttp2.Server
	wg  sync.WaitGroup
	mu  sync.Mutex
	cns []net.Conn
}

func clStartServer(t testing.TB, h http.Handler, conf func(*xhttp2.Server)) *clTestServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &clTestServer{ln: ln, hs: &http.Server{Handler: h}, h2: &xhttp2.Server{}}
	if conf != nil {
		conf(ts.h2)
	}
	// Registers the graceful shutdown hook http.Server.Shutdown triggers.
	if err := xhttp2.ConfigureServer(ts.hs, ts.h2); err != nil {
		t.Fatal(err)
	}
	ts.wg.Add(1)
	go func() {
		defer ts.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ts.mu.Lock()
			ts.cns = append(ts.cns, c)
			ts.mu.Unlock()
			ts.wg.Add(1)
			go func() {
				defer ts.wg.Done()
				ts.h2.ServeConn(c, &xhttp2.ServeConnOpts{BaseConfig: ts.hs, Handler: h})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		ts.mu.Lock()
		for _, c := range ts.cns {
			c.Close()
		}
		ts.mu.Unlock()
		ts.wg.Wait()
	})
	return ts
}

// dial opens a client connection to the server, closed at cleanup.
func (ts *clTestServer) dial(t testing.TB, opts *stream.ClientOptions) *clientConn {
	t.Helper()
	c, err := net.Dial("tcp", ts.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	mc, err := NewClientCodec().NewMuxConn(c, opts)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { mc.Close() })
	return mc.(*clientConn)
}

func clRequest(method, path string) *header.Map {
	h := &header.Map{}
	h.Add(":method", method)
	h.Add(":scheme", "http")
	h.Add(":authority", "sluice.test")
	h.Add(":path", path)
	return h
}

// clResponse is what clExchange read.
type clResponse struct {
	heads    []*header.Map // interim heads, then the final one
	body     []byte
	trailers header.Map
	reusable bool
}

func (r *clResponse) final() *header.Map { return r.heads[len(r.heads)-1] }

// clExchange sends one request on a new stream of mc and reads the whole
// response, all within a deadline.
func clExchange(t testing.TB, mc stream.MuxConn, req *header.Map, body []byte, trailers *header.Map) (*clResponse, error) {
	t.Helper()
	cs, err := mc.NewStream()
	if err != nil {
		return nil, err
	}
	defer cs.Close()
	cs.SetDeadline(time.Now().Add(20 * time.Second))
	end := body == nil && trailers == nil
	if err := cs.WriteRequestHeaders(req, end); err != nil {
		return nil, err
	}
	// The body goes up while the response comes down: a server echoing
	// it would otherwise stall on a window nobody reads.
	writeErr := make(chan error, 1)
	go func() {
		if end {
			writeErr <- nil
			return
		}
		if err := cs.WriteRequestBody(body, trailers == nil); err != nil {
			writeErr <- err
			return
		}
		if trailers != nil {
			if err := cs.WriteRequestTrailers(trailers); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- cs.Flush()
	}()
	resp := &clResponse{}
	for {
		h := &header.Map{}
		if err := cs.ReadResponseHeaders(h); err != nil {
			cs.Close()
			<-writeErr
			return nil, err
		}
		resp.heads = append(resp.heads, h)
		if h.Value(":status") >= "200" {
			break
		}
	}
	resp.body, err = io.ReadAll(cs.ResponseBody())
	if werr := <-writeErr; werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		return nil, err
	}
	resp.trailers = cs.ResponseTrailers().Clone()
	resp.reusable = cs.Reusable()
	return resp, nil
}

// clWaitFor polls cond for at most five seconds.
func clWaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func clIsReset(err error, code xhttp2.ErrCode, remote bool) bool {
	var rs *stream.ErrStreamReset
	return errors.As(err, &rs) && rs.Code == uint32(code) && rs.Remote == remote
}

// clFrame is what the fake server saw of a client frame.
type clFrame struct {
	typ      xhttp2.FrameType
	streamID uint32
	flags    xhttp2.Flags
	length   uint32
	code     xhttp2.ErrCode // RST_STREAM, GOAWAY
	fields   []hpack.HeaderField
}

// clFake is a scripted HTTP/2 server on a raw framer, for what a real
// server will not do.
type clFake struct {
	t      testing.TB
	conn   net.Conn
	fr     *xhttp2.Framer
	wmu    sync.Mutex
	enc    *hpack.Encoder
	buf    bytes.Buffer
	frames chan clFrame
}

// clStartFake connects a client to a fake server that has read the
// preface and answered with settings.
func clStartFake(t testing.TB, opts *stream.ClientOptions, settings ...xhttp2.Setting) (*clFake, *clientConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	mc, err := NewClientCodec().NewMuxConn(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	f := clStartFakeOn(t, sc, settings...)
	t.Cleanup(func() { mc.Close() })
	return f, mc.(*clientConn)
}

func clStartFakeOn(t testing.TB, sc net.Conn, settings ...xhttp2.Setting) *clFake {
	f := &clFake{t: t, conn: sc, frames: make(chan clFrame, 1024)}
	f.fr = xhttp2.NewFramer(sc, sc)
	f.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	f.enc = hpack.NewEncoder(&f.buf)
	sc.SetDeadline(time.Now().Add(10 * time.Second))
	preface := make([]byte, len(xhttp2.ClientPreface))
	if _, err := io.ReadFull(sc, preface); err != nil || string(preface) != xhttp2.ClientPreface {
		t.Fatalf("preface %q: %v", preface, err)
	}
	f.fr.WriteSettings(settings...)
	go f.readLoop()
	t.Cleanup(func() { sc.Close() })
	return f
}

func (f *clFake) readLoop() {
	defer close(f.frames)
	for {
		fr, err := f.fr.ReadFrame()
		if err != nil {
			return
		}
		fh := fr.Header()
		seen := clFrame{typ: fh.Type, streamID: fh.StreamID, flags: fh.Flags, length: fh.Length}
		switch fr := fr.(type) {
		case *xhttp2.RSTStreamFrame:
			seen.code = fr.ErrCode
		case *xhttp2.GoAwayFrame:
			seen.code = fr.ErrCode
		case *xhttp2.MetaHeadersFrame:
			seen.fields = append([]hpack.HeaderField(nil), fr.Fields...)
		case *xhttp2.SettingsFrame:
			if !fr.IsAck() {
				f.wmu.Lock()
				f.fr.WriteSettingsAck()
				f.wmu.Unlock()
			}
		}
		select {
		case f.frames <- seen:
		default: // nobody is looking: keep reading
		}
	}
}

// expect waits for the next client frame of type typ, skipping others.
func (f *clFake) expect(typ xhttp2.FrameType) clFrame {
	f.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case fr, ok := <-f.frames:
			if !ok {
				f.t.Fatalf("connection closed waiting for %v", typ)
			}
			if fr.typ == typ {
				return fr
			}
		case <-timeout:
			f.t.Fatalf("timed out waiting for %v", typ)
		}
	}
}

func (f *clFake) writeHeaders(id uint32, end bool, kv ...string) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.buf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		f.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	f.fr.WriteHeaders(xhttp2.HeadersFrameParam{StreamID: id, BlockFragment: f.buf.Bytes(), EndStream: end, EndHeaders: true})
}

func (f *clFake) write(fn func(fr *xhttp2.Framer) error) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if err := fn(f.fr); err != nil {
		f.t.Errorf("fake server write: %v", err)
	}
}

// expectSettingsAck waits for the client's ACK of our SETTINGS, from
// when they apply.
func (f *clFake) expectSettingsAck() {
	f.t.Helper()
	for {
		if fr := f.expect(xhttp2.FrameSettings); fr.flags&xhttp2.FlagSettingsAck != 0 {
			return
		}
	}
}
