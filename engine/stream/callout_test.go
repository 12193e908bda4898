package stream

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
)

type nopStream struct{ closed bool }

func (s *nopStream) Send([]byte, bool) error                     { return nil }
func (s *nopStream) ResponseHeaders() (*header.Map, bool, error) { return &header.Map{}, true, nil }
func (s *nopStream) Read([]byte) (int, error)                    { return 0, errors.New("nop") }
func (s *nopStream) ResponseTrailers() *header.Map               { return &header.Map{} }
func (s *nopStream) Close() error                                { s.closed = true; return nil }

func TestRegistryOpenStream(t *testing.T) {
	r := NewRegistry()
	var h header.Map
	if _, err := r.OpenStream(context.Background(), "c", &h); err == nil || !strings.Contains(err.Error(), "no server is running") {
		t.Errorf("before a server: %v", err)
	}

	// An HTTPCaller that serves streams.
	var got string
	r.SetHTTPCaller(func(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*HTTPResponse, error) {
		req := StreamRequested(ctx)
		if req == nil {
			return &HTTPResponse{}, nil
		}
		got = cluster
		req.Stream = &nopStream{}
		return nil, nil
	})
	s, err := r.OpenStream(context.Background(), "c", &h)
	if err != nil || s == nil || got != "c" {
		t.Fatalf("stream %v err %v cluster %q", s, err, got)
	}
	if StreamRequested(context.Background()) != nil {
		t.Error("a plain context asks for a stream")
	}

	// One that does not.
	r.SetHTTPCaller(func(context.Context, string, *header.Map, []byte, time.Duration) (*HTTPResponse, error) {
		return &HTTPResponse{}, nil
	})
	if _, err := r.OpenStream(context.Background(), "c", &h); err == nil || !strings.Contains(err.Error(), "does not serve streams") {
		t.Errorf("caller without streams: %v", err)
	}

	// A stream left behind by a failing caller is closed.
	left := &nopStream{}
	r.SetHTTPCaller(func(ctx context.Context, _ string, _ *header.Map, _ []byte, _ time.Duration) (*HTTPResponse, error) {
		StreamRequested(ctx).Stream = left
		return nil, errors.New("late failure")
	})
	if _, err := r.OpenStream(context.Background(), "c", &h); err == nil || !left.closed {
		t.Errorf("err %v, closed %v", err, left.closed)
	}
}
