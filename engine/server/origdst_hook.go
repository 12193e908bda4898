package server

import (
	"net"
	"net/netip"
)

// SetOriginalDstLookup replaces how a listener with OriginalDst finds a
// connection's destination from before an iptables redirect (Linux's
// SO_ORIGINAL_DST, which needs the redirect, so root): tests outside this
// package use it to stand in for the redirect. It returns a function that
// restores the lookup. Call it before the servers that use it accept
// connections, and restore it after they stopped.
func SetOriginalDstLookup(f func(net.Conn) (netip.AddrPort, error)) (restore func()) {
	prev := originalDst
	originalDst = f
	return func() { originalDst = prev }
}
