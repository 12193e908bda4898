// Package svc holds the two small services of samples/lua/auth, so the
// sample's test runs the same handlers as its README.
package svc

import (
	"fmt"
	"net/http"
)

// Tokens are the bearer tokens the auth service knows, and their users.
var Tokens = map[string]string{"Bearer let-me-in": "alice"}

// Auth answers GET /check: 200 with x-user for a known token, else 401.
func Auth() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, ok := Tokens[r.Header.Get("Authorization")]
		if r.URL.Path != "/check" || !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("x-user", user)
	})
}

// App greets the user the proxy says the request is from, and tells
// whether credentials reached it (they must not).
func App() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s (credentials seen by the app: %t)\n", r.Header.Get("x-user"), r.Header.Get("Authorization") != "")
	})
}
