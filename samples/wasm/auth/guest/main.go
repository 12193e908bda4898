//go:build wasip1

// The auth sample's proxy-wasm filter, in standard Go. Every request is
// checked with the auth service (the proxy's "auth" cluster) before it
// goes on:
//   - no authorization header: 401 "missing credentials", with
//     www-authenticate, and no call;
//   - otherwise GET /check on "auth" with the request's authorization
//     header, the request paused until the answer comes;
//   - the auth service answers 200: the request goes on without its
//     credentials and with x-user set to the auth service's x-user;
//   - it answers anything else: 403 "forbidden", and a log line;
//   - it cannot be reached (no answer within a second): 503.
//
// The plugin configuration is optional JSON, {"realm": "api"}, which adds
// realm="api" to www-authenticate. The filter uses the default root id "".
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o auth.wasm
package main

import (
	"encoding/json"
	"strconv"
)

func main() {}

const (
	authCluster   = "auth"
	authTimeoutMs = 1000
)

// challenge is the www-authenticate value of a 401.
var challenge = "Bearer"

//go:wasmexport proxy_on_configure
func proxyOnConfigure(root, size uint32) uint32 {
	b := getBuffer(bufPluginConfig, 0, size)
	if len(b) == 0 {
		return 1
	}
	var cfg struct {
		Realm string `json:"realm"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		log(logWarn, "auth: the plugin configuration is not JSON like {\"realm\": \"api\"}: "+err.Error())
		return 0 // refuse: the proxy rejects the config
	}
	if cfg.Realm != "" {
		challenge = "Bearer realm=" + strconv.Quote(cfg.Realm)
	}
	return 1
}

//go:wasmexport proxy_on_request_headers
func proxyOnRequestHeaders(id, n, end uint32) uint32 {
	token, ok := getHeader(mapRequestHeaders, "authorization")
	if !ok || token == "" {
		sendLocal(401, "wasm_auth_missing", "missing credentials\n", "www-authenticate", challenge)
		return actionPause
	}
	if r := httpCall(authCluster, []string{
		":method", "GET",
		":path", "/check",
		":authority", "auth",
		"authorization", token,
	}, authTimeoutMs); r != resultOk {
		log(logWarn, "auth: http_call failed: "+strconv.Itoa(int(r)))
		sendLocal(503, "wasm_auth_call_failed", "auth service unavailable\n")
		return actionPause
	}
	return actionPause // until proxy_on_http_call_response
}

//go:wasmexport proxy_on_http_call_response
func proxyOnHTTPCallResponse(id, token, headers, bodySize, trailers uint32) {
	status, _ := getHeader(mapCallResponseHeaders, ":status")
	switch status {
	case "200":
		user, _ := getHeader(mapCallResponseHeaders, "x-user")
		removeHeader(mapRequestHeaders, "authorization")
		replaceHeader(mapRequestHeaders, "x-user", user)
		proxyContinueStream(streamRequest)
	case "":
		// The call failed: no connection, or no answer in time.
		log(logWarn, "auth: the auth service did not answer")
		sendLocal(503, "wasm_auth_unavailable", "auth service unavailable\n")
	default:
		log(logInfo, "auth refused: "+status)
		sendLocal(403, "wasm_auth_denied", "forbidden\n")
	}
}
