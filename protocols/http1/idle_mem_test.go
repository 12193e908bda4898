package http1

import (
	"bufio"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/stream"
)

// TestIdleConnMemory measures (it does not assert) the heap held per idle
// keep-alive connection: it opens n connections, sends one request on
// each, and compares runtime.MemStats before and after. The figure
// includes the client side of each loopback connection.
func TestIdleConnMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens thousands of connections")
	}
	const n = 2000
	ts := startServer(t, handlerFunc(echo), &stream.ServerOptions{IdleTimeout: time.Minute, RequestHeadersTimeout: 10 * time.Second})
	// Warm up the pools and the listener so they do not count.
	warm := dial(t, ts.addr)
	io.WriteString(warm, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	readResp(t, bufio.NewReader(warm), "GET")

	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var buf [512]byte
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", ts.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// The response is small and comes in one segment: read it raw so
		// the client side keeps no buffer.
		if _, err := c.Read(buf[:]); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	// Let the servers go back to waiting for their next request.
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapInuse) - int64(before.HeapInuse)
	stack := int64(after.StackInuse) - int64(before.StackInuse)
	t.Logf("%d idle keep-alive connections: heap in use %+d B (%.0f B/conn), stacks %+d B (%.0f B/conn)",
		n, heap, float64(heap)/n, stack, float64(stack)/n)
}
