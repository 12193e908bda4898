package main

import (
	_ "embed"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"
)

//go:embed quickstart.sluice
var quickstartConfig []byte

// demoUpstreamAddr is where the quickstart's demo upstream listens; the
// embedded config routes to it.
const demoUpstreamAddr = "127.0.0.1:8081"

// startDemoUpstream runs a small origin server that echoes what it
// received, so the quickstart shows what the proxy added on the way.
func startDemoUpstream(addr string, log *slog.Logger) (net.Addr, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("quickstart: demo upstream: %w", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(demoHandler), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	log.Info("demo upstream listening", "address", ln.Addr().String())
	return ln.Addr(), func() { srv.Close() }, nil
}

func demoHandler(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	fmt.Fprintf(&b, "Hello from the Sluice demo upstream!\n\nYou sent: %s %s %s\nHost: %s\n", r.Method, r.URL.RequestURI(), r.Proto, r.Host)
	names := make([]string, 0, len(r.Header))
	for k := range r.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "%s: %s\n", k, strings.Join(r.Header[k], ", "))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Demo-Upstream", "1")
	fmt.Fprint(w, b.String())
}
