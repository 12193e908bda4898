package http2

import (
	"bytes"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// BenchmarkServerUnary measures one GET and its small response through the
// codec over loopback TCP, with a frame-level client so the numbers are
// the server's.
func BenchmarkServerUnary(b *testing.B) {
	body := []byte("hello from sluice\n")
	h := handlerFunc(func(s stream.ServerStream) {
		var rh header.Map
		rh.Add(":status", "200")
		rh.Add("content-type", "text/plain")
		s.WriteHeaders(&rh, false)
		s.WriteBody(body, true)
	})
	srv := startServer(b, h, nil, nil)
	rc := dialRaw(b, srv.addr)
	rc.fr.ReadMetaHeaders = nil // count frames, skip decoding
	rc.fr.WriteWindowUpdate(0, 1<<30)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	var credit uint32
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := uint32(2*i + 1)
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/bench"}, {":authority", "bench"}, {"user-agent", "bench"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			b.Fatal(err)
		}
		for {
			f, err := rc.fr.ReadFrame()
			if err != nil {
				b.Fatal(err)
			}
			if d, ok := f.(*http2.DataFrame); ok && d.StreamID == id {
				credit += uint32(len(d.Data()))
				if d.StreamEnded() {
					break
				}
			}
		}
		if credit > 1<<20 {
			rc.fr.WriteWindowUpdate(0, credit)
			credit = 0
		}
	}
}
