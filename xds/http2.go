package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

var (
	http2Fields = knownFields(&corev3.Http2ProtocolOptions{},
		"max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size",
		"connection_keepalive",
		// Ignored: HPACK and codec tuning, Envoy's flood and reset-rate
		// limits (the HTTP/2 codec has its own), and how invalid messages
		// are reported. allow_connect, allow_metadata and
		// custom_settings_parameters change the protocol and are rejected.
		"hpack_table_size", "max_outbound_frames", "max_outbound_control_frames",
		"max_consecutive_inbound_frames_with_empty_payload", "max_inbound_priority_frames_per_stream",
		"max_inbound_window_update_frames_per_data_frame_sent", "stream_error_on_invalid_http_messaging",
		"override_stream_error_on_invalid_http_message", "use_oghttp2_codec", "max_metadata_size",
		"enable_huffman_encoding", "max_header_field_size_kb", "disallow_obs_text", "stream_reset_burst",
		"stream_reset_rate")
	// Ignored: jitter of the interval, and the idle ping before a new
	// stream (a liveness optimisation).
	keepaliveFields = knownFields(&corev3.KeepaliveSettings{}, "interval", "timeout", "interval_jitter",
		"connection_idle_interval")
)

// http2Options translates Http2ProtocolOptions, of a connection manager or
// a cluster. Unset values stay zero: the codec's defaults. Ranges are
// checked by the protoc-gen-validate rules.
func http2Options(m *corev3.Http2ProtocolOptions) (config.HTTP2Options, error) {
	var out config.HTTP2Options
	if m == nil {
		return out, nil
	}
	if err := http2Fields.check(m); err != nil {
		return out, err
	}
	out.MaxConcurrentStreams = u32(m.GetMaxConcurrentStreams(), 0)
	out.InitialStreamWindowSize = u32(m.GetInitialStreamWindowSize(), 0)
	out.InitialConnectionWindowSize = u32(m.GetInitialConnectionWindowSize(), 0)
	if ka := m.GetConnectionKeepalive(); ka != nil {
		if err := keepaliveFields.check(ka); err != nil {
			return out, inField(err, "connection_keepalive")
		}
		var err error
		if out.ConnectionKeepaliveInterval, err = durationField(ka.GetInterval(), 0, "interval"); err != nil {
			return out, inField(err, "connection_keepalive")
		}
		if out.ConnectionKeepaliveTimeout, err = durationField(ka.GetTimeout(), 0, "timeout"); err != nil {
			return out, inField(err, "connection_keepalive")
		}
	}
	return out, nil
}
