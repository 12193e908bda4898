package proxy

import (
	"crypto/tls"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// canSplice: on Linux TCPConn.ReadFrom splices, and socketReceived sees
// the progress a splice hides.
const canSplice = true

// socketReceived returns the bytes the kernel has received on c's TCP
// socket (TCP_INFO's tcpi_bytes_received), looking under TLS.
func socketReceived(c net.Conn) (uint64, bool) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var n uint64
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		if info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); ierr == nil {
			n = info.Bytes_received
		}
	}); err != nil || ierr != nil {
		return 0, false
	}
	return n, true
}
