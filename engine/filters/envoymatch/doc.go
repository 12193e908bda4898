// Package envoymatch is what native filters configured by Envoy's own
// protos (RBAC, fault injection, CORS, ...) share: Envoy's string, regex,
// header, path and CIDR matchers and its fractional percents, compiled
// once at config time with Envoy's semantics, and a check that rejects any
// field a compiler does not handle, naming its path, so nothing in a
// config is dropped silently. (The xDS translator has its own field check,
// tied to its error paths.)
package envoymatch
