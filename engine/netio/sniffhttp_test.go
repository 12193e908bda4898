package netio

import (
	"io"
	"testing"
	"time"
)

// SniffHTTP names the HTTP a plaintext client speaks, as Envoy's
// http_inspector does, replays what it read, and is no error for a
// client that sends nothing before the deadline (a server-first
// protocol).
func TestSniffHTTP(t *testing.T) {
	for _, tr := range transports {
		for _, tc := range []struct{ send, want string }{
			{"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", ProtocolHTTP11},
			{"POST / HTTP/1.0\r\n\r\n", ProtocolHTTP10},
			{HTTP2Preface + "rest", ProtocolH2C},
			{"\x16\x03\x01\x02\x00", ""},
			{"SSH-2.0-OpenSSH_9.6\r\n", ""},
			{"GET / HTTP/2\r\n", ""},
		} {
			srv, cli := tr.pair(t)
			go func() {
				cli.Write([]byte(tc.send))
			}()
			srv.SetReadDeadline(time.Now().Add(5 * time.Second))
			c, proto, err := SniffHTTP(srv)
			if err != nil || proto != tc.want {
				t.Errorf("%s %q: %q %v, want %q", tr.name, tc.send, proto, err, tc.want)
			}
			got := make([]byte, len(tc.send))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != tc.send {
				t.Errorf("%s %q: replayed %q %v", tr.name, tc.send, got, err)
			}
			srv.Close()
			cli.Close()
		}
		// Nothing sent: the deadline passes, no protocol, no error.
		srv, cli := tr.pair(t)
		srv.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, proto, err := SniffHTTP(srv); err != nil || proto != "" {
			t.Errorf("%s, silent client: %q %v", tr.name, proto, err)
		}
		srv.Close()
		cli.Close()
	}
}
