package netio

import (
	"net"
	"testing"
)

// A connection nothing redirected has no original destination other than
// its own: either the lookup fails (no conntrack entry) or it returns the
// local address. Redirected connections need iptables, which tests leave
// alone.
func TestOriginalDstWithoutRedirect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			defer c.Close()
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ap, err := OriginalDst(c)
	if err == nil && ap != addrPort(c.LocalAddr()) {
		t.Errorf("original destination %v of a connection to %v", ap, c.LocalAddr())
	}
	t.Logf("original destination: %v, %v", ap, err)
}
