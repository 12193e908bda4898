// Command sluiceprof is sluice for profiling: the same server, codec and
// filters as `sluice run -c FILE` (the wiring of cmd/sluice/wiring.go,
// replicated because package main cannot be imported), plus net/http/pprof
// on a separate loopback address. The admin server has no pprof on purpose;
// this binary exists only for bench/run -profile.
//
//	sluiceprof -c envoy.yaml -pprof 127.0.0.1:6060 [-memprofilerate 4096]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/sluice-proxy/sluice/engine/filters/headermutation"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/protocols/http1"
	"github.com/sluice-proxy/sluice/xds"
)

// builtins mirrors cmd/sluice/wiring.go.
func builtins() *stream.Registry {
	r := stream.NewRegistry()
	r.RegisterCodec("http1", http1.NewServerCodec(), http1.NewClientCodec())
	r.RegisterFilter(headermutation.Compiler{}, headermutation.TypeNames...)
	return r
}

func main() {
	cfg := flag.String("c", "", "Envoy v3 bootstrap file")
	pprofAddr := flag.String("pprof", "127.0.0.1:6060", "pprof listen address")
	rate := flag.Int("memprofilerate", 0, "runtime.MemProfileRate (0: Go's default, 512 KiB)")
	flag.Parse()
	if *rate > 0 {
		runtime.MemProfileRate = *rate
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	snap, err := xds.LoadBootstrapFile(*cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := server.New(server.Options{Registry: builtins(), Log: log, AdminAddress: "127.0.0.1:0"})
	if err := srv.Apply(snap); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		if err := http.ListenAndServe(*pprofAddr, nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Shutdown()
}
