// Command server runs the samples/grpc service (gRPC health and
// reflection) on a loopback address, for sluice to proxy.
package main

import (
	"flag"
	"log"
	"net"

	"github.com/sluice-proxy/sluice/samples/grpc/greeter"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "address to listen on")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("gRPC health service on %s", lis.Addr())
	log.Fatal(greeter.New().Serve(lis))
}
