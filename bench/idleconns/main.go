// Command idleconns opens N keep-alive connections to an HTTP/1.1 server,
// sends one GET on each and reads its response, then holds them all idle
// until stdin closes, a signal arrives or -hold passes.
//
//	idleconns -addr 127.0.0.1:8080 -n 10000 [-path /small] [-hold 60s]
//
// It prints "ready N" on stdout once every connection has had its response
// (or "failed K of N: first error" and exits 1).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "", "server address host:port")
	n := flag.Int("n", 10000, "connections to open")
	path := flag.String("path", "/small", "path of the one request per connection")
	workers := flag.Int("workers", 64, "connections opened concurrently")
	hold := flag.Duration("hold", 2*time.Minute, "longest time to hold the connections")
	flag.Parse()
	if *addr == "" {
		fmt.Fprintln(os.Stderr, "idleconns: -addr is required")
		os.Exit(2)
	}

	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: bench\r\nUser-Agent: idleconns\r\n\r\n")
	conns := make([]net.Conn, *n)
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *n {
					return
				}
				c, err := open(*addr, req)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		fmt.Printf("failed %d of %d: %v\n", f, *n, firstErr.Load())
		os.Exit(1)
	}
	fmt.Printf("ready %d in %.2fs\n", *n, time.Since(start).Seconds())

	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-sig:
	case <-time.After(*hold):
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// open dials, sends one request and reads its whole response, leaving the
// connection open and idle.
func open(addr string, req []byte) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != 200 || resp.Close || br.Buffered() > 0 {
		c.Close()
		return nil, fmt.Errorf("status %d, close %v, %d stray bytes", resp.StatusCode, resp.Close, br.Buffered())
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
