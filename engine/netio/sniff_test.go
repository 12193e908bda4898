package netio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// transports are the two ways sniff sees a connection: a TCP socket
// (peeked, nothing consumed) and a pipe (read and replayed).
var transports = []struct {
	name string
	pair func(t *testing.T) (server, client net.Conn)
}{
	{"tcp", tcpPair},
	{"pipe", func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() }},
}

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		cli.Close()
		t.Fatal(err)
	}
	return srv, cli
}

func TestSniff(t *testing.T) {
	preface := HTTP2Preface
	tests := []struct {
		name    string
		sniff   func(net.Conn) (net.Conn, bool, error)
		chunks  []string // written by the client, with a pause between
		closeW  bool     // client closes after writing
		want    bool
		wantErr error // errors.Is
	}{
		{name: "tls hello", sniff: SniffTLS, chunks: []string{"\x16\x03\x01\x00\x05hello"}, want: true},
		{name: "tls plaintext", sniff: SniffTLS, chunks: []string{"GET / HTTP/1.1\r\n\r\n"}, want: false},
		{name: "tls closed", sniff: SniffTLS, closeW: true, wantErr: io.EOF},
		{name: "h2 preface whole", sniff: SniffHTTP2, chunks: []string{preface + "\x00\x00\x00\x04"}, want: true},
		{name: "h2 preface in pieces", sniff: SniffHTTP2, chunks: []string{"PRI * HT", "TP/2.0\r\n", "\r\nSM\r\n\r\n"}, want: true},
		{name: "h1 GET", sniff: SniffHTTP2, chunks: []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n"}, want: false},
		// A mismatch is enough: the client need not send more.
		{name: "h1 PUT decided on second byte", sniff: SniffHTTP2, chunks: []string{"PU"}, want: false},
		{name: "h1 short request line", sniff: SniffHTTP2, chunks: []string{"PRI * HTTP/1.1\r\n\r\n"}, want: false},
		{name: "h2 prefix then close", sniff: SniffHTTP2, chunks: []string{"PRI * "}, closeW: true, want: false},
		{name: "h2 closed", sniff: SniffHTTP2, closeW: true, wantErr: io.EOF},
	}
	for _, tr := range transports {
		for _, tt := range tests {
			t.Run(tr.name+"/"+tt.name, func(t *testing.T) {
				srv, cli := tr.pair(t)
				defer srv.Close()
				defer cli.Close()
				srv.SetDeadline(time.Now().Add(5 * time.Second))
				sent := make(chan string, 1)
				go func() {
					var all string
					for _, c := range tt.chunks {
						if _, err := io.WriteString(cli, c); err != nil {
							break
						}
						all += c
						time.Sleep(10 * time.Millisecond)
					}
					if tt.closeW {
						cli.Close()
					}
					sent <- all
				}()
				c, got, err := tt.sniff(srv)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("err = %v, want %v", err, tt.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if got != tt.want {
					t.Errorf("detected = %v, want %v", got, tt.want)
				}
				// A socket is peeked, not read: the codec gets it bare.
				if tr.name == "tcp" && !tt.closeW && c != srv {
					t.Errorf("sniff wrapped a TCP connection in %T", c)
				}
				// Everything the client sent is still there for the codec.
				type result struct {
					b   []byte
					err error
				}
				read := make(chan result, 1)
				go func() {
					b, err := io.ReadAll(c)
					read <- result{b, err}
				}()
				all := <-sent
				if !tt.closeW {
					cli.Close()
				}
				r := <-read
				if r.err != nil && !errors.Is(r.err, io.ErrClosedPipe) {
					t.Fatalf("read after sniff: %v", r.err)
				}
				if string(r.b) != all {
					t.Errorf("codec reads %q, want %q", r.b, all)
				}
			})
		}
	}
}

// A client that sends nothing is cut off by the read deadline.
func TestSniffDeadline(t *testing.T) {
	for _, tr := range transports {
		for _, sniff := range []func(net.Conn) (net.Conn, bool, error){SniffTLS, SniffHTTP2} {
			t.Run(tr.name, func(t *testing.T) {
				srv, cli := tr.pair(t)
				defer srv.Close()
				defer cli.Close()
				go io.WriteString(cli, "PRI") // a matching prefix, then silence
				srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				done := make(chan error, 1)
				go func() {
					_, _, err := sniff(srv)
					done <- err
				}()
				select {
				case err := <-done:
					if sniffTLSDecided := err == nil; sniffTLSDecided {
						return // SniffTLS decides on the first byte
					}
					if !errors.Is(err, os.ErrDeadlineExceeded) {
						t.Errorf("err = %v, want a deadline error", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("sniff ignored the deadline")
				}
			})
		}
	}
}

// peekedConn keeps what the codecs use: CloseWrite reaches the socket,
// WriteTo and ReadFrom move the replayed bytes first.
func TestPeekedConn(t *testing.T) {
	srv, cli := tcpPair(t)
	defer srv.Close()
	defer cli.Close()
	pc := &peekedConn{Conn: srv, buf: []byte("ahead:")}
	go func() {
		io.WriteString(cli, "rest")
		cli.(*net.TCPConn).CloseWrite()
	}()
	var got bytes.Buffer
	if _, err := pc.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	if got.String() != "ahead:rest" {
		t.Errorf("WriteTo copied %q", got.String())
	}
	if _, err := pc.ReadFrom(bytes.NewReader([]byte("pong"))); err != nil {
		t.Fatal(err)
	}
	if err := pc.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	b, err := io.ReadAll(cli)
	if err != nil || string(b) != "pong" {
		t.Errorf("client read %q, %v", b, err)
	}
	if err := pc.SetDeadline(time.Now()); err != nil {
		t.Errorf("SetDeadline: %v", err)
	}

	a, _ := net.Pipe()
	defer a.Close()
	if err := (&peekedConn{Conn: a}).CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CloseWrite on a pipe: %v", err)
	}
}

// Chains match on the ALPN list the client offers, before the handshake.
func TestMatchChainTransport(t *testing.T) {
	cs := chains(
		config.FilterChainMatch{TransportProtocol: "tls", ApplicationProtocols: []string{"h2"}},
		config.FilterChainMatch{TransportProtocol: "tls", ApplicationProtocols: []string{"http/1.1"}},
		config.FilterChainMatch{ServerNames: []string{"api.example.com"}, TransportProtocol: "tls"},
		config.FilterChainMatch{},
	)
	info := &stream.ConnInfo{Local: netip.MustParseAddrPort("127.0.0.1:443"), Remote: netip.MustParseAddrPort("127.0.0.1:5000")}
	tests := []struct {
		name string
		t    Transport
		want int
	}{
		{"plaintext", Transport{Protocol: TransportRaw}, 3},
		{"empty protocol is raw", Transport{}, 3},
		{"offers h2 first", Transport{Protocol: TransportTLS, ALPN: []string{"h2", "http/1.1"}}, 0},
		{"offers http/1.1 only", Transport{Protocol: TransportTLS, ALPN: []string{"http/1.1"}}, 1},
		{"offers neither", Transport{Protocol: TransportTLS, ALPN: []string{"spdy/3"}}, -1},
		{"no ALPN", Transport{Protocol: TransportTLS}, -1},
		{"server name first", Transport{Protocol: TransportTLS, ServerName: "api.example.com", ALPN: []string{"h2"}}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MatchChainTransport(cs, info, &tt.t); got != tt.want {
				t.Errorf("MatchChainTransport = %d, want %d", got, tt.want)
			}
		})
	}
}
