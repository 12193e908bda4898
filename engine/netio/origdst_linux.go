package netio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and
// IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h): both 80.
const soOriginalDst = 80

// OriginalDst returns the destination a connection had before netfilter
// redirected it (iptables REDIRECT or DNAT, as Istio's sidecar capture
// does): Envoy's original_dst listener filter. A connection that was not
// redirected gives an error (no conntrack entry) or its own local address.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("netio: original destination: %T is not a socket: %w", c, errors.ErrUnsupported)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("netio: original destination: %w", err)
	}
	v4 := addrPort(c.LocalAddr()).Addr().Unmap().Is4()
	var out netip.AddrPort
	var gerr error
	err = rc.Control(func(fd uintptr) {
		if v4 {
			// struct sockaddr_in fits IPv6Mreq's 20 bytes: family,
			// port (big endian), address.
			var m *unix.IPv6Mreq
			if m, gerr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst); gerr == nil {
				a := netip.AddrFrom4([4]byte(m.Multiaddr[4:8]))
				out = netip.AddrPortFrom(a, binary.BigEndian.Uint16(m.Multiaddr[2:4]))
			}
			return
		}
		// struct sockaddr_in6 fits IPv6MTUInfo's 32 bytes.
		var m *unix.IPv6MTUInfo
		if m, gerr = unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, soOriginalDst); gerr == nil {
			// The port is in network order in memory.
			var p [2]byte
			binary.NativeEndian.PutUint16(p[:], m.Addr.Port)
			out = netip.AddrPortFrom(netip.AddrFrom16(m.Addr.Addr).Unmap(), binary.BigEndian.Uint16(p[:]))
		}
	})
	if err == nil {
		err = gerr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("netio: original destination: %w", err)
	}
	return out, nil
}
