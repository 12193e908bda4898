package http2

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// handlerFunc adapts a function to stream.Handler.
type handlerFunc func(stream.ServerStream)

func (f handlerFunc) ServeStream(s stream.ServerStream) { f(s) }

// testServer runs the codec on a 127.0.0.1 listener.
type testServer struct {
	t      testing.TB
	ln     net.Listener
	addr   string
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	errs []error
}

// startServer serves every accepted connection with h. wrap, if set,
// wraps the listener (TLS).
func startServer(t testing.TB, h stream.Handler, opts *stream.ServerOptions, wrap func(net.Listener) net.Listener) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if wrap != nil {
		ln = wrap(ln)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &testServer{t: t, ln: ln, addr: addr, cancel: cancel}
	codec := NewServerCodec()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				if tc, ok := c.(*tls.Conn); ok {
					hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
					err := tc.HandshakeContext(hctx)
					hcancel()
					if err != nil {
						c.Close()
						return
					}
				}
				err := codec.ServeConn(ctx, c, &stream.ConnInfo{}, h, opts)
				if err != nil {
					s.mu.Lock()
					s.errs = append(s.errs, err)
					s.mu.Unlock()
				}
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

// close drains every connection and waits for them, bounded.
func (s *testServer) close() {
	s.ln.Close()
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.t.Errorf("server connections did not end within 10s of drain")
	}
}

func (s *testServer) connErrors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.errs...)
}

// h2cClient is an x/net/http2 Transport speaking h2c with prior knowledge.
func h2cClient() *http.Client {
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// okHandler reads the request body and answers 200 with a small body.
var okHandler = handlerFunc(func(s stream.ServerStream) {
	io.Copy(io.Discard, s.Body())
	var h header.Map
	h.Add(":status", "200")
	h.Add("content-type", "text/plain")
	if s.WriteHeaders(&h, false) != nil {
		return
	}
	s.WriteBody([]byte("hello from sluice\n"), true)
})

// echoHandler answers with the request body, then the request's trailers
// (prefixed "echo-") as response trailers.
var echoHandler = handlerFunc(func(s stream.ServerStream) {
	var h header.Map
	h.Add(":status", "200")
	if err := s.WriteHeaders(&h, false); err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := s.Body().Read(buf)
		if n > 0 {
			if s.WriteBody(buf[:n], false) != nil {
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return
		}
	}
	var tr header.Map
	for _, f := range s.RequestTrailers().Fields() {
		tr.Add("echo-"+f.Name, f.Value)
	}
	tr.Add("x-body-done", "1")
	s.WriteTrailers(&tr)
})

// selfSignedTLS returns a server config for 127.0.0.1 offering h2.
func selfSignedTLS(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sluice test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{"h2"},
	}
}

// rawConn is a frame-level client for tests that misbehave on purpose.
type rawConn struct {
	t  testing.TB
	c  net.Conn
	fr *http2.Framer
}

// dialRaw connects, sends the preface and an empty SETTINGS frame.
func dialRaw(t testing.TB, addr string, settings ...http2.Setting) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpackDecoder()
	if err := fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return &rawConn{t: t, c: c, fr: fr}
}

// readUntil reads frames until match returns true or the connection ends
// (returns nil then), bounded by the connection deadline and max frames.
func (rc *rawConn) readUntil(match func(http2.Frame) bool) http2.Frame {
	for i := 0; i < 100000; i++ {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			if !errors.Is(err, io.EOF) && !isTimeout(err) && !errors.Is(err, net.ErrClosed) {
				var se http2.StreamError
				if errors.As(err, &se) {
					continue
				}
			}
			return nil
		}
		if match(f) {
			return f
		}
	}
	return nil
}

// goAway waits for a GOAWAY and returns it, or nil if the connection
// closed without one.
func (rc *rawConn) goAway() *http2.GoAwayFrame {
	f := rc.readUntil(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if f == nil {
		return nil
	}
	return f.(*http2.GoAwayFrame)
}

func hpackDecoder() *hpack.Decoder { return hpack.NewDecoder(4096, nil) }
