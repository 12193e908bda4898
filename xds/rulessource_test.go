package xds

import (
	"strings"
	"testing"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-proxy/sluice/engine/config"
)

func TestRulesSource(t *testing.T) {
	ts := func(url string, v map[string]any) *anypb.Any {
		s, err := structpb.NewStruct(v)
		if err != nil {
			t.Fatal(err)
		}
		a, err := anypb.New(&xdstypev3.TypedStruct{TypeUrl: url, Value: s})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	tests := []struct {
		name    string
		a       *anypb.Any
		ok      bool
		want    config.RulesSource
		wantErr string
	}{
		{name: "source and name", a: ts(config.TypeRulesSource, map[string]any{"source": "on request {}", "name": "r"}),
			ok: true, want: config.RulesSource{Name: "r", Source: "on request {}"}},
		{name: "another TypedStruct", a: ts("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", nil)},
		{name: "no source", a: ts(config.TypeRulesSource, map[string]any{"name": "r"}), ok: true, wantErr: "source is required"},
		{name: "unknown field", a: ts(config.TypeRulesSource, map[string]any{"source": "x", "sorce": "y"}), ok: true, wantErr: `unknown field "sorce"`},
		{name: "not a string", a: ts(config.TypeRulesSource, map[string]any{"source": 3.0}), ok: true, wantErr: "want a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, ok, err := rulesSource(tt.a)
			if ok != tt.ok {
				t.Fatalf("ok %v, want %v", ok, tt.ok)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.ok && *rs != tt.want {
				t.Fatalf("got %+v, want %+v", *rs, tt.want)
			}
		})
	}
}
