package bench

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/filters/headermutation"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/lua"
	"github.com/sluice-proxy/sluice/protocols/http1"
	"github.com/sluice-proxy/sluice/wasm"
	"github.com/sluice-proxy/sluice/xds"
)

// builtins mirrors cmd/sluice/wiring.go (package main cannot be imported).
func builtins() *stream.Registry {
	r := stream.NewRegistry()
	r.RegisterCodec("http1", http1.NewServerCodec(), http1.NewClientCodec())
	r.RegisterFilter(headermutation.Compiler{}, headermutation.TypeNames...)
	r.RegisterFilter(lua.Compiler{Log: slog.New(slog.DiscardHandler)}, lua.TypeURL, lua.TypeURLPerRoute)
	r.RegisterFilter(wasm.Compiler{Log: slog.New(slog.DiscardHandler)}, wasm.TypeURL)
	return r
}

// proxyCase is one proxied request shape: a sluice config variant and a
// request path.
type proxyCase struct {
	name    string
	variant string
	path    string
}

var proxyCases = []proxyCase{
	{"keepalive-small", VariantPlain, "/small"},
	{"keepalive-16k", VariantPlain, "/16k"},
	{"header-mutation", VariantHeaderMutation, "/small"},
	{"routes100-last", VariantRoutes100, "/p099/small"},
	{"lua-headers", VariantLua, "/small"},
	{"wasm-header", VariantWasm, "/small"},
	{"wasm-lean-header", VariantWasmLean, "/small"},
}

// startOrigin serves ServeOrigin on a loopback port until the test ends.
func startOrigin(tb testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go ServeOrigin(ln)
	return ln.Addr().(*net.TCPAddr).Port
}

// startProxy runs sluice in-process (engine/server, the cmd/sluice wiring)
// with the variant's Envoy bootstrap in front of a raw origin, and returns
// the listener's address.
func startProxy(tb testing.TB, variant string) string {
	tb.Helper()
	origin := startOrigin(tb)
	snap, err := xds.LoadBootstrap([]byte(SluiceConfig(0, origin, variant)), "bench.yaml")
	if err != nil {
		tb.Fatalf("config: %v", err)
	}
	srv := server.New(server.Options{Registry: builtins(), Log: slog.New(slog.DiscardHandler),
		AdminAddress: "off", DrainTimeout: time.Second})
	if err := srv.Apply(snap); err != nil {
		tb.Fatalf("apply: %v", err)
	}
	tb.Cleanup(srv.Shutdown)
	return srv.ListenerAddr("bench").String()
}

// rawClient is one keep-alive connection that sends a fixed GET and reads a
// response of known length, allocating nothing per request.
type rawClient struct {
	c       net.Conn
	req     []byte
	buf     []byte
	respLen int
}

func newRawClient(tb testing.TB, addr, path string) *rawClient {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	rc := &rawClient{c: c, buf: make([]byte, 64<<10),
		req: []byte("GET " + path + " HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")}
	// Learn the response length from the first response.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(rc.req); err != nil {
		tb.Fatal(err)
	}
	have := 0
	for {
		n, err := c.Read(rc.buf[have:])
		if err != nil {
			tb.Fatalf("first response: %v after %q", err, rc.buf[:have])
		}
		have += n
		i := bytes.Index(rc.buf[:have], []byte("\r\n\r\n"))
		if i < 0 {
			continue
		}
		head := string(rc.buf[:i])
		if !strings.HasPrefix(head, "HTTP/1.1 200 ") {
			tb.Fatalf("first response: %q", head)
		}
		cl := -1
		for _, line := range strings.Split(head, "\r\n")[1:] {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "content-length") {
				cl, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if cl < 0 {
			tb.Fatalf("first response has no Content-Length: %q", head)
		}
		rc.respLen = i + 4 + cl
		if have < rc.respLen {
			if _, err := io.ReadFull(c, rc.buf[have:rc.respLen]); err != nil {
				tb.Fatal(err)
			}
		}
		break
	}
	c.SetDeadline(time.Time{})
	return rc
}

// do sends one request and reads its response.
func (rc *rawClient) do() error {
	if _, err := rc.c.Write(rc.req); err != nil {
		return err
	}
	_, err := io.ReadFull(rc.c, rc.buf[:rc.respLen])
	return err
}

// BenchmarkProxyRequest is one proxied request end to end through the
// engine: a keep-alive client connection, the HTTP/1.1 codec, the
// connection manager (filters, routing) and a pooled upstream connection,
// over loopback. Client and origin allocate nothing per request, so
// allocs/op are the proxy's.
func BenchmarkProxyRequest(b *testing.B) {
	for _, pc := range proxyCases {
		b.Run(pc.name, func(b *testing.B) {
			rc := newRawClient(b, startProxy(b, pc.variant), pc.path)
			b.ReportAllocs()
			for b.Loop() {
				if err := rc.do(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}

// The tests run in bench/: the Wasm variant's module is one level up.
func init() {
	WasmModule = "../wasm/testdata/goguest.wasm"
	WasmLeanModule = "../wasm/testdata/watguest.wasm"
}
