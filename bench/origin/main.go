// Command origin is the benchmark upstream: bench.ServeOrigin (a minimal,
// fast HTTP/1.1 origin on raw sockets, no allocation per request) and,
// optionally, an h2c (HTTP/2 cleartext, prior knowledge) origin on net/http
// for the direct HTTP/2 ceiling.
//
// Any path containing "16k" gets a 16 KiB body; every other path gets a
// small body.
//
//	origin -addr 127.0.0.1:9000 [-h2c 127.0.0.1:9001]
//
// It prints "ready ADDR" on stdout once it listens.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/sluice-proxy/sluice/bench"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "HTTP/1.1 listen address (loopback)")
	h2c := flag.String("h2c", "", "optional h2c (prior knowledge) listen address, served by net/http")
	flag.Parse()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	go func() { log.Fatal(bench.ServeOrigin(ln)) }()
	if *h2c != "" {
		hl, err := net.Listen("tcp", *h2c)
		if err != nil {
			log.Fatal(err)
		}
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		srv := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body := bench.SmallBody
			if strings.Contains(r.URL.Path, "16k") {
				body = bench.BigBody
			}
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
		})}
		go func() { log.Fatal(srv.Serve(hl)) }()
	}
	fmt.Println("ready", ln.Addr().String())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
