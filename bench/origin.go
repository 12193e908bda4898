package bench

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"time"
)

// SmallBody and BigBody are what the origin serves: any path containing
// "16k" gets BigBody, every other path SmallBody.
var (
	SmallBody = []byte("hello from the sluice bench origin\n")
	BigBody   = bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB
)

func response(body []byte, close bool) []byte {
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 200 OK\r\nServer: bench-origin\r\nContent-Type: text/plain\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(body)))
	if close {
		b.WriteString("\r\nConnection: close")
	}
	b.WriteString("\r\n\r\n")
	b.Write(body)
	return b.Bytes()
}

var (
	respSmall      = response(SmallBody, false)
	respBig        = response(BigBody, false)
	respSmallClose = response(SmallBody, true)
	respBigClose   = response(BigBody, true)
	resp400        = []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
)

// ServeOrigin answers HTTP/1.1 requests on ln until it is closed: a
// minimal, fast origin on raw sockets (a goroutine per connection, no
// allocation per request), so what a benchmark measures is the proxy.
// A request with "Connection: close" (or HTTP/1.0) is answered and the
// connection closed.
func ServeOrigin(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go serveConn(c)
	}
}

// serveConn answers requests on one connection. It understands just enough
// HTTP/1.1 for a benchmark: the request line, Connection: close and a
// Content-Length body (skipped). Pipelined requests are answered in order.
func serveConn(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 16<<10)
	have := 0
	skip := 0 // request body bytes still to discard
	for {
		n, err := c.Read(buf[have:])
		if n == 0 && err != nil {
			return
		}
		have += n
		for {
			if skip > 0 {
				d := min(skip, have)
				copy(buf, buf[d:have])
				have -= d
				skip -= d
				if skip > 0 {
					break
				}
			}
			end := bytes.Index(buf[:have], crlfcrlf)
			if end < 0 {
				if have == len(buf) {
					c.Write(resp400)
					return
				}
				break
			}
			head := buf[:end+2]
			big, closeConn, clen, ok := inspect(head)
			if !ok {
				c.Write(resp400)
				return
			}
			var resp []byte
			switch {
			case big && closeConn:
				resp = respBigClose
			case big:
				resp = respBig
			case closeConn:
				resp = respSmallClose
			default:
				resp = respSmall
			}
			if _, err := c.Write(resp); err != nil || closeConn {
				if closeConn {
					// Let the client read the response before the FIN.
					if tc, ok := c.(*net.TCPConn); ok {
						tc.CloseWrite()
						tc.SetReadDeadline(time.Now().Add(2 * time.Second))
						io.Copy(io.Discard, io.LimitReader(c, 1<<16))
					}
				}
				return
			}
			consumed := end + 4
			copy(buf, buf[consumed:have])
			have -= consumed
			skip = clen
		}
	}
}

var (
	crlfcrlf = []byte("\r\n\r\n")
	crlf     = []byte("\r\n")
)

// inspect reads what the origin needs from a request head (request line and
// header lines, each ending in CRLF).
func inspect(head []byte) (big, closeConn bool, clen int, ok bool) {
	i := bytes.Index(head, crlf)
	if i < 0 {
		return false, false, 0, false
	}
	line := head[:i]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return false, false, 0, false
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 < 0 {
		return false, false, 0, false
	}
	big = bytes.Contains(rest[:sp2], []byte("16k"))
	if bytes.HasSuffix(rest[sp2+1:], []byte("1.0")) {
		closeConn = true
	}
	head = head[i+2:]
	for len(head) > 0 {
		j := bytes.Index(head, crlf)
		if j < 0 {
			break
		}
		h := head[:j]
		head = head[j+2:]
		colon := bytes.IndexByte(h, ':')
		if colon < 0 {
			continue
		}
		name, val := h[:colon], bytes.TrimSpace(h[colon+1:])
		switch {
		case asciiEqualFold(name, "connection"):
			if asciiEqualFold(val, "close") {
				closeConn = true
			}
		case asciiEqualFold(name, "content-length"):
			n, err := strconv.Atoi(string(val))
			if err != nil || n < 0 {
				return false, false, 0, false
			}
			clen = n
		}
	}
	return big, closeConn, clen, true
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
