//go:build linux

package upstream

import (
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// fullBacklogListener returns the address of a loopback listener that
// never accepts and whose accept queue is full, so Linux drops new SYNs
// and a connect to it times out.
func fullBacklogListener(t *testing.T) (string, bool) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", false
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return "", false
	}
	if err := syscall.Listen(fd, 0); err != nil {
		return "", false
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return "", false
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	// Fill the queue: connect until one connect times out.
	for range 16 {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return addr, true
			}
			return "", false
		}
		t.Cleanup(func() { c.Close() })
	}
	return "", false
}
