//go:build wasip1

// The header sample's proxy-wasm filter, in standard Go:
//   - requests: removes every x-internal-* header a client sent, so only
//     the proxy and the backends can set them;
//   - responses: adds x-wasm with the plugin configuration as its value.
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o header.wasm
package main

import "strings"

func main() {}

// tag is the plugin configuration: the value of x-wasm.
var tag string

//go:wasmexport proxy_on_configure
func proxyOnConfigure(root, size uint32) uint32 {
	tag = strings.TrimSpace(string(getBuffer(bufPluginConfig, 0, size)))
	if tag == "" {
		log(logWarn, "header: the plugin configuration (the x-wasm value) is empty")
		return 0 // refuse: the proxy rejects the config
	}
	return 1
}

//go:wasmexport proxy_on_request_headers
func proxyOnRequestHeaders(id, n, end uint32) uint32 {
	for _, kv := range headerPairs(mapRequestHeaders) {
		if strings.HasPrefix(strings.ToLower(kv[0]), "x-internal-") {
			removeHeader(mapRequestHeaders, kv[0])
		}
	}
	return actionContinue
}

//go:wasmexport proxy_on_response_headers
func proxyOnResponseHeaders(id, n, end uint32) uint32 {
	addHeader(mapResponseHeaders, "x-wasm", tag)
	return actionContinue
}
