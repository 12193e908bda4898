package http2

import (
	"io"
	"net/http"
	"testing"

	"github.com/sluice-proxy/sluice/engine/header"
)

// BenchmarkClientUnary is one GET and its 1 KiB response per iteration,
// against x/net's server over loopback.
func BenchmarkClientUnary(b *testing.B) {
	payload := make([]byte, 1024)
	ts := clStartServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(payload)
	}), nil)
	mc := ts.dial(b, nil)
	req := clRequest("GET", "/bench")
	req.Add("User-Agent", "sluice-bench")
	var resp header.Map
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		cs, err := mc.NewStream()
		if err != nil {
			b.Fatal(err)
		}
		if err := cs.WriteRequestHeaders(req, true); err != nil {
			b.Fatal(err)
		}
		resp.Reset()
		if err := cs.ReadResponseHeaders(&resp); err != nil {
			b.Fatal(err)
		}
		body := cs.ResponseBody()
		n := 0
		for {
			m, err := body.Read(buf)
			n += m
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		if n != len(payload) || !cs.Reusable() {
			b.Fatalf("read %d bytes, reusable %v", n, cs.Reusable())
		}
		cs.Close()
	}
}
