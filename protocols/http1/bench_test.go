package http1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

var benchRequest = []byte("GET /api/v1/users/12345?include=profile HTTP/1.1\r\n" +
	"Host: api.example.com\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n" +
	"Accept: application/json\r\n" +
	"Accept-Encoding: gzip, deflate, br\r\n" +
	"Accept-Language: en-US,en;q=0.9\r\n" +
	"Cookie: session=0123456789abcdef; theme=dark\r\n" +
	"X-Request-Id: 6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b\r\n" +
	"Connection: keep-alive\r\n\r\n")

func BenchmarkParseRequest(b *testing.B) {
	rd := bytes.NewReader(benchRequest)
	br := bufio.NewReaderSize(rd, bufSize)
	var acc []byte
	var h header.Map
	var ri reqInfo
	b.ReportAllocs()
	b.SetBytes(int64(len(benchRequest)))
	for b.Loop() {
		rd.Reset(benchRequest)
		br.Reset(rd)
		h.Reset()
		s, err := readHead(br, &acc, defaultMaxHeaderBytes, false)
		if err != nil {
			b.Fatal(err)
		}
		if err := parseRequestHead(s, "http", defaultMaxHeaders, &h, &ri); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteResponse(b *testing.B) {
	body := []byte("{\"id\":12345}\n")
	for _, bc := range []struct {
		name string
		h    *header.Map
	}{
		{"content-length", mapOf(":status", "200", "Content-Type", "application/json", "Content-Length", "13",
			"Date", "Mon, 01 Jan 2024 00:00:00 GMT", "Server", "upstream", "Cache-Control", "no-store", "X-Request-Id", "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b")},
		{"chunked", mapOf(":status", "200", "Content-Type", "application/json",
			"Date", "Mon, 01 Jan 2024 00:00:00 GMT", "Server", "upstream", "Cache-Control", "no-store", "X-Request-Id", "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dc := &discardConn{}
			c := connPool.Get().(*serverConn)
			c.init(dc, &stream.ConnInfo{}, nil, nil)
			c.acquire()
			defer func() { c.release(); connPool.Put(c) }()
			st := &c.st
			b.ReportAllocs()
			for b.Loop() {
				st.begin()
				st.ri = reqInfo{method: "GET", minor: 1, contentLength: -1}
				st.body.reset(c.br, bodyNone, 0)
				if err := st.WriteHeaders(bc.h, false); err != nil {
					b.Fatal(err)
				}
				if err := st.WriteBody(body, true); err != nil {
					b.Fatal(err)
				}
			}
			if dc.writes != b.N {
				b.Fatalf("%d writes for %d responses", dc.writes, b.N)
			}
		})
	}
}

// BenchmarkServeConn is the whole server path per request: read and parse
// the head, call the handler, write a small response.
func BenchmarkServeConn(b *testing.B) {
	body := []byte("hello world\n")
	resp := mapOf(":status", "200", "Content-Type", "text/plain", "Content-Length", "12")
	h := handlerFunc(func(s stream.ServerStream) {
		s.WriteHeaders(resp, false)
		s.WriteBody(body, true)
	})
	b.ReportAllocs()
	b.ResetTimer()
	dc := &discardConn{fakeConn{r: &repeatReader{msg: benchRequest, n: b.N}}}
	if err := NewServerCodec().ServeConn(context.Background(), dc, &stream.ConnInfo{}, h, &stream.ServerOptions{}); err != nil {
		b.Fatal(err)
	}
	if dc.writes != b.N {
		b.Fatalf("%d writes for %d requests", dc.writes, b.N)
	}
}

// BenchmarkClientExchange writes a request and reads a small response.
func BenchmarkClientExchange(b *testing.B) {
	respBytes := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nServer: upstream\r\n\r\n{\"id\":12345}\n")
	req := mapOf(":method", "GET", ":path", "/api/v1/users/12345", ":authority", "api.example.com", ":scheme", "http",
		"User-Agent", "Mozilla/5.0", "Accept", "application/json", "X-Request-Id", "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b", "X-Forwarded-For", "10.0.0.1")
	dc := &discardConn{fakeConn{r: &repeatReader{msg: respBytes, n: 1 << 62}}}
	cc := NewClientCodec().NewClientConn(dc)
	var h header.Map
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		if err := cc.WriteRequestHeaders(req, true); err != nil {
			b.Fatal(err)
		}
		h.Reset()
		if err := cc.ReadResponseHeaders(&h); err != nil {
			b.Fatal(err)
		}
		for {
			_, err := cc.ResponseBody().Read(buf)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}
