package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestCLI(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		code    int
		wantOut string
		wantErr string
	}{
		{"version", []string{"version"}, 0, "sluice ", ""},
		{"help", []string{"help"}, 0, "sluice run [-c FILE]", ""},
		{"help run", []string{"help", "run"}, 0, "", "SIGHUP reloads"},
		{"unknown command", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"validate sample", []string{"validate", "../../samples/static/envoy.yaml"}, 0, "ok (1 listeners, 2 clusters)", ""},
		{"validate quickstart", []string{"validate", "quickstart.sluice"}, 0, "ok", ""},
		{"test quickstart compiles", []string{"fmt", "quickstart.sluice"}, 0, "listener quickstart", ""},
		{"validate unknown field", []string{"validate", "testdata/unknown-field.yaml"}, 1, "", "timeuot"},
		{"validate unknown cluster", []string{"validate", "testdata/unknown-cluster.yaml"}, 1, "", `unknown cluster "nope"`},
		{"validate missing file", []string{"validate", "testdata/nope.yaml"}, 1, "", "no such file"},
		{"validate dsl sample", []string{"validate", "../../samples/routing/gateway.sluice"}, 0, "ok (1 listeners, 2 clusters)", ""},
		{"validate missing dsl", []string{"validate", "x.sluice"}, 1, "", "x.sluice"},
		{"validate bad dsl", []string{"validate", "testdata/bad.sluice"}, 1, "", "unknown upstream \"apii\""},
		{"test dsl sample", []string{"test", "../../samples/routing/gateway.sluice"}, 0, "4 passed, 0 failed", ""},
		{"explain", []string{"explain", "../../samples/routing/gateway.sluice", "GET", "http://example.com/api/x", "-H", "x-canary: true"}, 0, "route: canary", ""},
		{"fmt", []string{"fmt", "../../samples/routing/gateway.sluice"}, 0, "route canary when", ""},
		{"validate nothing", []string{"validate"}, 2, "", "Usage: sluice validate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := runMain(tc.args, &out, &errb)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out.String(), errb.String())
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("stdout %q lacks %q", out.String(), tc.wantOut)
			}
			if !strings.Contains(errb.String(), tc.wantErr) {
				t.Errorf("stderr %q lacks %q", errb.String(), tc.wantErr)
			}
		})
	}
}
