package compile

import (
	"strings"
	"testing"
)

func TestOnBlocks(t *testing.T) {
	tests := []struct {
		name, src string
		blocks    [2]int // request, response
		wantErr   string
	}{
		{name: "request and response", src: `on request when request.headers["x-debug"] == "1" {
  set request.headers["x-traced"] = "yes"
}
on response {
  set response.headers["x-served-by"] = "sluice"
}`, blocks: [2]int{1, 1}},
		{name: "empty", src: ``},
		{name: "a route is refused", src: `route r { respond 200 "x" }`, wantErr: "rules.sluice:1:1: only `on request` and `on response` blocks"},
		{name: "an upstream is refused", src: "}\nupstream u {\n  endpoint 127.0.0.1:1\n}\nlistener y 127.0.0.1:2 {", wantErr: "only `on request` and `on response` blocks"},
		{name: "bad CEL keeps the fragment's lines", src: "on request {\n  set request.headers[\"x\"] = nope.field\n}", wantErr: "rules.sluice:2:"},
		{name: "syntax error on the first line has the fragment's column", src: `on request when {`, wantErr: "rules.sluice:1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, err := OnBlocks("rules.sluice", []byte(tt.src), nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(rc.Request) != tt.blocks[0] || len(rc.Response) != tt.blocks[1] {
				t.Fatalf("blocks %d/%d, want %v", len(rc.Request), len(rc.Response), tt.blocks)
			}
		})
	}
}
