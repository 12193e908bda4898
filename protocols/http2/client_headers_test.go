package http2

import (
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/header"
)

func TestClientRequestHead(t *testing.T) {
	tests := []struct {
		name    string
		fields  []string // name, value pairs
		want    string   // "name: value" lines, or the error's substring
		wantErr bool
	}{
		{"canonical order", []string{":path", "/p", ":authority", "a.test", ":method", "GET", ":scheme", "https"},
			":method: GET|:scheme: https|:authority: a.test|:path: /p", false},
		{"host becomes :authority and is dropped", []string{":method", "GET", ":scheme", "http", ":path", "/", "Host", "h.test", "Accept", "*/*"},
			":method: GET|:scheme: http|:authority: h.test|:path: /|accept: */*", false},
		{"connection-specific dropped, te kept as trailers", []string{":method", "GET", ":scheme", "http", ":path", "/",
			"Connection", "x", "Keep-Alive", "1", "Proxy-Connection", "k", "Transfer-Encoding", "chunked", "Upgrade", "h2c", "TE", "deflate, trailers", "X-Odd-Name", "v"},
			":method: GET|:scheme: http|:path: /|te: trailers|x-odd-name: v", false},
		{"te without trailers dropped", []string{":method", "GET", ":scheme", "http", ":path", "/", "te", "gzip"},
			":method: GET|:scheme: http|:path: /", false},
		{"CONNECT", []string{":method", "CONNECT", ":authority", "a.test:443"}, ":method: CONNECT|:authority: a.test:443", false},
		{"extended CONNECT", []string{":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":path", "/ws", ":authority", "a"},
			":method: CONNECT|:scheme: https|:authority: a|:path: /ws|:protocol: websocket", false},
		{"CONNECT with path", []string{":method", "CONNECT", ":authority", "a:1", ":path", "/"}, "CONNECT takes", true},
		{"missing method", []string{":scheme", "http", ":path", "/"}, ":method", true},
		{"missing scheme", []string{":method", "GET", ":path", "/"}, ":scheme", true},
		{"missing path", []string{":method", "GET", ":scheme", "http"}, ":path", true},
		{"duplicate pseudo", []string{":method", "GET", ":method", "GET", ":scheme", "http", ":path", "/"}, "duplicate", true},
		{"unknown pseudo", []string{":method", "GET", ":scheme", "http", ":path", "/", ":status", "200"}, "unknown pseudo", true},
		{"space in path", []string{":method", "GET", ":scheme", "http", ":path", "/a b"}, ":path", true},
		{"bad authority", []string{":method", "GET", ":scheme", "http", ":path", "/", ":authority", "u@h"}, ":authority", true},
		{"bad name", []string{":method", "GET", ":scheme", "http", ":path", "/", "a b", "v"}, "field name", true},
		{"CRLF in value", []string{":method", "GET", ":scheme", "http", ":path", "/", "x", "a\r\nb: c"}, "value", true},
		{":protocol without CONNECT", []string{":method", "GET", ":scheme", "http", ":path", "/", ":protocol", "ws"}, ":protocol", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &header.Map{}
			for i := 0; i < len(tc.fields); i += 2 {
				h.Add(tc.fields[i], tc.fields[i+1])
			}
			rh := &clientRequestHead{}
			err := rh.build(h)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "http2: ") {
					t.Fatalf("error %v, want one about %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range rh.fields {
				got = append(got, f.Name+": "+f.Value)
			}
			if strings.Join(got, "|") != tc.want {
				t.Fatalf("got  %s\nwant %s", strings.Join(got, "|"), tc.want)
			}
		})
	}
}

func TestClientLowerNameDoesNotAllocateForCommonNames(t *testing.T) {
	for _, name := range []string{"content-type", "Content-Type", "User-Agent"} {
		if n := testing.AllocsPerRun(100, func() { clLowerName(name) }); n != 0 {
			t.Errorf("%s: %v allocations", name, n)
		}
	}
	if got, _ := clLowerName("X-Rare-HEADER"); got != "x-rare-header" {
		t.Errorf("got %q", got)
	}
}

func TestClientTrailerBlock(t *testing.T) {
	tr := &header.Map{}
	tr.Add("Grpc-Status", "0")
	tr.Add("Connection", "x")
	rh := &clientRequestHead{}
	if err := rh.buildTrailers(tr); err != nil || len(rh.fields) != 1 || rh.fields[0].Name != "grpc-status" {
		t.Fatalf("%v %v", rh.fields, err)
	}
	tr.Add(":path", "/")
	if err := (&clientRequestHead{}).buildTrailers(tr); err == nil {
		t.Fatal("pseudo-header accepted in trailers")
	}
}
