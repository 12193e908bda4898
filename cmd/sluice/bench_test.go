package main

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// rawOrigin answers every GET on a keep-alive connection with a fixed
// response, allocating nothing per request, so a benchmark's allocs/op are
// the proxy's.
func rawOrigin(tb testing.TB, body string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				buf := make([]byte, 64<<10)
				have := 0
				for {
					n, err := c.Read(buf[have:])
					if err != nil {
						return
					}
					have += n
					for {
						i := bytes.Index(buf[:have], []byte("\r\n\r\n"))
						if i < 0 {
							break
						}
						if _, err := c.Write(resp); err != nil {
							return
						}
						copy(buf, buf[i+4:have])
						have -= i + 4
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String()
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// readFull reads one response of known total length.
func readN(c net.Conn, buf []byte, n int) error {
	_, err := io.ReadFull(c, buf[:n])
	return err
}

// BenchmarkProxyKeepAlive measures one proxied GET on a keep-alive
// connection through a real loopback listener and upstream pool.
func BenchmarkProxyKeepAlive(b *testing.B) {
	origin := rawOrigin(b, "hello world")
	m := hcm(prefixRoute("all", "/", "up"))
	m.GenerateRequestID = false
	m.UseRemoteAddress = false
	srv := startServer(b, snapshot(m, cluster("up", origin)))
	addr := srv.ListenerAddr("main").String()

	req := []byte("GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	// Learn the response length once.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Write(req)
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil || !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 200")) {
		b.Fatalf("warm-up: %q %v", buf[:n], err)
	}
	respLen := n

	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if err := readN(c, buf, respLen); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkProxyParallel drives several keep-alive connections at once.
func BenchmarkProxyParallel(b *testing.B) {
	origin := rawOrigin(b, "hello world")
	m := hcm(prefixRoute("all", "/", "up"))
	srv := startServer(b, snapshot(m, cluster("up", origin)))
	addr := srv.ListenerAddr("main").String()
	req := []byte("GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n")
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		respLen := 0
		for pb.Next() {
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			if respLen == 0 {
				n, err := c.Read(buf)
				if err != nil {
					b.Error(err)
					return
				}
				respLen = n
				continue
			}
			if err := readN(c, buf, respLen); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
