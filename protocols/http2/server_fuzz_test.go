package http2

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/stream"
)

// fuzzSeeds are valid frame sequences (after the preface and SETTINGS):
// requests with bodies, trailers, CONTINUATION, and control frames.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	build := func(write func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer)) {
		var out, hb bytes.Buffer
		fr := http2.NewFramer(&out, nil)
		write(fr, hpack.NewEncoder(&hb), &hb)
		seeds = append(seeds, out.Bytes())
	}
	head := func(enc *hpack.Encoder, hb *bytes.Buffer, method string, extra ...string) []byte {
		hb.Reset()
		for _, f := range [][2]string{{":method", method}, {":scheme", "http"}, {":path", "/"}, {":authority", "fuzz"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		for i := 0; i+1 < len(extra); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
		}
		return append([]byte(nil), hb.Bytes()...)
	}
	build(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: head(enc, hb, "GET"), EndStream: true, EndHeaders: true})
	})
	build(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: head(enc, hb, "POST", "content-length", "5"), EndHeaders: true})
		fr.WriteData(1, false, []byte("hel"))
		fr.WriteDataPadded(1, true, []byte("lo"), []byte{0, 0, 0})
		fr.WritePing(false, [8]byte{1})
		fr.WriteWindowUpdate(0, 1000)
	})
	build(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		block := head(enc, hb, "POST", "te", "trailers")
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block[:3]})
		fr.WriteContinuation(3, true, block[3:])
		fr.WriteData(3, false, []byte("body"))
		hb.Reset()
		enc.WriteField(hpack.HeaderField{Name: "grpc-status", Value: "0"})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	})
	build(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: head(enc, hb, "GET"), EndHeaders: true,
			Priority: http2.PriorityParam{StreamDep: 0, Weight: 10}})
		fr.WritePriority(5, http2.PriorityParam{StreamDep: 1})
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	})
	return seeds
}

// FuzzServerFrames feeds arbitrary bytes after a valid preface and
// SETTINGS to ServeConn: it must neither panic nor hang.
func FuzzServerFrames(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		defer client.Close()
		served := make(chan error, 1)
		go func() {
			served <- NewServerCodec().ServeConn(context.Background(), server, &stream.ConnInfo{}, okHandler,
				&stream.ServerOptions{WriteTimeout: time.Second})
		}()
		// The server's output must be drained: net.Pipe does not buffer.
		go io.Copy(io.Discard, client)
		var pre bytes.Buffer
		pre.WriteString(http2.ClientPreface)
		http2.NewFramer(&pre, nil).WriteSettings()
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write(pre.Bytes())
		client.Write(data)
		client.Close()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatal("ServeConn did not return after the client closed")
		}
	})
}
