//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package netio

import "net"

// peekSocket is not available here: sniffing reads and replays.
func peekSocket(net.Conn, []byte, func([]byte) bool) (int, error) { return 0, errNoProgress }
