package http2

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	xhttp2 "golang.org/x/net/http2"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// clOpen starts n GET streams on mc, returning them in id order.
func clOpen(t *testing.T, f *clFake, mc *clientConn, n int) []stream.ClientConn {
	t.Helper()
	var out []stream.ClientConn
	for i := 0; i < n; i++ {
		cs, err := mc.NewStream()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs.Close() })
		cs.SetDeadline(time.Now().Add(5 * time.Second))
		if err := cs.WriteRequestHeaders(clRequest("GET", "/"), true); err != nil {
			t.Fatal(err)
		}
		f.expect(xhttp2.FrameHeaders)
		out = append(out, cs)
	}
	return out
}

func TestClientGoAwayRefusesLaterStreams(t *testing.T) {
	f, mc := clStartFake(t, nil)
	cs := clOpen(t, f, mc, 2) // ids 1 and 3
	f.write(func(fr *xhttp2.Framer) error { return fr.WriteGoAway(1, xhttp2.ErrCodeNo, nil) })
	if err := cs[1].ReadResponseHeaders(&header.Map{}); !clIsReset(err, xhttp2.ErrCodeRefusedStream, true) {
		t.Fatalf("stream 3: %v, want REFUSED_STREAM", err)
	}
	if mc.Usable() {
		t.Fatal("usable after GOAWAY")
	}
	f.writeHeaders(1, false, ":status", "200", "content-length", "2")
	f.write(func(fr *xhttp2.Framer) error { return fr.WriteData(1, true, []byte("ok")) })
	if err := cs[0].ReadResponseHeaders(&header.Map{}); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(cs[0].ResponseBody()); err != nil || string(b) != "ok" {
		t.Fatalf("stream 1: %q, %v", b, err)
	}
	cs[1].Close()
	cs[0].Close()
	select {
	case <-mc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("drained connection not closed")
	}
}

func TestClientConnectionErrors(t *testing.T) {
	tests := []struct {
		name     string
		send     func(f *clFake)
		wantCode xhttp2.ErrCode
	}{
		{"PUSH_PROMISE", func(f *clFake) {
			f.write(func(fr *xhttp2.Framer) error {
				return fr.WritePushPromise(xhttp2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: []byte{0x82}, EndHeaders: true})
			})
		}, xhttp2.ErrCodeProtocol},
		{"HEADERS on an idle stream", func(f *clFake) { f.writeHeaders(7, true, ":status", "200") }, xhttp2.ErrCodeProtocol},
		{"connection window overflow", func(f *clFake) {
			f.write(func(fr *xhttp2.Framer) error { return fr.WriteWindowUpdate(0, 1<<31-1) })
		}, xhttp2.ErrCodeFlowControl},
		{"ENABLE_PUSH=1", func(f *clFake) {
			f.write(func(fr *xhttp2.Framer) error {
				return fr.WriteSettings(xhttp2.Setting{ID: xhttp2.SettingEnablePush, Val: 1})
			})
		}, xhttp2.ErrCodeProtocol},
		{"DATA beyond the connection window", func(f *clFake) {
			f.writeHeaders(1, false, ":status", "200")
			for i := 0; i < 5; i++ { // 80 KiB > the 64 KiB window
				f.write(func(fr *xhttp2.Framer) error { return fr.WriteData(1, false, make([]byte, 16<<10)) })
			}
		}, xhttp2.ErrCodeFlowControl},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := &stream.ClientOptions{InitialStreamWindow: 1 << 20, InitialConnWindow: 65535}
			f, mc := clStartFake(t, opts)
			cs := clOpen(t, f, mc, 1)[0]
			tc.send(f)
			if got := f.expect(xhttp2.FrameGoAway); got.code != tc.wantCode {
				t.Errorf("GOAWAY %v, want %v", got.code, tc.wantCode)
			}
			select {
			case <-mc.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("connection not closed")
			}
			h := &header.Map{}
			err := cs.ReadResponseHeaders(h)
			if err == nil {
				_, err = io.ReadAll(cs.ResponseBody())
			}
			if !errors.Is(err, stream.ErrConnClosed) {
				t.Fatalf("stream: %v", err)
			}
			if mc.Usable() {
				t.Fatal("usable")
			}
		})
	}
}

func TestClientMalformedResponses(t *testing.T) {
	tests := []struct {
		name   string
		method string
		send   func(f *clFake)
	}{
		{"no :status", "GET", func(f *clFake) { f.writeHeaders(1, true, "x", "y") }},
		{"request pseudo-header", "GET", func(f *clFake) { f.writeHeaders(1, true, ":status", "200", ":path", "/") }},
		{"bad :status", "GET", func(f *clFake) { f.writeHeaders(1, true, ":status", "20x") }},
		{"101", "GET", func(f *clFake) { f.writeHeaders(1, true, ":status", "101") }},
		{"connection header", "GET", func(f *clFake) { f.writeHeaders(1, true, ":status", "200", "connection", "close") }},
		{"upper-case name", "GET", func(f *clFake) { f.writeHeaders(1, true, ":status", "200", "X-Up", "v") }},
		{"1xx with END_STREAM", "GET", func(f *clFake) { f.writeHeaders(1, true, ":status", "103") }},
		{"body longer than content-length", "GET", func(f *clFake) {
			f.writeHeaders(1, false, ":status", "200", "content-length", "2")
			f.write(func(fr *xhttp2.Framer) error { return fr.WriteData(1, true, []byte("abc")) })
		}},
		{"body shorter than content-length", "GET", func(f *clFake) {
			f.writeHeaders(1, false, ":status", "200", "content-length", "5")
			f.write(func(fr *xhttp2.Framer) error { return fr.WriteData(1, true, []byte("abc")) })
		}},
		{"body on HEAD", "HEAD", func(f *clFake) {
			f.writeHeaders(1, false, ":status", "200", "content-length", "3")
			f.write(func(fr *xhttp2.Framer) error { return fr.WriteData(1, true, []byte("abc")) })
		}},
		{"trailers without END_STREAM", "GET", func(f *clFake) {
			f.writeHeaders(1, false, ":status", "200")
			f.writeHeaders(1, false, "x-t", "v")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, mc := clStartFake(t, nil)
			cs, err := mc.NewStream()
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			cs.SetDeadline(time.Now().Add(5 * time.Second))
			cs.WriteRequestHeaders(clRequest(tc.method, "/"), true)
			f.expect(xhttp2.FrameHeaders)
			tc.send(f)
			// The reset fails the head if it came first, else the body.
			err = cs.ReadResponseHeaders(&header.Map{})
			if err == nil {
				_, err = io.ReadAll(cs.ResponseBody())
			}
			if !clIsReset(err, xhttp2.ErrCodeProtocol, false) {
				t.Fatalf("got %v, want a local PROTOCOL_ERROR reset", err)
			}
			if rst := f.expect(xhttp2.FrameRSTStream); rst.streamID != 1 || rst.code != xhttp2.ErrCodeProtocol {
				t.Errorf("RST_STREAM %+v", rst)
			}
			if !mc.Usable() {
				t.Error("a malformed response broke the connection")
			}
		})
	}
}

func TestClientCloseResetsIncompleteStream(t *testing.T) {
	f, mc := clStartFake(t, &stream.ClientOptions{InitialConnWindow: 65535})
	cs := clOpen(t, f, mc, 2)
	// Stream 1 completes: closing it sends nothing; stream 3 does not.
	f.writeHeaders(1, true, ":status", "204")
	if err := cs[0].ReadResponseHeaders(&header.Map{}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(cs[0].ResponseBody()); err != nil {
		t.Fatal(err)
	}
	if !cs[0].Reusable() {
		t.Error("complete exchange not reusable")
	}
	cs[0].Close()
	cs[1].Close()
	cs[1].Close() // idempotent
	if rst := f.expect(xhttp2.FrameRSTStream); rst.streamID != 3 || rst.code != xhttp2.ErrCodeCancel {
		t.Fatalf("RST_STREAM %+v", rst)
	}
	// Late frames of the reset stream are dropped, their window returned.
	f.writeHeaders(3, false, ":status", "200")
	for i := 0; i < 4; i++ { // the whole connection window
		f.write(func(fr *xhttp2.Framer) error { return fr.WriteData(3, false, make([]byte, 16<<10)) })
	}
	if wu := f.expect(xhttp2.FrameWindowUpdate); wu.streamID != 0 {
		t.Fatalf("WINDOW_UPDATE for stream %d", wu.streamID)
	}
	if !mc.Usable() || mc.Active() != 0 {
		t.Fatalf("usable %v active %d", mc.Usable(), mc.Active())
	}
}

func TestClientFrameSizesAndContinuation(t *testing.T) {
	f, mc := clStartFake(t, nil, xhttp2.Setting{ID: xhttp2.SettingMaxFrameSize, Val: 20000})
	f.expectSettingsAck() // from here the max frame size applies
	cs, err := mc.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	req := clRequest("POST", "/")
	req.Add("x-big", strings.Repeat("v", 50000)) // three frames' worth
	if err := cs.WriteRequestHeaders(req, false); err != nil {
		t.Fatal(err)
	}
	if got := f.expect(xhttp2.FrameHeaders); len(got.fields) != 5 || len(got.fields[4].Value) != 50000 {
		t.Fatalf("decoded %d fields", len(got.fields))
	}
	if err := cs.WriteRequestBody(make([]byte, 40000), true); err != nil {
		t.Fatal(err)
	}
	// 40000 bytes against a 65535 window and 20000-byte frames.
	total := uint32(0)
	for total < 40000 {
		d := f.expect(xhttp2.FrameData)
		if d.streamID != 1 || d.length > 20000 {
			t.Fatalf("DATA of %d bytes on stream %d", d.length, d.streamID)
		}
		total += d.length
		if end := d.flags&xhttp2.FlagDataEndStream != 0; end != (total == 40000) {
			t.Fatalf("END_STREAM %v after %d bytes", end, total)
		}
	}
}

func TestClientSendWindowFromSettings(t *testing.T) {
	f, mc := clStartFake(t, nil, xhttp2.Setting{ID: xhttp2.SettingInitialWindowSize, Val: 10})
	f.expectSettingsAck()
	cs, err := mc.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	cs.WriteRequestHeaders(clRequest("POST", "/"), false)
	done := make(chan error, 1)
	go func() { done <- cs.WriteRequestBody(make([]byte, 25), true) }()
	if d := f.expect(xhttp2.FrameData); d.length != 10 {
		t.Fatalf("first DATA of %d bytes against a 10-byte window", d.length)
	}
	select {
	case err := <-done:
		t.Fatalf("write finished beyond the window: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	// Raising the initial window opens the stream's window too.
	f.write(func(fr *xhttp2.Framer) error {
		return fr.WriteSettings(xhttp2.Setting{ID: xhttp2.SettingInitialWindowSize, Val: 100})
	})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("write still blocked after the window grew")
	}
	if d := f.expect(xhttp2.FrameData); d.length != 15 || d.flags&xhttp2.FlagDataEndStream == 0 {
		t.Fatalf("last DATA: %d bytes, flags %v", d.length, d.flags)
	}
}

func TestClientShutdown(t *testing.T) {
	f, mc := clStartFake(t, nil)
	cs := clOpen(t, f, mc, 1)[0]
	if err := mc.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if got := f.expect(xhttp2.FrameGoAway); got.code != xhttp2.ErrCodeNo {
		t.Fatalf("GOAWAY %v", got.code)
	}
	if mc.Usable() {
		t.Fatal("usable after Shutdown")
	}
	if _, err := mc.NewStream(); !errors.Is(err, stream.ErrConnClosed) {
		t.Fatalf("NewStream: %v", err)
	}
	// The stream in flight finishes; then the connection closes.
	f.writeHeaders(1, true, ":status", "200")
	if err := cs.ReadResponseHeaders(&header.Map{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-mc.Done():
		t.Fatal("closed before its last stream")
	case <-time.After(20 * time.Millisecond):
	}
	cs.Close()
	select {
	case <-mc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not closed after its last stream")
	}
}
