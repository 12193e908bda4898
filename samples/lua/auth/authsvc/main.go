// Command authsvc is the auth service of samples/lua/auth: GET /check
// answers 200 with the user's name in x-user for a known bearer token,
// 401 otherwise. It also serves as the sample's app on a second address,
// echoing who the request came from.
package main

import (
	"flag"
	"log"
	"net/http"

	"github.com/sluice-proxy/sluice/samples/lua/auth/authsvc/svc"
)

func main() {
	authAddr := flag.String("auth", "127.0.0.1:9103", "auth service address")
	appAddr := flag.String("app", "127.0.0.1:9102", "app address")
	flag.Parse()
	go func() { log.Fatal(http.ListenAndServe(*appAddr, svc.App())) }()
	log.Printf("auth service on %s, app on %s", *authAddr, *appAddr)
	log.Fatal(http.ListenAndServe(*authAddr, svc.Auth()))
}
