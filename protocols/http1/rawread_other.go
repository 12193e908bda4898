//go:build !unix

package http1

import (
	"errors"
	"net"
	"syscall"
)

var (
	errAgain       = errors.New("http1: raw reads are unix-only")
	errInterrupted = errAgain
)

// rawConnOf is nil off unix: readFirst reads one byte through the
// connection instead.
func rawConnOf(net.Conn) syscall.RawConn { return nil }

func sysRead(uintptr, []byte) (int, error) { return 0, errAgain }
