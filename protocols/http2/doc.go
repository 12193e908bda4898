// Package http2 holds the HTTP/2 server and client codecs (RFC 9113). They
// read and write frames with golang.org/x/net/http2's Framer and compress
// header blocks with its hpack package; the connection and stream state
// machines, flow control, limits and flood protection are our own.
package http2
