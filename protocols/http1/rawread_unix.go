//go:build unix

package http1

import (
	"net"
	"syscall"
)

var (
	errAgain       error = syscall.EAGAIN
	errInterrupted error = syscall.EINTR
)

// rawConnOf returns the connection's raw socket for readFirst, or nil when
// it has none (TLS and other wrappers read through the connection).
func rawConnOf(nc net.Conn) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

func sysRead(fd uintptr, b []byte) (int, error) {
	n, err := syscall.Read(int(fd), b)
	if err != nil {
		return 0, err // n is -1 on error
	}
	return n, nil
}
