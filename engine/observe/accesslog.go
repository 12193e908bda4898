package observe

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/header"
)

// LogEntry is one finished stream as the access log sees it: the attribute
// source plus the timings, sizes and outcome the proxy records.
type LogEntry interface {
	attr.Source
	// Duration is the time from the start until the last byte was sent
	// downstream. Negative means unknown.
	Duration() time.Duration
	// RequestDuration is the time from the start until the last request byte
	// was received from downstream. Negative means unknown.
	RequestDuration() time.Duration
	// ResponseDuration is the time from the start until the first byte was
	// read from upstream. Negative means unknown (no upstream response).
	ResponseDuration() time.Duration
	// ResponseFlags are Envoy's short codes ("UH", "UF,URX", ...); "" or "-"
	// when none.
	ResponseFlags() string
	ResponseCodeDetails() string
	BytesReceived() int64
	BytesSent() int64
	UpstreamTransportFailureReason() string
	ConnectionID() uint64
	AttemptCount() int
}

// DefaultFormat is Envoy's default access log format, used when a format is
// empty.
const DefaultFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// defaultTimeLayout is Envoy's default START_TIME rendering, in UTC.
const defaultTimeLayout = "2006-01-02T15:04:05.000Z"

type opKind uint8

const (
	opLiteral opKind = iota
	opStartTime
	opReq
	opReqWithoutQuery
	opResp
	opTrailer
	opProtocol
	opResponseCode
	opResponseFlags
	opResponseCodeDetails
	opBytesReceived
	opBytesSent
	opDuration
	opRequestDuration
	opResponseDuration
	opResponseTxDuration
	opUpstreamHost
	opUpstreamCluster
	opUpstreamTransportFailureReason
	opRouteName
	opDownstreamRemote
	opDownstreamRemoteNoPort
	opDownstreamLocal
	opDownstreamLocalNoPort
	opRequestedServerName
	opDownstreamTLSVersion
	opConnectionID
	opStreamID
	opAttemptCount
	opNotKept     // a value Sluice does not keep: always "-"
	opHostname    // resolved to a literal at compile time
	opEnvironment // resolved to a literal at compile time
)

type argRule uint8

const (
	argNone argRule = iota
	argOptional
	argRequired
)

var commands = map[string]struct {
	kind opKind
	arg  argRule
}{
	"START_TIME":            {opStartTime, argOptional},
	"REQ":                   {opReq, argRequired},
	"REQ_WITHOUT_QUERY":     {opReqWithoutQuery, argRequired},
	"RESP":                  {opResp, argRequired},
	"TRAILER":               {opTrailer, argRequired},
	"PROTOCOL":              {opProtocol, argNone},
	"RESPONSE_CODE":         {opResponseCode, argNone},
	"RESPONSE_FLAGS":        {opResponseFlags, argNone},
	"RESPONSE_CODE_DETAILS": {opResponseCodeDetails, argNone},
	"BYTES_RECEIVED":        {opBytesReceived, argNone},
	"BYTES_SENT":            {opBytesSent, argNone},
	"DURATION":              {opDuration, argNone},
	"REQUEST_DURATION":      {opRequestDuration, argNone},
	"RESPONSE_DURATION":     {opResponseDuration, argNone},
	"RESPONSE_TX_DURATION":  {opResponseTxDuration, argNone},
	"UPSTREAM_HOST":         {opUpstreamHost, argNone},
	"UPSTREAM_CLUSTER":      {opUpstreamCluster, argNone},
	"UPSTREAM_CLUSTER_RAW":  {opUpstreamCluster, argNone},
	// In Istio's default format; Sluice does not keep them.
	"UPSTREAM_LOCAL_ADDRESS":                 {opNotKept, argNone},
	"CONNECTION_TERMINATION_DETAILS":         {opNotKept, argNone},
	"UPSTREAM_TRANSPORT_FAILURE_REASON":      {opUpstreamTransportFailureReason, argNone},
	"ROUTE_NAME":                             {opRouteName, argNone},
	"DOWNSTREAM_REMOTE_ADDRESS":              {opDownstreamRemote, argNone},
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": {opDownstreamRemoteNoPort, argNone},
	"DOWNSTREAM_LOCAL_ADDRESS":               {opDownstreamLocal, argNone},
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":  {opDownstreamLocalNoPort, argNone},
	"REQUESTED_SERVER_NAME":                  {opRequestedServerName, argNone},
	"DOWNSTREAM_TLS_VERSION":                 {opDownstreamTLSVersion, argNone},
	"CONNECTION_ID":                          {opConnectionID, argNone},
	"STREAM_ID":                              {opStreamID, argNone},
	"UPSTREAM_REQUEST_ATTEMPT_COUNT":         {opAttemptCount, argNone},
	"HOSTNAME":                               {opHostname, argNone},
	"ENVIRONMENT":                            {opEnvironment, argRequired},
}

// op is one compiled piece of a format.
type op struct {
	kind opKind
	text string // literal text, or the header name
	alt  string // fallback header name of REQ(X?Y)
	max  int    // maximum length in bytes; -1 for none
	tf   []timeOp
}

// Format is a compiled access log format. It is immutable and safe for
// concurrent use.
type Format struct {
	src string
	ops []op
}

// String returns the format string the Format was compiled from.
func (f *Format) String() string { return f.src }

var hostname = sync.OnceValue(func() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "-"
	}
	return h
})

// MustCompileFormat is CompileFormat that panics on error, for formats
// known at build time.
func MustCompileFormat(format string) *Format {
	f, err := CompileFormat(format)
	if err != nil {
		panic(err)
	}
	return f
}

// CompileFormat parses an Envoy access log format string once, at config
// time. Text is copied as is; %% is a literal %; commands are written
// %COMMAND%, %COMMAND(arg)% or %COMMAND(arg):Z% where Z caps the value's
// length in bytes. An empty format means DefaultFormat. Errors name the
// offending command and its 1-based column.
func CompileFormat(format string) (*Format, error) {
	if format == "" {
		format = DefaultFormat
	}
	f := &Format{src: format}
	var lit []byte
	flushLit := func() {
		if len(lit) > 0 {
			f.ops = append(f.ops, op{kind: opLiteral, text: string(lit), max: -1})
			lit = lit[:0]
		}
	}
	for i := 0; i < len(format); {
		if format[i] != '%' {
			j := strings.IndexByte(format[i:], '%')
			if j < 0 {
				j = len(format) - i
			}
			lit = append(lit, format[i:i+j]...)
			i += j
			continue
		}
		if i+1 < len(format) && format[i+1] == '%' {
			lit = append(lit, '%')
			i += 2
			continue
		}
		o, n, err := parseCommand(format, i)
		if err != nil {
			return nil, err
		}
		i += n
		if o.kind == opLiteral {
			lit = append(lit, o.text...)
			continue
		}
		flushLit()
		f.ops = append(f.ops, o)
	}
	flushLit()
	return f, nil
}

func formatError(format string, at int, msg string, args ...any) error {
	col := utf8.RuneCountInString(format[:at]) + 1
	return fmt.Errorf("observe: access log format: "+msg+" at column %d", append(args, col)...)
}

// parseCommand parses the command starting with the '%' at format[start]
// and returns it and the bytes it spans.
func parseCommand(format string, start int) (op, int, error) {
	i := start + 1
	for i < len(format) && (isNameChar(format[i], false)) {
		i++
	}
	name := format[start+1 : i]
	if name == "" {
		return op{}, 0, formatError(format, start, "expected a command after %% (write %%%% for a literal %%)")
	}
	var arg string
	hasArg := false
	if i < len(format) && format[i] == '(' {
		end := strings.IndexByte(format[i:], ')')
		if end < 0 {
			return op{}, 0, formatError(format, start, "unterminated argument of %%%s", name)
		}
		arg, hasArg = format[i+1:i+end], true
		i += end + 1
	}
	maxLen := -1
	if i < len(format) && format[i] == ':' {
		j := i + 1
		for j < len(format) && '0' <= format[j] && format[j] <= '9' {
			j++
		}
		n, err := strconv.Atoi(format[i+1 : j])
		if err != nil || j == i+1 {
			return op{}, 0, formatError(format, start, "bad maximum length for %%%s", name)
		}
		maxLen, i = n, j
	}
	if i >= len(format) || format[i] != '%' {
		return op{}, 0, formatError(format, start, "unterminated command %%%s", name)
	}
	i++
	spec, ok := commands[name]
	if !ok {
		return op{}, 0, formatError(format, start, "unknown command %%%s%%", name)
	}
	switch {
	case spec.arg == argNone && hasArg:
		return op{}, 0, formatError(format, start, "%%%s%% takes no argument", name)
	case spec.arg == argRequired && (!hasArg || arg == ""):
		return op{}, 0, formatError(format, start, "%%%s%% needs an argument", name)
	}
	o := op{kind: spec.kind, max: maxLen}
	switch spec.kind {
	case opReq, opReqWithoutQuery, opResp, opTrailer:
		o.text, o.alt, _ = strings.Cut(arg, "?")
		if o.text == "" || strings.ContainsAny(o.alt, "?") || strings.HasSuffix(arg, "?") {
			return op{}, 0, formatError(format, start, "bad header argument %q of %%%s%%", arg, name)
		}
	case opStartTime:
		if arg != "" {
			tf, err := parseTimeFormat(arg)
			if err != nil {
				return op{}, 0, formatError(format, start, "%%START_TIME(%s)%%: %v", arg, err)
			}
			o.tf = tf
		}
	case opHostname:
		o = op{kind: opLiteral, text: truncateString(hostname(), maxLen)}
	case opEnvironment:
		v, ok := os.LookupEnv(arg)
		if !ok {
			v = "-"
		} else {
			v = truncateString(v, maxLen)
		}
		o = op{kind: opLiteral, text: v}
	}
	return o, i - start, nil
}

// cutLen returns how many bytes of b to keep to respect max without
// splitting a UTF-8 sequence.
func cutLen(b []byte, max int) int {
	if max < 0 || len(b) <= max {
		return len(b)
	}
	n := max
	for n > 0 && b[n]&0xC0 == 0x80 {
		n--
	}
	return n
}

func truncateString(s string, max int) string {
	return s[:cutLen([]byte(s), max)]
}

// Append formats e with f and appends the line to dst. It allocates nothing
// when dst has room, for every command of DefaultFormat.
func (f *Format) Append(dst []byte, e LogEntry) []byte {
	for i := range f.ops {
		o := &f.ops[i]
		if o.kind == opLiteral {
			dst = append(dst, o.text...)
			continue
		}
		start := len(dst)
		var ok bool
		dst, ok = o.appendValue(dst, e)
		if !ok {
			dst = append(dst[:start], '-')
			continue
		}
		if o.max >= 0 {
			dst = dst[:start+cutLen(dst[start:], o.max)]
		}
	}
	return dst
}

// appendValue appends the op's value; ok is false when it is unknown, and
// the caller prints "-".
func (o *op) appendValue(dst []byte, e LogEntry) ([]byte, bool) {
	switch o.kind {
	case opStartTime:
		t := e.StartTime()
		if t.IsZero() {
			return dst, false
		}
		t = t.UTC()
		if o.tf == nil {
			return t.AppendFormat(dst, defaultTimeLayout), true
		}
		return appendTime(dst, t, o.tf), true
	case opReq:
		return appendHeader(dst, e.RequestHeaders(), o.text, o.alt, false)
	case opReqWithoutQuery:
		return appendHeader(dst, e.RequestHeaders(), o.text, o.alt, true)
	case opResp:
		return appendHeader(dst, e.ResponseHeaders(), o.text, o.alt, false)
	case opTrailer:
		return appendHeader(dst, e.ResponseTrailers(), o.text, o.alt, false)
	case opProtocol:
		return appendString(dst, e.Protocol())
	case opResponseCode:
		return strconv.AppendInt(dst, int64(e.ResponseCode()), 10), true
	case opResponseFlags:
		return appendString(dst, e.ResponseFlags())
	case opResponseCodeDetails:
		return appendString(dst, e.ResponseCodeDetails())
	case opBytesReceived:
		return strconv.AppendInt(dst, e.BytesReceived(), 10), true
	case opBytesSent:
		return strconv.AppendInt(dst, e.BytesSent(), 10), true
	case opDuration:
		return appendMillis(dst, e.Duration())
	case opRequestDuration:
		return appendMillis(dst, e.RequestDuration())
	case opResponseDuration:
		return appendMillis(dst, e.ResponseDuration())
	case opResponseTxDuration:
		total, first := e.Duration(), e.ResponseDuration()
		if total < 0 || first < 0 || total < first {
			return dst, false
		}
		return appendMillis(dst, total-first)
	case opUpstreamHost:
		return appendString(dst, e.UpstreamAddress())
	case opUpstreamCluster:
		return appendString(dst, e.ClusterName())
	case opNotKept:
		return dst, false
	case opUpstreamTransportFailureReason:
		return appendString(dst, e.UpstreamTransportFailureReason())
	case opRouteName:
		return appendString(dst, e.RouteName())
	case opDownstreamRemote:
		return appendAddr(dst, e.DownstreamRemote(), true)
	case opDownstreamRemoteNoPort:
		return appendAddr(dst, e.DownstreamRemote(), false)
	case opDownstreamLocal:
		return appendAddr(dst, e.DownstreamLocal(), true)
	case opDownstreamLocalNoPort:
		return appendAddr(dst, e.DownstreamLocal(), false)
	case opRequestedServerName:
		if cs := e.TLS(); cs != nil {
			return appendString(dst, cs.ServerName)
		}
		return dst, false
	case opDownstreamTLSVersion:
		if cs := e.TLS(); cs != nil {
			return appendString(dst, TLSVersionName(cs.Version))
		}
		return dst, false
	case opConnectionID:
		return strconv.AppendUint(dst, e.ConnectionID(), 10), true
	case opStreamID:
		return appendString(dst, e.RequestID())
	case opAttemptCount:
		return strconv.AppendInt(dst, int64(e.AttemptCount()), 10), true
	}
	return dst, false
}

func appendString(dst []byte, s string) ([]byte, bool) {
	if s == "" || s == "-" {
		return dst, false
	}
	return append(dst, s...), true
}

func appendMillis(dst []byte, d time.Duration) ([]byte, bool) {
	if d < 0 {
		return dst, false
	}
	return strconv.AppendInt(dst, d.Milliseconds(), 10), true
}

func appendHeader(dst []byte, m *header.Map, name, alt string, stripQuery bool) ([]byte, bool) {
	if m == nil {
		return dst, false
	}
	v, ok := m.Get(name)
	if !ok && alt != "" {
		v, ok = m.Get(alt)
	}
	if !ok {
		return dst, false
	}
	if stripQuery {
		if i := strings.IndexByte(v, '?'); i >= 0 {
			v = v[:i]
		}
	}
	return append(dst, v...), true
}

func appendAddr(dst []byte, ap netip.AddrPort, withPort bool) ([]byte, bool) {
	if !ap.IsValid() {
		return dst, false
	}
	a := ap.Addr().Unmap()
	if !withPort {
		return a.AppendTo(dst), true
	}
	return netip.AddrPortFrom(a, ap.Port()).AppendTo(dst), true
}

// TLSVersionName returns OpenSSL's name of a TLS version ("TLSv1.3"),
// which Envoy logs and its Lua API returns; "" for others.
func TLSVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return ""
}

// START_TIME(...) formats: a strftime subset compiled to a list of pieces.

type timeKind uint8

const (
	tLiteral      timeKind = iota
	tYear                  // %Y
	tYear2                 // %y
	tMonth                 // %m
	tDay                   // %d
	tDaySpace              // %e
	tHour                  // %H
	tHour12                // %I
	tMinute                // %M
	tSecond                // %S
	tFrac                  // %f (9 digits), %1f..%9f
	tSecondFrac            // %E<n>S, %E*S: seconds with n fractional digits
	tZone                  // %z +hhmm
	tZoneColon             // %Ez +hh:mm
	tZoneName              // %Z
	tEpoch                 // %s
	tWeekdayShort          // %a
	tWeekday               // %A
	tMonthShort            // %b %h
	tMonthName             // %B
	tYearDay               // %j
	tAMPM                  // %p
)

type timeOp struct {
	kind timeKind
	n    int // digits of tFrac / tSecondFrac (-1: as many as needed)
	lit  string
}

func parseTimeFormat(s string) ([]timeOp, error) {
	var ops []timeOp
	var lit []byte
	add := func(k timeKind, n int) {
		if len(lit) > 0 {
			ops = append(ops, timeOp{kind: tLiteral, lit: string(lit)})
			lit = lit[:0]
		}
		ops = append(ops, timeOp{kind: k, n: n})
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			lit = append(lit, s[i])
			continue
		}
		i++
		if i >= len(s) {
			return nil, fmt.Errorf("trailing %%")
		}
		switch c := s[i]; c {
		case '%':
			lit = append(lit, '%')
		case 'n':
			lit = append(lit, '\n')
		case 't':
			lit = append(lit, '\t')
		case 'Y':
			add(tYear, 0)
		case 'y':
			add(tYear2, 0)
		case 'm':
			add(tMonth, 0)
		case 'd':
			add(tDay, 0)
		case 'e':
			add(tDaySpace, 0)
		case 'H':
			add(tHour, 0)
		case 'I':
			add(tHour12, 0)
		case 'M':
			add(tMinute, 0)
		case 'S':
			add(tSecond, 0)
		case 'f':
			add(tFrac, 9)
		case 'z':
			add(tZone, 0)
		case 'Z':
			add(tZoneName, 0)
		case 's':
			add(tEpoch, 0)
		case 'a':
			add(tWeekdayShort, 0)
		case 'A':
			add(tWeekday, 0)
		case 'b', 'h':
			add(tMonthShort, 0)
		case 'B':
			add(tMonthName, 0)
		case 'j':
			add(tYearDay, 0)
		case 'p':
			add(tAMPM, 0)
		case 'T':
			add(tHour, 0)
			lit = append(lit, ':')
			add(tMinute, 0)
			lit = append(lit, ':')
			add(tSecond, 0)
		case 'F':
			add(tYear, 0)
			lit = append(lit, '-')
			add(tMonth, 0)
			lit = append(lit, '-')
			add(tDay, 0)
		case 'D':
			add(tMonth, 0)
			lit = append(lit, '/')
			add(tDay, 0)
			lit = append(lit, '/')
			add(tYear2, 0)
		case 'R':
			add(tHour, 0)
			lit = append(lit, ':')
			add(tMinute, 0)
		case '1', '2', '3', '4', '5', '6', '7', '8', '9':
			if i+1 >= len(s) || s[i+1] != 'f' {
				return nil, fmt.Errorf("unknown specifier %%%c", c)
			}
			add(tFrac, int(c-'0'))
			i++
		case 'E':
			switch {
			case i+1 < len(s) && s[i+1] == 'z':
				add(tZoneColon, 0)
				i++
			case i+2 < len(s) && s[i+1] == '*' && s[i+2] == 'S':
				add(tSecondFrac, -1)
				i += 2
			case i+2 < len(s) && '0' <= s[i+1] && s[i+1] <= '9' && s[i+2] == 'S':
				add(tSecondFrac, int(s[i+1]-'0'))
				i += 2
			default:
				return nil, fmt.Errorf("unknown specifier %%E")
			}
		default:
			r, _ := utf8.DecodeRuneInString(s[i:])
			return nil, fmt.Errorf("unknown specifier %%%c", r)
		}
	}
	if len(lit) > 0 {
		ops = append(ops, timeOp{kind: tLiteral, lit: string(lit)})
	}
	return ops, nil
}

// appendInt appends v zero-padded to width digits.
func appendInt(dst []byte, v, width int) []byte {
	if v < 0 {
		dst = append(dst, '-')
		v = -v
	}
	var tmp [20]byte
	i := len(tmp)
	for v >= 10 || width > 1 {
		i--
		tmp[i] = byte('0' + v%10)
		v /= 10
		width--
	}
	i--
	tmp[i] = byte('0' + v)
	return append(dst, tmp[i:]...)
}

// appendFrac appends the first n digits of nanoseconds ns; n < 0 means as
// many as needed with no trailing zeros, and nothing when ns is 0.
func appendFrac(dst []byte, ns, n int) []byte {
	var digits [9]byte
	for i := 8; i >= 0; i-- {
		digits[i] = byte('0' + ns%10)
		ns /= 10
	}
	if n < 0 {
		n = 9
		for n > 0 && digits[n-1] == '0' {
			n--
		}
	}
	return append(dst, digits[:n]...)
}

func appendZone(dst []byte, t time.Time, colon bool) []byte {
	_, off := t.Zone()
	if off < 0 {
		dst = append(dst, '-')
		off = -off
	} else {
		dst = append(dst, '+')
	}
	dst = appendInt(dst, off/3600, 2)
	if colon {
		dst = append(dst, ':')
	}
	return appendInt(dst, off%3600/60, 2)
}

func appendTime(dst []byte, t time.Time, ops []timeOp) []byte {
	year, month, day := t.Date()
	hour, min, sec := t.Clock()
	for i := range ops {
		o := &ops[i]
		switch o.kind {
		case tLiteral:
			dst = append(dst, o.lit...)
		case tYear:
			dst = appendInt(dst, year, 4)
		case tYear2:
			dst = appendInt(dst, year%100, 2)
		case tMonth:
			dst = appendInt(dst, int(month), 2)
		case tDay:
			dst = appendInt(dst, day, 2)
		case tDaySpace:
			if day < 10 {
				dst = append(dst, ' ')
			}
			dst = appendInt(dst, day, 1)
		case tHour:
			dst = appendInt(dst, hour, 2)
		case tHour12:
			h := hour % 12
			if h == 0 {
				h = 12
			}
			dst = appendInt(dst, h, 2)
		case tMinute:
			dst = appendInt(dst, min, 2)
		case tSecond:
			dst = appendInt(dst, sec, 2)
		case tFrac:
			dst = appendFrac(dst, t.Nanosecond(), o.n)
		case tSecondFrac:
			dst = appendInt(dst, sec, 2)
			if o.n != 0 && (o.n > 0 || t.Nanosecond() != 0) {
				dst = append(dst, '.')
				dst = appendFrac(dst, t.Nanosecond(), o.n)
			}
		case tZone:
			dst = appendZone(dst, t, false)
		case tZoneColon:
			dst = appendZone(dst, t, true)
		case tZoneName:
			name, _ := t.Zone()
			dst = append(dst, name...)
		case tEpoch:
			dst = strconv.AppendInt(dst, t.Unix(), 10)
		case tWeekdayShort:
			dst = append(dst, t.Weekday().String()[:3]...)
		case tWeekday:
			dst = append(dst, t.Weekday().String()...)
		case tMonthShort:
			dst = append(dst, month.String()[:3]...)
		case tMonthName:
			dst = append(dst, month.String()...)
		case tYearDay:
			dst = appendInt(dst, t.YearDay(), 3)
		case tAMPM:
			if hour < 12 {
				dst = append(dst, "AM"...)
			} else {
				dst = append(dst, "PM"...)
			}
		}
	}
	return dst
}
