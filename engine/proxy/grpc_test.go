package proxy

import (
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
)

func TestParseGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1H", time.Hour, true},
		{"2M", 2 * time.Minute, true},
		{"3S", 3 * time.Second, true},
		{"100m", 100 * time.Millisecond, true},
		{"5u", 5 * time.Microsecond, true},
		{"7n", 7, true},
		{"99999999S", 99999999 * time.Second, true},
		{"99999999H", time.Duration(1<<63 - 1), true}, // saturates
		{"", 0, false},
		{"S", 0, false},
		{"100", 0, false},
		{"100x", 0, false},
		{"-1S", 0, false},
		{"123456789S", 0, false}, // more than 8 digits
		{"1.5S", 0, false},
	} {
		got, ok := parseGRPCTimeout(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc":                true,
		"application/grpc+proto":          true,
		"application/grpc+json":           true,
		"Application/GRPC":                true,
		"application/grpc; charset=utf-8": true,
		"application/grpc-web":            false,
		"application/grpcx":               false,
		"application/json":                false,
		"":                                false,
	} {
		var h header.Map
		if ct != "" {
			h.Add("content-type", ct)
		}
		if got := IsGRPC(&h); got != want {
			t.Errorf("IsGRPC(%q) = %v, want %v", ct, got, want)
		}
	}
}

func TestGRPCLocalReply(t *testing.T) {
	for _, tc := range []struct {
		name        string
		status      int
		body        string
		details     string
		preset      map[string]string
		wantStatus  string
		wantMessage string
	}{
		{"no route", 404, "", "route_not_found", nil, "12", ""},
		{"overflow", 503, "upstream overflow\n", "upstream_overflow", nil, "14", "upstream overflow"},
		{"timeout", 504, "upstream request timeout\n", "upstream_response_timeout", nil, "4", "upstream request timeout"},
		{"forbidden", 403, "RBAC: access denied", "", nil, "7", "RBAC: access denied"},
		{"rate limited", 429, "", "", nil, "14", ""},
		{"bad request", 400, "bad\x01body 100%", "", nil, "13", "bad%01body 100%25"},
		{"teapot", 418, "", "", nil, "2", ""},
		{"filter chose", 403, "x", "", map[string]string{"grpc-status": "16", "grpc-message": "who are you"}, "16", "who are you"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h header.Map
			h.Add(":status", "503")
			h.Add("content-type", "text/plain; charset=utf-8")
			h.Add("content-length", "12")
			h.Add("x-kept", "1")
			for k, v := range tc.preset {
				h.Add(k, v)
			}
			grpcLocalReply(&h, tc.status, tc.body, tc.details)
			if got := h.Value(":status"); got != "200" {
				t.Errorf(":status = %q, want 200", got)
			}
			if got := h.Value("content-type"); got != "application/grpc" {
				t.Errorf("content-type = %q", got)
			}
			if h.Has("content-length") {
				t.Error("content-length kept on a trailers-only reply")
			}
			if got := h.Value("grpc-status"); got != tc.wantStatus {
				t.Errorf("grpc-status = %q, want %q", got, tc.wantStatus)
			}
			if got := h.Value("grpc-message"); got != tc.wantMessage {
				t.Errorf("grpc-message = %q, want %q", got, tc.wantMessage)
			}
			if h.Value("x-kept") != "1" {
				t.Error("other headers dropped")
			}
			if n := h.Count("grpc-status"); n != 1 {
				t.Errorf("%d grpc-status headers", n)
			}
		})
	}
}
