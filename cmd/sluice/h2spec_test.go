package main

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
)

var h2specSummary = regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`)

// h2specStrictCases is h2spec v2.2.1's suite with -S: 145 cases plus the
// strict-only one.
const h2specStrictCases = 146

// TestH2SpecProxy runs h2spec, strict, against the running proxy: an
// HTTP/2-only h2c listener and a TLS listener offering h2 by ALPN, both
// proxying to an HTTP/1.1 origin (h2spec's requests carry bodies, so the
// whole path is exercised, not only the codec).
func TestH2SpecProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("h2spec takes a while")
	}
	bin := tool(t, "h2spec")
	up := newUpstream(t, nil)
	ca := tlstest.NewCA(t, "h2spec ca")
	certFile, keyFile := ca.Issue(t, "localhost").WriteFiles(t, t.TempDir(), "proxy")

	for _, tc := range []struct {
		name  string
		codec config.Codec
		tls   bool
	}{
		{"h2c", config.CodecHTTP2, false},
		{"tls", config.CodecAuto, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := hcm(prefixRoute("all", "/", "up"))
			m.Codec = tc.codec
			snap := snapshot(m, cluster("up", up.addr()))
			args := []string{"-h", "127.0.0.1", "-o", "2", "-S"}
			if tc.tls {
				snap.Listeners[0].FilterChains[0].TLS = &config.DownstreamTLS{
					Certificates: []config.Certificate{{Chain: config.DataSource{Filename: certFile}, Key: config.DataSource{Filename: keyFile}}},
				}
				args = append(args, "-t", "-k")
			}
			srv := startServer(t, snap)
			_, port, _ := net.SplitHostPort(srv.ListenerAddr("main").String())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, append(args, "-p", port)...).CombinedOutput()
			m2 := h2specSummary.FindSubmatch(out)
			if m2 == nil {
				t.Fatalf("h2spec: no summary (err %v):\n%s", err, out)
			}
			total, _ := strconv.Atoi(string(m2[1]))
			passed, _ := strconv.Atoi(string(m2[2]))
			t.Logf("h2spec %s: %s", tc.name, m2[0])
			if total != h2specStrictCases || passed != total {
				failures := out
				if i := bytes.Index(out, []byte("Failures:")); i >= 0 {
					failures = out[i:]
				}
				t.Errorf("h2spec %s: %s, want all %d passed; failures:\n%s", tc.name, m2[0], h2specStrictCases, failures)
			}
		})
	}
}
