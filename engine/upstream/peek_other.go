//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package upstream

// peek is not implemented here: idle connections are assumed open, and a
// stale one fails on first use (Conn.Reused lets the proxy retry).
func (conn *Conn) peek(fd uintptr) { conn.peekDead = false }
