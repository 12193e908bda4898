package http2

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	xhttp2 "golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/header"
)

// clFuzzSeed frames a valid response to stream 1 plus extras.
func clFuzzSeed() []byte {
	var out, hb bytes.Buffer
	fr := xhttp2.NewFramer(&out, nil)
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	enc.WriteField(hpack.HeaderField{Name: "content-length", Value: "5"})
	fr.WriteHeaders(xhttp2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WriteData(1, false, []byte("hel"))
	fr.WritePing(false, [8]byte{1})
	fr.WriteWindowUpdate(0, 1000)
	fr.WriteData(1, true, []byte("lo"))
	return out.Bytes()
}

// FuzzClientFrames feeds arbitrary server bytes, after a valid SETTINGS,
// to a connection with one request in flight: no panic, no hang.
func FuzzClientFrames(f *testing.F) {
	f.Add(clFuzzSeed())
	f.Add([]byte{0, 0, 4, 8, 0, 0, 0, 0, 1, 0, 0, 0, 0})             // WINDOW_UPDATE 0 on stream 1
	f.Add([]byte{0, 0, 0, 3, 0, 0, 0, 0, 1})                         // short RST_STREAM
	f.Add([]byte{0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}) // GOAWAY
	f.Fuzz(func(t *testing.T, data []byte) {
		c, s := net.Pipe()
		defer s.Close()
		go func() {
			// The server: swallow whatever the client writes, answer with
			// SETTINGS and the fuzz bytes, then hang up.
			go io.Copy(io.Discard, s)
			fr := xhttp2.NewFramer(s, nil)
			fr.WriteSettings(xhttp2.Setting{ID: xhttp2.SettingMaxConcurrentStreams, Val: 10})
			s.Write(data)
			s.Close()
		}()
		mc, err := NewClientCodec().NewMuxConn(c, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer mc.Close()
		cs, err := mc.NewStream()
		if err != nil {
			return
		}
		defer cs.Close()
		cs.SetDeadline(time.Now().Add(time.Second))
		if cs.WriteRequestHeaders(clRequest("GET", "/"), true) != nil {
			return
		}
		for i := 0; i < 10; i++ {
			h := &header.Map{}
			if cs.ReadResponseHeaders(h) != nil {
				return
			}
			if h.Value(":status") >= "200" {
				break
			}
		}
		io.Copy(io.Discard, cs.ResponseBody())
		cs.ResponseTrailers()
		select {
		case <-mc.Done():
		case <-time.After(2 * time.Second):
			t.Fatal("connection outlived its closed socket")
		}
	})
}
