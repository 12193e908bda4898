package xds

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// duration converts an optional proto duration: def when unset, an error
// when negative or out of range. Explicit zero stays zero (Envoy's
// "disabled").
func duration(d *durationpb.Duration, def time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("invalid duration: %w", err)
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, fmt.Errorf("negative duration %s", v)
	}
	return v, nil
}

// durationField is duration with the field name in the error.
func durationField(d *durationpb.Duration, def time.Duration, field string) (time.Duration, error) {
	v, err := duration(d, def)
	return v, inField(err, field)
}

func u32(v *wrapperspb.UInt32Value, def uint32) uint32 {
	if v == nil {
		return def
	}
	return v.GetValue()
}

func u64(v *wrapperspb.UInt64Value, def uint64) uint64 {
	if v == nil {
		return def
	}
	return v.GetValue()
}

func boolean(v *wrapperspb.BoolValue, def bool) bool {
	if v == nil {
		return def
	}
	return v.GetValue()
}

// socketAddressFields: ipv4_compat only matters for "::" binds, which Go
// makes dual-stack anyway.
var socketAddressFields = knownFields(&corev3.SocketAddress{}, "protocol", "address", "port_value", "ipv4_compat")

// hostPort translates an Address into "host:port". Only TCP socket
// addresses with a numeric port are supported.
func hostPort(a *corev3.Address) (string, error) {
	if a == nil {
		return "", errors.New("address is required")
	}
	switch x := a.GetAddress().(type) {
	case *corev3.Address_SocketAddress:
		sa := x.SocketAddress
		if err := socketAddressFields.check(sa); err != nil {
			return "", inField(err, "socket_address")
		}
		if sa.GetProtocol() != corev3.SocketAddress_TCP {
			return "", inField(unsupportedValue("protocol", sa.GetProtocol()), "socket_address")
		}
		if sa.GetAddress() == "" {
			return "", inField(errors.New("address is required"), "socket_address")
		}
		return net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)), nil
	case *corev3.Address_Pipe:
		return "", unsupported("pipe")
	case *corev3.Address_EnvoyInternalAddress:
		return "", unsupported("envoy_internal_address")
	default:
		return "", errors.New("address is required")
	}
}

// maxDataSourceFile bounds files read through a DataSource.filename.
const maxDataSourceFile = 1 << 20

// dataSource reads a DataSource: inline bytes or string, an environment
// variable, or a regular file of at most limit bytes (read at translate
// time, like Envoy does for static config).
func dataSource(ds *corev3.DataSource, limit int) (string, error) {
	if ds.GetWatchedDirectory() != nil {
		return "", unsupported("watched_directory")
	}
	var v string
	switch x := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineString:
		v = x.InlineString
	case *corev3.DataSource_InlineBytes:
		v = string(x.InlineBytes)
	case *corev3.DataSource_EnvironmentVariable:
		s, ok := os.LookupEnv(x.EnvironmentVariable)
		if !ok {
			return "", inField(fmt.Errorf("%q is not set", x.EnvironmentVariable), "environment_variable")
		}
		v = s
	case *corev3.DataSource_Filename:
		s, err := readLimited(x.Filename, limit)
		if err != nil {
			return "", inField(err, "filename")
		}
		v = s
	default:
		return "", errors.New("one of inline_string, inline_bytes, filename or environment_variable is required")
	}
	if len(v) > limit {
		return "", fmt.Errorf("data is %d bytes, more than the limit of %d", len(v), limit)
	}
	return v, nil
}

// readLimited reads a regular file of at most limit bytes. Devices, pipes
// and directories are refused so that a config cannot block the loader.
func readLimited(path string, limit int) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return "", err
	}
	if len(b) > limit {
		return "", fmt.Errorf("%s: more than %d bytes", path, limit)
	}
	return string(b), nil
}

// fractionPercent converts a FractionalPercent into a percentage in [0, 100].
func fractionPercent(f *typev3.FractionalPercent) float64 {
	var den float64
	switch f.GetDenominator() {
	case typev3.FractionalPercent_TEN_THOUSAND:
		den = 10000
	case typev3.FractionalPercent_MILLION:
		den = 1000000
	default:
		den = 100
	}
	return min(float64(f.GetNumerator())*100/den, 100)
}
