//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package upstream

import "syscall"

// peek runs under RawConn.Control: a non-blocking MSG_PEEK of one byte.
// EAGAIN means the connection is open and quiet; EOF, data or an error
// mean it must not be reused.
func (conn *Conn) peek(fd uintptr) {
	for range 3 {
		_, _, err := syscall.Recvfrom(int(fd), conn.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err == syscall.EINTR {
			continue
		}
		// Only "would block" means open and quiet; a result (EOF or
		// unsolicited bytes) or another error means unusable.
		conn.peekDead = err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
		return
	}
	conn.peekDead = false
}
