//go:build !linux

package netio

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// OriginalDst is Linux only (netfilter's SO_ORIGINAL_DST).
func OriginalDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, fmt.Errorf("netio: original destination: %w", errors.ErrUnsupported)
}
