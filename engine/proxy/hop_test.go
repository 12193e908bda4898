package proxy

import (
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

func mkHeaders(kv ...string) *header.Map {
	var m header.Map
	for i := 0; i+1 < len(kv); i += 2 {
		m.Add(kv[i], kv[i+1])
	}
	return &m
}

func headerPairs(m *header.Map) []string {
	out := []string{}
	for _, f := range m.Fields() {
		out = append(out, f.Name, f.Value)
	}
	return out
}

func TestStripHopByHop(t *testing.T) {
	tests := []struct {
		name        string
		in          []string
		keepUpgrade bool
		want        []string
	}{
		{
			name: "nothing to strip",
			in:   []string{":method", "GET", ":path", "/", "accept", "*/*"},
			want: []string{":method", "GET", ":path", "/", "accept", "*/*"},
		},
		{
			name: "fixed hop-by-hop names removed, any case",
			in: []string{":method", "GET", "Keep-Alive", "timeout=5", "Proxy-Connection", "keep-alive",
				"Transfer-Encoding", "chunked", "TE", "gzip", "Upgrade", "h2c", "Proxy-Authenticate", "Basic",
				"Proxy-Authorization", "Basic x", "Connection", "close", "x-keep", "1"},
			want: []string{":method", "GET", "x-keep", "1"},
		},
		{
			name: "connection-listed headers removed",
			in:   []string{"Connection", "X-Foo, x-bar ,\tX-Baz", "x-foo", "1", "X-BAR", "2", "x-baz", "3", "x-qux", "4"},
			want: []string{"x-qux", "4"},
		},
		{
			name: "every Connection field counts",
			in:   []string{"connection", "x-a", "x-a", "1", "connection", "x-b", "x-b", "2", "x-c", "3"},
			want: []string{"x-c", "3"},
		},
		{
			name: "listed header with several fields removed entirely",
			in:   []string{"connection", "x-a", "x-a", "1", "x-b", "2", "X-A", "3"},
			want: []string{"x-b", "2"},
		},
		{
			name: "empty and whitespace-only tokens ignored",
			in:   []string{"connection", " , ,, x-a ,", "x-a", "1", "x-b", "2"},
			want: []string{"x-b", "2"},
		},
		{
			name: "te trailers kept",
			in:   []string{"te", "trailers", "x", "1"},
			want: []string{"x", "1", "te", "trailers"},
		},
		{
			name: "te trailers among others kept as trailers",
			in:   []string{"TE", "gzip;q=0.5, Trailers", "x", "1"},
			want: []string{"x", "1", "te", "trailers"},
		},
		{
			name: "te trailers kept even when Connection lists te",
			in:   []string{"connection", "te", "te", "trailers"},
			want: []string{"te", "trailers"},
		},
		{
			name: "te without trailers removed",
			in:   []string{"te", "deflate", "x", "1"},
			want: []string{"x", "1"},
		},
		{
			name: "upgrade removed when not kept",
			in:   []string{"connection", "Upgrade", "upgrade", "websocket", "x", "1"},
			want: []string{"x", "1"},
		},
		{
			name:        "upgrade request keeps connection: upgrade and upgrade",
			in:          []string{":method", "GET", "Connection", "keep-alive, Upgrade", "Upgrade", "websocket", "sec-websocket-key", "k"},
			keepUpgrade: true,
			want:        []string{":method", "GET", "sec-websocket-key", "k", "connection", "upgrade", "upgrade", "websocket"},
		},
		{
			name:        "upgrade request still strips other listed headers",
			in:          []string{"Connection", "Upgrade, X-Hop", "Upgrade", "websocket", "x-hop", "1", "keep-alive", "5"},
			keepUpgrade: true,
			want:        []string{"connection", "upgrade", "upgrade", "websocket"},
		},
		{
			name:        "keepUpgrade without upgrade header adds nothing",
			in:          []string{"Connection", "upgrade", "x", "1"},
			keepUpgrade: true,
			want:        []string{"x", "1"},
		},
		{
			name:        "upgrade and te trailers together",
			in:          []string{"connection", "upgrade, te", "upgrade", "websocket", "te", "trailers"},
			keepUpgrade: true,
			want:        []string{"te", "trailers", "connection", "upgrade", "upgrade", "websocket"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mkHeaders(tt.in...)
			stripHopByHop(h, tt.keepUpgrade)
			if got := headerPairs(h); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// Each of these is a header the client controls through Connection.
func TestStripHopByHopConnectionLimits(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{
			// RFC 9110 7.6.1: a proxy MUST remove every field the
			// Connection header lists, not only the first eight.
			name: "more than eight listed headers",
			in: []string{"connection", "x-1, x-2, x-3, x-4, x-5, x-6, x-7, x-8, x-9, x-10",
				"x-1", "a", "x-5", "b", "x-8", "c", "x-9", "d", "x-10", "e", "keep", "f"},
			want: []string{"keep", "f"},
		},
		{
			// Pseudo-headers are not fields: a client listing them in
			// Connection must not be able to delete the request's method,
			// path or authority (they drive routing and the upstream
			// request line).
			name: "pseudo-headers listed in Connection survive",
			in: []string{":method", "GET", ":path", "/p", ":authority", "example.com", ":scheme", "http",
				"connection", ":authority, :path, :method, :scheme"},
			want: []string{":method", "GET", ":path", "/p", ":authority", "example.com", ":scheme", "http"},
		},
		{
			// Several TE fields form one list (RFC 9110 5.3).
			name: "te trailers in a second TE field",
			in:   []string{"te", "gzip", "te", "trailers"},
			want: []string{"te", "trailers"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mkHeaders(tt.in...)
			stripHopByHop(h, false)
			if got := headerPairs(h); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestIsUpgrade(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want bool
	}{
		{"websocket", []string{"connection", "Upgrade", "upgrade", "websocket"}, true},
		{"token among others", []string{"Connection", "keep-alive, UPGRADE", "Upgrade", "websocket"}, true},
		{"token in second connection field", []string{"connection", "keep-alive", "connection", "upgrade", "upgrade", "h2c"}, true},
		{"upgrade header without connection token", []string{"connection", "keep-alive", "upgrade", "websocket"}, false},
		{"upgrade header without connection", []string{"upgrade", "websocket"}, false},
		{"connection token without upgrade header", []string{"connection", "upgrade"}, false},
		{"token substring only", []string{"connection", "upgraded", "upgrade", "websocket"}, false},
		{"nothing", nil, false},
	}
	for _, tt := range tests {
		if got := isUpgrade(mkHeaders(tt.in...)); got != tt.want {
			t.Errorf("%s: isUpgrade = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestNewRequestID(t *testing.T) {
	const n = 1000
	seen := make(map[string]bool, n)
	for range n {
		id := newRequestID()
		if len(id) != 36 {
			t.Fatalf("%q: length %d, want 36", id, len(id))
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			switch i {
			case 8, 13, 18, 23:
				if c != '-' {
					t.Fatalf("%q: byte %d is %q, want '-'", id, i, c)
				}
			default:
				if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
					t.Fatalf("%q: byte %d is %q, want lower-case hex", id, i, c)
				}
			}
		}
		if id[14] != '4' {
			t.Fatalf("%q: version nibble %q, want '4'", id, id[14])
		}
		if !strings.ContainsRune("89ab", rune(id[19])) {
			t.Fatalf("%q: variant nibble %q, want one of 8 9 a b", id, id[19])
		}
		if seen[id] {
			t.Fatalf("duplicate id %q after %d", id, len(seen))
		}
		seen[id] = true
	}
	// Every hex position other than the fixed ones varies.
	for pos := range 36 {
		if pos == 8 || pos == 13 || pos == 14 || pos == 18 || pos == 23 {
			continue
		}
		chars := map[byte]bool{}
		for id := range seen {
			chars[id[pos]] = true
		}
		min := 16
		if pos == 19 {
			min = 4
		}
		if len(chars) < min {
			t.Errorf("position %d takes only %d distinct values over %d ids", pos, len(chars), n)
		}
	}
}

func TestStatusOf(t *testing.T) {
	tests := []struct {
		in   []string
		want int
	}{
		{[]string{":status", "200"}, 200},
		{[]string{":status", "404"}, 404},
		{[]string{":status", "101"}, 101},
		{[]string{":status", "0"}, 0},
		{[]string{":status", ""}, 0},
		{[]string{":status", "abc"}, 0},
		{[]string{":status", "20x"}, 0},
		{[]string{":status", " 200"}, 0},
		{[]string{":status", "-1"}, 0},
		{[]string{"status", "200"}, 0},
		{nil, 0},
		{[]string{":status", "503", ":status", "200"}, 503},
	}
	for _, tt := range tests {
		if got := statusOf(mkHeaders(tt.in...)); got != tt.want {
			t.Errorf("statusOf(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestStatusClass(t *testing.T) {
	tests := []struct{ code, want int }{
		{-1, 5}, {0, 5}, {99, 5}, {100, 1}, {101, 1}, {199, 1}, {200, 2}, {299, 2},
		{301, 3}, {399, 3}, {400, 4}, {404, 4}, {499, 4}, {500, 5}, {599, 5}, {600, 5}, {1000, 5},
	}
	for _, tt := range tests {
		if got := statusClass(tt.code); got != tt.want {
			t.Errorf("statusClass(%d) = %d, want %d", tt.code, got, tt.want)
		}
	}
}

var errRead = errors.New("read failed")

func TestReadAll(t *testing.T) {
	big := strings.Repeat("x", 100<<10)
	tests := []struct {
		name    string
		prefill string
		r       io.Reader
		limit   int
		want    string
		wantErr error
	}{
		{"empty", "", strings.NewReader(""), 10, "", nil},
		{"under limit", "", strings.NewReader("hello"), 10, "hello", nil},
		{"exactly limit", "", strings.NewReader("0123456789"), 10, "0123456789", nil},
		{"one over limit", "", strings.NewReader("0123456789A"), 10, "", errBodyTooLarge},
		{"prefill counts", "abcdef", strings.NewReader("ghijk"), 10, "", errBodyTooLarge},
		{"prefill kept", "ab", strings.NewReader("cd"), 10, "abcd", nil},
		{"many small reads", "", iotest.OneByteReader(strings.NewReader("0123456789")), 10, "0123456789", nil},
		{"many small reads over", "", iotest.OneByteReader(strings.NewReader("0123456789A")), 10, "", errBodyTooLarge},
		{"data with eof", "", iotest.DataErrReader(strings.NewReader("abc")), 3, "abc", nil},
		{"large under limit", "", strings.NewReader(big), len(big), big, nil},
		{"large over limit", "", strings.NewReader(big), len(big) - 1, "", errBodyTooLarge},
		{"reader error", "", iotest.ErrReader(errRead), 10, "", errRead},
		{"error after data", "", io.MultiReader(strings.NewReader("ab"), iotest.ErrReader(errRead)), 10, "", errRead},
		{"zero limit empty body", "", strings.NewReader(""), 0, "", nil},
		{"zero limit one byte", "", strings.NewReader("a"), 0, "", errBodyTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b stream.Buffer
			b.SetString(tt.prefill)
			err := readAll(&b, tt.r, tt.limit)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && string(b.Bytes()) != tt.want {
				t.Errorf("content %d bytes, want %d", b.Len(), len(tt.want))
			}
		})
	}
}

// readAll stops reading soon after the limit: a huge body is not read to
// its end before being refused.
func TestReadAllStopsEarly(t *testing.T) {
	r := &countingReader{}
	var b stream.Buffer
	if err := readAll(&b, r, 1000); !errors.Is(err, errBodyTooLarge) {
		t.Fatalf("err = %v", err)
	}
	if r.n > 1000+64<<10 {
		t.Errorf("read %d bytes for a 1000-byte limit", r.n)
	}
}

// countingReader is an endless source of bytes.
type countingReader struct{ n int }

func (c *countingReader) Read(p []byte) (int, error) {
	if c.n > 100<<20 {
		return 0, io.EOF // bound the test even if readAll never stops
	}
	for i := range p {
		p[i] = 'z'
	}
	c.n += len(p)
	return len(p), nil
}

func TestAppendAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.0.0.1:80", "10.0.0.1"},
		{"[::ffff:10.0.0.1]:80", "10.0.0.1"},
		{"[2001:db8::1]:443", "2001:db8::1"},
	}
	for _, tt := range tests {
		got := string(appendAddr([]byte("x="), netip.MustParseAddrPort(tt.in)))
		if got != "x="+tt.want {
			t.Errorf("appendAddr(%s) = %q, want %q", tt.in, got, "x="+tt.want)
		}
	}
}
