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

	var got string
	want := &nopStream{}
	r.SetStreamOpener(func(ctx context.Context, cluster string, h *header.Map) (CalloutStream, error) {
		got = cluster
		return want, nil
	})
	s, err := r.OpenStream(context.Background(), "c", &h)
	if err != nil || s != want || got != "c" {
		t.Fatalf("stream %v err %v cluster %q", s, err, got)
	}

	// The opener's errors reach the caller unchanged.
	errNo := errors.New("no such cluster")
	r.SetStreamOpener(func(context.Context, string, *header.Map) (CalloutStream, error) { return nil, errNo })
	if _, err := r.OpenStream(context.Background(), "c", &h); !errors.Is(err, errNo) {
		t.Errorf("err %v", err)
	}

	// Unary calls do not open streams.
	r.SetHTTPCaller(func(context.Context, string, *header.Map, []byte, time.Duration) (*HTTPResponse, error) {
		return &HTTPResponse{}, nil
	})
	if s, err := r.OpenStream(context.Background(), "c", &h); !errors.Is(err, errNo) || s != nil {
		t.Errorf("stream %v err %v", s, err)
	}
}
