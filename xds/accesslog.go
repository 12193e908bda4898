package xds

import (
	"fmt"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

// maxFormatSize bounds an access log format read from a file.
const maxFormatSize = 64 << 10

var (
	accessLogFields     = knownFields(&accesslogv3.AccessLog{}, "name", "typed_config")
	fileAccessLogFields = knownFields(&filev3.FileAccessLog{}, "path", "format", "log_format")
	stdoutLogFields     = knownFields(&streamv3.StdoutAccessLog{}, "log_format")
	stderrLogFields     = knownFields(&streamv3.StderrAccessLog{}, "log_format")
	// content_type only matters for local reply bodies, not for logs.
	formatStringFields = knownFields(&corev3.SubstitutionFormatString{}, "text_format", "text_format_source", "content_type")
)

// translateAccessLogs translates a repeated access_log field.
func translateAccessLogs(logs []*accesslogv3.AccessLog) ([]*config.AccessLog, error) {
	var out []*config.AccessLog
	for i, al := range logs {
		l, err := translateAccessLog(al)
		if err != nil {
			return nil, at(err, segFieldEnd, fmt.Sprintf("access_log[%d] (%s)", i, al.GetName()))
		}
		out = append(out, l)
	}
	return out, nil
}

// translateAccessLog supports the file, stdout and stderr access loggers
// with Envoy's text format.
func translateAccessLog(al *accesslogv3.AccessLog) (*config.AccessLog, error) {
	if err := accessLogFields.check(al); err != nil {
		return nil, err
	}
	t, err := unpack(al.GetTypedConfig())
	if err != nil {
		return nil, inField(err, "typed_config")
	}
	var out config.AccessLog
	switch m := t.msg.(type) {
	case *filev3.FileAccessLog:
		if err := fileAccessLogFields.check(m); err != nil {
			return nil, inField(err, "typed_config")
		}
		out.Path = m.GetPath()
		out.Format = m.GetFormat()
		if lf := m.GetLogFormat(); lf != nil {
			if out.Format, err = formatString(lf); err != nil {
				return nil, inField(inField(err, "log_format"), "typed_config")
			}
		}
	case *streamv3.StdoutAccessLog:
		if err := stdoutLogFields.check(m); err != nil {
			return nil, inField(err, "typed_config")
		}
		out.Path = "/dev/stdout"
		if out.Format, err = formatString(m.GetLogFormat()); err != nil {
			return nil, inField(inField(err, "log_format"), "typed_config")
		}
	case *streamv3.StderrAccessLog:
		if err := stderrLogFields.check(m); err != nil {
			return nil, inField(err, "typed_config")
		}
		out.Path = "/dev/stderr"
		if out.Format, err = formatString(m.GetLogFormat()); err != nil {
			return nil, inField(inField(err, "log_format"), "typed_config")
		}
	default:
		return nil, inField(fmt.Errorf("access logger type %q: %w", t.url, ErrUnsupported), "typed_config")
	}
	return &out, nil
}

// formatString returns the text format of a SubstitutionFormatString ("" for
// nil: the default format).
func formatString(f *corev3.SubstitutionFormatString) (string, error) {
	if f == nil {
		return "", nil
	}
	if err := formatStringFields.check(f); err != nil {
		return "", err
	}
	if src := f.GetTextFormatSource(); src != nil {
		s, err := dataSource(src, maxFormatSize)
		return s, inField(err, "text_format_source")
	}
	return f.GetTextFormat(), nil
}
