package http1

import (
	"bufio"
	"bytes"
	"io"

	"github.com/sluice-proxy/sluice/engine/header"
)

type bodyMode uint8

const (
	bodyNone    bodyMode = iota // no body at all
	bodyLength                  // Content-Length bytes
	bodyChunked                 // chunked transfer coding
	bodyClose                   // until the peer closes (responses only)
)

// chunk decoder states
const (
	chSize    uint8 = iota // expecting a chunk-size line
	chData                 // inside chunk data
	chDataEnd              // expecting the CRLF after chunk data
	chTrailer              // expecting the trailer section
)

// bodyReader reads one message body from a connection's bufio.Reader. When
// it knows the body has ended (Content-Length exhausted, or the chunked
// terminator and trailers already buffered) it returns the last data
// together with io.EOF, so a proxy can send body and end in one write.
// Errors are sticky.
type bodyReader struct {
	br          *bufio.Reader
	mode        bodyMode
	cstate      uint8
	done        bool
	remaining   int64 // bodyLength: bytes left; bodyChunked: bytes left in the chunk
	err         error
	trailers    *header.Map
	acc         *[]byte // scratch for the trailer block
	maxBytes    int     // trailer section limits
	maxTrailers int
}

func (r *bodyReader) reset(br *bufio.Reader, mode bodyMode, n int64) {
	r.br, r.mode, r.remaining = br, mode, n
	r.cstate, r.done, r.err = chSize, mode == bodyNone, nil
	if mode == bodyLength && n == 0 {
		r.done = true
	}
}

// finished reports whether the body was read to its end.
func (r *bodyReader) finished() bool { return r.done }

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.done {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	switch r.mode {
	case bodyLength:
		return r.readLength(p)
	case bodyChunked:
		return r.readChunked(p)
	case bodyClose:
		n, err := r.br.Read(p)
		if err == io.EOF {
			r.done = true
		} else if err != nil {
			r.err = &ioError{"read body", err}
			err = r.err
		}
		return n, err
	}
	r.done = true
	return 0, io.EOF
}

func (r *bodyReader) fail(err error) error {
	switch err {
	case io.EOF, io.ErrUnexpectedEOF:
		err = ErrBodyTruncated
	case bufio.ErrBufferFull:
		err = errChunkLine
	default:
		if _, ok := err.(*ProtocolError); !ok {
			err = &ioError{"read body", err}
		}
	}
	r.err = err
	return err
}

func (r *bodyReader) readLength(p []byte) (int, error) {
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.br.Read(p)
	r.remaining -= int64(n)
	if r.remaining == 0 {
		r.done = true
		return n, io.EOF
	}
	if err != nil {
		return n, r.fail(err)
	}
	return n, nil
}

func (r *bodyReader) readChunked(p []byte) (int, error) {
	n := 0
	for {
		switch r.cstate {
		case chSize:
			if n > 0 && !r.lineBuffered() {
				return n, nil
			}
			line, err := r.br.ReadSlice('\n')
			if err != nil {
				return n, r.fail(err)
			}
			size, err := parseChunkLine(line)
			if err != nil {
				return n, r.fail(err)
			}
			if size == 0 {
				r.cstate = chTrailer
			} else {
				r.remaining, r.cstate = int64(size), chData
			}
		case chData:
			if n == len(p) {
				return n, nil
			}
			want := len(p) - n
			if int64(want) > r.remaining {
				want = int(r.remaining)
			}
			if n > 0 {
				want = min(want, r.br.Buffered())
				if want == 0 {
					return n, nil
				}
			}
			m, err := r.br.Read(p[n : n+want])
			n += m
			r.remaining -= int64(m)
			if r.remaining == 0 {
				r.cstate = chDataEnd
			}
			if err != nil {
				return n, r.fail(err)
			}
		case chDataEnd:
			if n > 0 && r.br.Buffered() < 2 {
				return n, nil
			}
			b, err := r.br.Peek(2)
			if err != nil {
				return n, r.fail(err)
			}
			if b[0] != '\r' || b[1] != '\n' {
				return n, r.fail(errChunkCRLF)
			}
			r.br.Discard(2)
			r.cstate = chSize
		case chTrailer:
			if n > 0 && !r.trailersBuffered() {
				return n, nil
			}
			if err := r.readTrailers(); err != nil {
				return n, r.fail(err)
			}
			r.done = true
			return n, io.EOF
		}
	}
}

func (r *bodyReader) lineBuffered() bool {
	b, _ := r.br.Peek(r.br.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
}

func (r *bodyReader) trailersBuffered() bool {
	b, _ := r.br.Peek(r.br.Buffered())
	if len(b) >= 2 && b[0] == '\r' && b[1] == '\n' {
		return true
	}
	return bytes.Index(b, crlfcrlf) >= 0
}

// readTrailers reads the trailer section after the last chunk.
func (r *bodyReader) readTrailers() error {
	b, err := r.br.Peek(2)
	if err != nil {
		return err
	}
	if b[0] == '\r' && b[1] == '\n' {
		r.br.Discard(2)
		return nil
	}
	a := (*r.acc)[:0]
	defer func() { *r.acc = a[:0] }()
	lineStart := 0
	for {
		line, err := r.br.ReadSlice('\n')
		if len(a)+len(line) > r.maxBytes {
			return errTrailers
		}
		a = append(a, line...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return err
		}
		l := a[lineStart:]
		if len(l) == 1 || len(l) == 2 && l[0] == '\r' {
			break
		}
		lineStart = len(a)
	}
	return parseFields(string(a), r.trailers, r.maxTrailers, modeTrailer, nil)
}

// parseChunkLine parses "chunk-size [chunk-ext] CRLF" (line includes the
// LF). Sizes are hex without sign or prefix; extensions must follow the
// grammar of RFC 9112 7.1.1 (they are then ignored).
func parseChunkLine(line []byte) (uint64, error) {
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return 0, errChunkSize
	}
	line = line[:len(line)-2]
	var size uint64
	i := 0
	for ; i < len(line) && chars[line[i]]&cHex != 0; i++ {
		if size>>59 != 0 {
			return 0, errChunkOverflow
		}
		c := line[i]
		switch {
		case c <= '9':
			c -= '0'
		case c >= 'a':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		size = size<<4 | uint64(c)
	}
	if i == 0 {
		return 0, errChunkSize
	}
	if i < len(line) {
		if c := line[i]; c != ';' && c != ' ' && c != '\t' {
			return 0, errChunkSize
		}
		if !validChunkExt(line[i:]) {
			return 0, errChunkExt
		}
	}
	return size, nil
}

func skipWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// validChunkExt checks *( BWS ";" BWS name [ BWS "=" BWS ( token /
// quoted-string ) ] ).
func validChunkExt(b []byte) bool {
	for len(b) > 0 {
		b = skipWS(b)
		if len(b) == 0 || b[0] != ';' {
			return false
		}
		b = skipWS(b[1:])
		k := 0
		for k < len(b) && chars[b[k]]&cToken != 0 {
			k++
		}
		if k == 0 {
			return false
		}
		b = b[k:]
		t := skipWS(b)
		if len(t) == 0 || t[0] != '=' {
			continue
		}
		t = skipWS(t[1:])
		if len(t) > 0 && t[0] == '"' {
			i, closed := 1, false
			for i < len(t) {
				c := t[i]
				switch {
				case c == '"':
					closed = true
				case c == '\\':
					if i+1 >= len(t) || chars[t[i+1]]&cValue == 0 {
						return false
					}
					i++
				case chars[c]&cValue == 0:
					return false
				}
				i++
				if closed {
					break
				}
			}
			if !closed {
				return false
			}
			b = t[i:]
			continue
		}
		k = 0
		for k < len(t) && chars[t[k]]&cToken != 0 {
			k++
		}
		if k == 0 {
			return false
		}
		b = t[k:]
	}
	return true
}

// checkBufferedChunks walks the chunked framing of the bytes already
// buffered (without consuming them) and reports the first framing error.
// A server uses it to refuse a broken chunked body before the handler runs.
func checkBufferedChunks(br *bufio.Reader) error {
	b, _ := br.Peek(br.Buffered())
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil
		}
		size, err := parseChunkLine(b[:i+1])
		if err != nil {
			return err
		}
		if size == 0 {
			return nil
		}
		b = b[i+1:]
		if uint64(len(b)) < size+2 {
			return nil
		}
		if b[size] != '\r' || b[size+1] != '\n' {
			return errChunkCRLF
		}
		b = b[size+2:]
	}
	return nil
}
