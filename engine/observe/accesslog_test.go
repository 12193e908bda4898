package observe

import (
	"crypto/tls"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
)

// entry is a LogEntry with fixed values.
type entry struct {
	req, resp, trailers *header.Map
	code                int
	requestID           string
	start               time.Time
	protocol            string
	remote, local       netip.AddrPort
	tls                 *tls.ConnectionState
	upstream            string
	route, cluster      string
	dur, reqDur, resDur time.Duration
	flags, details      string
	rx, tx              int64
	failure             string
	connID              uint64
	attempts            int
}

func (e *entry) RequestHeaders() *header.Map            { return e.req }
func (e *entry) ResponseHeaders() *header.Map           { return e.resp }
func (e *entry) ResponseTrailers() *header.Map          { return e.trailers }
func (e *entry) ResponseCode() int                      { return e.code }
func (e *entry) RequestID() string                      { return e.requestID }
func (e *entry) StartTime() time.Time                   { return e.start }
func (e *entry) Protocol() string                       { return e.protocol }
func (e *entry) DownstreamRemote() netip.AddrPort       { return e.remote }
func (e *entry) DownstreamLocal() netip.AddrPort        { return e.local }
func (e *entry) TLS() *tls.ConnectionState              { return e.tls }
func (e *entry) UpstreamAddress() string                { return e.upstream }
func (e *entry) RouteName() string                      { return e.route }
func (e *entry) ClusterName() string                    { return e.cluster }
func (e *entry) RequestBodySize() int64                 { return e.rx }
func (e *entry) ResponseBodySize() int64                { return e.tx }
func (e *entry) Duration() time.Duration                { return e.dur }
func (e *entry) RequestDuration() time.Duration         { return e.reqDur }
func (e *entry) ResponseDuration() time.Duration        { return e.resDur }
func (e *entry) ResponseFlags() string                  { return e.flags }
func (e *entry) ResponseCodeDetails() string            { return e.details }
func (e *entry) BytesReceived() int64                   { return e.rx }
func (e *entry) BytesSent() int64                       { return e.tx }
func (e *entry) UpstreamTransportFailureReason() string { return e.failure }
func (e *entry) ConnectionID() uint64                   { return e.connID }
func (e *entry) AttemptCount() int                      { return e.attempts }

func headers(kv ...string) *header.Map {
	m := &header.Map{}
	for i := 0; i < len(kv); i += 2 {
		m.Add(kv[i], kv[i+1])
	}
	return m
}

var testStart = time.Date(2024, 3, 5, 7, 8, 9, 123456789, time.UTC)

func fullEntry() *entry {
	return &entry{
		req: headers(":method", "GET", ":path", "/api/v1?x=1", ":authority", "example.com", ":scheme", "https",
			"User-Agent", "curl/8.0", "x-request-id", "abc-123", "X-Forwarded-For", "10.0.0.1", "x-empty", ""),
		resp:      headers(":status", "200", "x-envoy-upstream-service-time", "12", "content-type", "text/plain"),
		trailers:  headers("grpc-status", "0"),
		code:      200,
		requestID: "abc-123",
		start:     testStart,
		protocol:  "HTTP/1.1",
		remote:    netip.MustParseAddrPort("192.0.2.1:54321"),
		local:     netip.MustParseAddrPort("[::ffff:10.1.2.3]:8443"),
		tls:       &tls.ConnectionState{ServerName: "example.com", Version: tls.VersionTLS13},
		upstream:  "10.0.0.7:8080",
		route:     "r1",
		cluster:   "backend",
		dur:       1500 * time.Millisecond,
		reqDur:    3 * time.Millisecond,
		resDur:    1200*time.Millisecond + 999*time.Microsecond,
		flags:     "UF,URX",
		details:   "via_upstream",
		rx:        321,
		tx:        4567,
		failure:   "connection_refused",
		connID:    42,
		attempts:  2,
	}
}

func emptyEntry() *entry {
	return &entry{req: headers(), dur: -1, reqDur: -1, resDur: -1}
}

func TestFormatCommands(t *testing.T) {
	host, _ := os.Hostname()
	t.Setenv("SLUICE_TEST_ENV", "envvalue")
	tests := []struct {
		format       string
		full, empty  string
		emptyInitial bool
	}{
		{"plain text", "plain text", "plain text", false},
		{"100%% sure %%%%", "100% sure %%", "100% sure %%", false},
		{"%START_TIME%", "2024-03-05T07:08:09.123Z", "-", false},
		{"%START_TIME(%Y/%m/%dT%H:%M:%S%z)%", "2024/03/05T07:08:09+0000", "-", false},
		{"%START_TIME(%s.%3f)%", "1709622489.123", "-", false},
		{"%START_TIME(%s.%6f|%f|%9f|%1f)%", "1709622489.123456|123456789|123456789|1", "-", false},
		{"%START_TIME(%E3S|%E*S|%E0S|%Ez)%", "09.123|09.123456789|09|+00:00", "-", false},
		{"%START_TIME(%a %A %b %B %h %j %e %I %p %y %Z %T %F %D %R %%)%",
			"Tue Tuesday Mar March Mar 065  5 07 AM 24 UTC 07:08:09 2024-03-05 03/05/24 07:08 %", "-", false},
		{"%START_TIME(%Y):2%", "20", "-", false},
		{"%REQ(:METHOD)% %REQ(:path)% %REQ(:AUTHORITY)%", "GET /api/v1?x=1 example.com", "- - -", false},
		{"%REQ(USER-AGENT)%|%REQ(user-agent)%", "curl/8.0|curl/8.0", "-|-", false},
		{"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/api/v1?x=1", "-", false},
		{"%REQ(:PATH?X-ENVOY-ORIGINAL-PATH)%", "/api/v1?x=1", "-", false},
		{"%REQ(:PATH):4%", "/api", "-", false},
		{"%REQ(:PATH):0%", "", "-", false},
		{"%REQ(x-empty)%", "", "-", false},
		{"%REQ_WITHOUT_QUERY(:PATH)%", "/api/v1", "-", false},
		{"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %RESP(content-type):4%", "12 text", "- -", false},
		{"%TRAILER(GRPC-STATUS)% %TRAILER(missing)%", "0 -", "- -", false},
		{"%PROTOCOL%", "HTTP/1.1", "-", false},
		{"%RESPONSE_CODE%", "200", "0", false},
		{"%RESPONSE_FLAGS%", "UF,URX", "-", false},
		{"%RESPONSE_CODE_DETAILS%", "via_upstream", "-", false},
		{"%BYTES_RECEIVED% %BYTES_SENT%", "321 4567", "0 0", false},
		{"%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION%", "1500 3 1200 299", "- - - -", false},
		{"%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME%", "10.0.0.7:8080 backend r1", "- - -", false},
		{"%UPSTREAM_TRANSPORT_FAILURE_REASON%", "connection_refused", "-", false},
		{"%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "192.0.2.1:54321 192.0.2.1", "- -", false},
		{"%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "10.1.2.3:8443 10.1.2.3", "- -", false},
		{"%REQUESTED_SERVER_NAME% %DOWNSTREAM_TLS_VERSION%", "example.com TLSv1.3", "- -", false},
		{"%CONNECTION_ID% %STREAM_ID% %UPSTREAM_REQUEST_ATTEMPT_COUNT%", "42 abc-123 2", "0 - 0", false},
		{"%HOSTNAME%", host, host, false},
		{"%ENVIRONMENT(SLUICE_TEST_ENV)% %ENVIRONMENT(SLUICE_TEST_ENV):3% %ENVIRONMENT(SLUICE_NO_SUCH_ENV)%", "envvalue env -", "envvalue env -", false},
		{"%UPSTREAM_CLUSTER:3%|%RESPONSE_CODE:1%", "bac|2", "-|0", false},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			f, err := CompileFormat(tt.format)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(f.Append(nil, fullEntry())); got != tt.full {
				t.Errorf("full entry:\n got %q\nwant %q", got, tt.full)
			}
			if got := string(f.Append(nil, emptyEntry())); got != tt.empty {
				t.Errorf("empty entry:\n got %q\nwant %q", got, tt.empty)
			}
		})
	}
}

func TestFormatNilMapsAndNonUTC(t *testing.T) {
	f := MustCompileFormat("%REQ(a)% %RESP(b)% %TRAILER(c)% %START_TIME%")
	e := &entry{start: time.Date(2024, 1, 1, 1, 0, 0, 0, time.FixedZone("X", 3600))}
	if got, want := string(f.Append(nil, e)), "- - - 2024-01-01T00:00:00.000Z"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestFormatTruncationKeepsUTF8(t *testing.T) {
	f := MustCompileFormat("%REQ(x):2%")
	e := &entry{req: headers("x", "é!")} // é is two bytes
	if got := string(f.Append(nil, e)); got != "é" {
		t.Errorf("got %q", got)
	}
	f = MustCompileFormat("%REQ(x):1%")
	if got := string(f.Append(nil, e)); got != "" {
		t.Errorf("got %q", got)
	}
}

func TestDefaultFormat(t *testing.T) {
	f, err := CompileFormat("")
	if err != nil {
		t.Fatal(err)
	}
	if f.String() != DefaultFormat {
		t.Errorf("empty format is not DefaultFormat")
	}
	want := `[2024-03-05T07:08:09.123Z] "GET /api/v1?x=1 HTTP/1.1" 200 UF,URX 321 4567 1500 12 "10.0.0.1" "curl/8.0" "abc-123" "example.com" "10.0.0.7:8080"` + "\n"
	if got := string(f.Append(nil, fullEntry())); got != want {
		t.Errorf("\n got %q\nwant %q", got, want)
	}
	e := fullEntry()
	e.req.Add("x-envoy-original-path", "/orig")
	if got := string(f.Append(nil, e)); !strings.Contains(got, `"GET /orig HTTP/1.1"`) {
		t.Errorf("original path not preferred: %q", got)
	}
	want = `[-] "- - -" 0 - 0 0 - - "-" "-" "-" "-" "-"` + "\n"
	if got := string(f.Append(nil, emptyEntry())); got != want {
		t.Errorf("\n got %q\nwant %q", got, want)
	}
}

func TestFormatAllocs(t *testing.T) {
	f := MustCompileFormat(DefaultFormat)
	custom := MustCompileFormat("%START_TIME(%Y-%m-%dT%H:%M:%E3S%z %s.%6f)% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %REQ(:PATH):10% %TRAILER(grpc-status)% %RESPONSE_CODE_DETAILS% %CONNECTION_ID% %REQUESTED_SERVER_NAME% %DOWNSTREAM_TLS_VERSION%")
	e := fullEntry()
	buf := make([]byte, 0, 1024)
	for _, f := range []*Format{f, custom} {
		if n := testing.AllocsPerRun(100, func() { buf = f.Append(buf[:0], e) }); n != 0 {
			t.Errorf("%q: %v allocs per Append, want 0", f, n)
		}
	}
}

func TestCompileFormatErrors(t *testing.T) {
	tests := []struct{ format, want string }{
		{"[%START_TIME%] %FOO%", "observe: access log format: unknown command %FOO% at column 16"},
		{"%FOO%", "unknown command %FOO% at column 1"},
		{"héllo %req(x)%", "unknown command %req% at column 7"},
		{"100% sure", "expected a command after % (write %% for a literal %) at column 4"},
		{"trailing %", "expected a command after % (write %% for a literal %) at column 10"},
		{"%REQ(x", "unterminated argument of %REQ at column 1"},
		{"%REQ(x)", "unterminated command %REQ at column 1"},
		{"a %DURATION", "unterminated command %DURATION at column 3"},
		{"%REQ(x):%", "bad maximum length for %REQ at column 1"},
		{"%REQ(x):1a%", "unterminated command %REQ at column 1"},
		{"%REQ%", "%REQ% needs an argument at column 1"},
		{"%REQ()%", "%REQ% needs an argument at column 1"},
		{"%DURATION(x)%", "%DURATION% takes no argument at column 1"},
		{"%REQ(a?b?c)%", `bad header argument "a?b?c" of %REQ% at column 1`},
		{"%REQ(?b)%", `bad header argument "?b" of %REQ% at column 1`},
		{"%REQ(a?)%", `bad header argument "a?" of %REQ% at column 1`},
		{"xx %START_TIME(%Q)%", "%START_TIME(%Q)%: unknown specifier %Q at column 4"},
		{"%START_TIME(%)%", "trailing % at column 1"},
		{"%START_TIME(%E)%", "unknown specifier %E at column 1"},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			_, err := CompileFormat(tt.format)
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "observe: access log format: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestAccessLoggerWritesAndFlushesOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	if err := os.WriteFile(path, []byte("existing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := OpenAccessLog(path, MustCompileFormat("%RESPONSE_CODE% %REQ(:PATH)%\n"))
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, lines = 8, 200
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < lines; i++ {
				l.Log(fullEntry())
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	l.Log(fullEntry()) // after Close: dropped
	got := readFile(t, path)
	want := "existing\n" + strings.Repeat("200 /api/v1?x=1\n", goroutines*lines)
	if got != want {
		t.Errorf("file has %d bytes, want %d", len(got), len(want))
	}
	registry.mu.Lock()
	n := len(registry.files)
	registry.mu.Unlock()
	if n != 0 {
		t.Errorf("%d files still registered", n)
	}
}

func TestAccessLoggerFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.log")
	l, err := OpenAccessLog(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Format().String() != DefaultFormat {
		t.Errorf("nil format is not the default")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&^0o644 != 0 {
		t.Errorf("mode %v", fi.Mode())
	}
}

func TestAccessLoggerOpenError(t *testing.T) {
	if _, err := OpenAccessLog(filepath.Join(t.TempDir(), "missing", "a.log"), nil); err == nil {
		t.Fatal("no error for a missing directory")
	}
}

func TestAccessLoggerSharedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "shared.log")
	a, err := OpenAccessLog(path, MustCompileFormat("a\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenAccessLog(filepath.Join(dir, ".", "shared.log"), MustCompileFormat("b\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a.file != b.file {
		t.Fatal("same path opened twice")
	}
	a.Log(emptyEntry())
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b.Log(emptyEntry()) // the file stays open for b
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); got != "a\nb\n" {
		t.Errorf("got %q", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestAccessLoggerPeriodicFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tick.log")
	l, err := OpenAccessLog(path, MustCompileFormat("line\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Log(emptyEntry())
	deadline := time.Now().Add(5 * time.Second)
	for readFile(t, path) != "line\n" {
		if time.Now().After(deadline) {
			t.Fatal("line not flushed within 5s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAccessLoggerSyncFlushWhenFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.log")
	f := MustCompileFormat("%REQ(x)%\n")
	l, err := OpenAccessLog(path, f)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := &entry{req: headers("x", strings.Repeat("y", 4095))}
	for i := 0; i < 2*maxBuffered/4096; i++ {
		l.Log(e)
	}
	// Whatever the flusher did meanwhile, at most 1 MiB may still wait.
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < maxBuffered {
		t.Errorf("file has %d bytes after %d buffered", fi.Size(), maxBuffered)
	}
}

func TestAccessLoggerReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rot.log")
	l, err := OpenAccessLog(path, MustCompileFormat("%RESPONSE_CODE%\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := fullEntry()
	l.Log(e)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	e.code = 404
	l.Log(e) // queued before the rotation signal: goes to the old file
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	e.code = 503
	l.Log(e)
	if err := ReopenAccessLogs(); err != nil {
		t.Fatal(err)
	}
	e.code = 504
	l.Log(e)
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path+".1"); got != "200\n404\n" {
		t.Errorf("rotated file: %q", got)
	}
	if got := readFile(t, path); got != "503\n504\n" {
		t.Errorf("new file: %q", got)
	}
}

func TestAccessLoggerStdout(t *testing.T) {
	l, err := OpenAccessLog("/dev/stdout", MustCompileFormat(""))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The process's stdout must still be usable.
	if _, err := os.Stdout.Write(nil); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAccessLogDefault(b *testing.B) {
	f := MustCompileFormat(DefaultFormat)
	e := fullEntry()
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = f.Append(buf[:0], e)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkAccessLoggerLog(b *testing.B) {
	l, err := OpenAccessLog(filepath.Join(b.TempDir(), "bench.log"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	e := fullEntry()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Log(e)
		}
	})
}
