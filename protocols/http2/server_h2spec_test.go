package http2

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// findH2spec locates the h2spec binary: $SLUICE_TOOLS (where
// .ci/install-tools puts it), PATH, then $(go env GOPATH)/bin.
func findH2spec(t *testing.T) string {
	if d := os.Getenv("SLUICE_TOOLS"); d != "" {
		if p := filepath.Join(d, "h2spec"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
			if p := filepath.Join(dir, "bin", "h2spec"); fileExists(p) {
				return p
			}
		}
	}
	if os.Getenv("SLUICE_REQUIRE_TOOLS") == "1" {
		t.Fatal("h2spec not found (run .ci/install-tools)")
	}
	t.Skip("h2spec not found; run .ci/install-tools (SLUICE_REQUIRE_TOOLS=1 makes this a failure)")
	return ""
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

var h2specSummary = regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`)

// h2specStrictCases is the size of h2spec v2.2.1's suite with -S: the 145
// generic, HTTP/2 and HPACK cases plus the strict-only one (GOAWAY before
// closing on a connection error).
const h2specStrictCases = 146

// TestH2Spec runs the full h2spec conformance suite, strict cases
// included, over h2c and over TLS.
func TestH2Spec(t *testing.T) {
	if testing.Short() {
		t.Skip("h2spec takes a while")
	}
	bin := findH2spec(t)
	cases := []struct {
		name string
		wrap func(net.Listener) net.Listener
		args []string
	}{
		{"h2c", nil, nil},
		{"tls", func(ln net.Listener) net.Listener { return tls.NewListener(ln, selfSignedTLS(t)) }, []string{"-t", "-k"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, okHandler, nil, tc.wrap)
			_, port, _ := net.SplitHostPort(srv.addr)
			args := append([]string{"-h", "127.0.0.1", "-p", port, "-o", "2", "-S"}, tc.args...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
			m := h2specSummary.FindSubmatch(out)
			if m == nil {
				t.Fatalf("h2spec: no summary (err %v):\n%s", err, out)
			}
			total, _ := strconv.Atoi(string(m[1]))
			passed, _ := strconv.Atoi(string(m[2]))
			t.Logf("h2spec %s: %s", tc.name, m[0])
			if total != h2specStrictCases || passed != total {
				t.Errorf("h2spec %s: %s, want all %d passed; failures:\n%s", tc.name, m[0], h2specStrictCases, failures(out))
			}
		})
	}
}

// failures extracts the failing cases from h2spec's report.
func failures(out []byte) string {
	i := bytes.Index(out, []byte("Failures:"))
	if i < 0 {
		return string(out)
	}
	return string(out[i:])
}
