//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package netio

import (
	"net"
	"syscall"
)

// peekSocket fills buf with MSG_PEEK until decided holds, waiting for more
// bytes as needed (bounded by c's read deadline). The bytes stay in the
// socket. It returns errNoProgress when c is not a socket, or when a
// wake-up brought no new byte (the peer half-closed mid-way, or a spurious
// wake-up): reading, which sees EOF, then takes over.
func peekSocket(c net.Conn, buf []byte, decided func([]byte) bool) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errNoProgress
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, errNoProgress
	}
	n, prev := 0, -1
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			m, _, err := syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
				return false // wait until readable
			case err != nil:
				perr = err
				return true
			}
			n = m
			if m == 0 || m == len(buf) || decided(buf[:m]) {
				return true // EOF, or enough
			}
			if m == prev {
				perr = errNoProgress
				return true
			}
			prev = m
			return false // wait for more bytes
		}
	})
	if err != nil {
		return n, err
	}
	return n, perr
}
