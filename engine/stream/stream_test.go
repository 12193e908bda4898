package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

func TestBufferOps(t *testing.T) {
	tests := []struct {
		name string
		ops  func(b *Buffer)
		want string
	}{
		{"zero value empty", func(*Buffer) {}, ""},
		{"set", func(b *Buffer) { b.Set([]byte("abc")) }, "abc"},
		{"set replaces", func(b *Buffer) { b.SetString("longer content"); b.Set([]byte("x")) }, "x"},
		{"set empty", func(b *Buffer) { b.SetString("abc"); b.Set(nil) }, ""},
		{"setstring", func(b *Buffer) { b.SetString("héllo") }, "héllo"},
		{"append", func(b *Buffer) { b.SetString("ab"); b.Append([]byte("cd")); b.Append(nil) }, "abcd"},
		{"prepend", func(b *Buffer) { b.SetString("world"); b.Prepend([]byte("hello ")) }, "hello world"},
		{"prepend to empty", func(b *Buffer) { b.Prepend([]byte("x")) }, "x"},
		{"prepend empty", func(b *Buffer) { b.SetString("x"); b.Prepend(nil) }, "x"},
		{"prepend longer than content", func(b *Buffer) { b.SetString("z"); b.Prepend([]byte("abcdefgh")) }, "abcdefghz"},
		{"prepend twice", func(b *Buffer) { b.SetString("3"); b.Prepend([]byte("2")); b.Prepend([]byte("1")) }, "123"},
		{"reset", func(b *Buffer) { b.SetString("abc"); b.Reset() }, ""},
		{"reset then append", func(b *Buffer) { b.SetString("abc"); b.Reset(); b.Append([]byte("d")) }, "d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Buffer
			tt.ops(&b)
			if got := string(b.Bytes()); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if b.Len() != len(tt.want) {
				t.Errorf("Len = %d, want %d", b.Len(), len(tt.want))
			}
		})
	}
}

func TestBufferSetCopies(t *testing.T) {
	p := []byte("abc")
	var b Buffer
	b.Set(p)
	p[0] = 'X'
	if string(b.Bytes()) != "abc" {
		t.Errorf("Set aliases its argument: %q", b.Bytes())
	}
	b.Append(p)
	p[1] = 'Y'
	if string(b.Bytes()) != "abcXbc" {
		t.Errorf("Append aliases its argument: %q", b.Bytes())
	}
}

func TestBufferPrependWithSpareCapacity(t *testing.T) {
	b := Buffer{b: make([]byte, 0, 64)}
	b.SetString("tail")
	b.Prepend([]byte("head-"))
	if got := string(b.Bytes()); got != "head-tail" {
		t.Errorf("got %q", got)
	}
}

func TestBufferResetKeepsStorage(t *testing.T) {
	var b Buffer
	b.SetString(strings.Repeat("x", 100))
	c := cap(b.b)
	b.Reset()
	if cap(b.b) != c || b.Len() != 0 {
		t.Errorf("Reset: len %d cap %d, want 0 and %d", b.Len(), cap(b.b), c)
	}
}

func TestBufferReadOnce(t *testing.T) {
	tests := []struct {
		name    string
		r       io.Reader
		prev    string
		max     int
		want    string
		wantErr error
	}{
		{"reads up to max", strings.NewReader("hello world"), "", 5, "hello", nil},
		{"replaces content", strings.NewReader("new"), "old content", 10, "new", nil},
		{"one read only", iotest.HalfReader(strings.NewReader("abcdef")), "", 6, "abc", nil},
		{"eof", strings.NewReader(""), "old", 4, "", io.EOF},
		{"data and eof", iotest.DataErrReader(strings.NewReader("ab")), "", 10, "ab", io.EOF},
		{"error", iotest.ErrReader(errTest), "keep?", 4, "", errTest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Buffer
			b.SetString(tt.prev)
			n, err := b.ReadOnce(tt.r, tt.max)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if n != len(tt.want) || string(b.Bytes()) != tt.want {
				t.Errorf("n=%d content=%q, want %q", n, b.Bytes(), tt.want)
			}
		})
	}
}

var errTest = errors.New("test read error")

func TestBufferAppendFrom(t *testing.T) {
	tests := []struct {
		name    string
		prev    string
		cap     int
		r       io.Reader
		max     int
		want    string
		wantN   int
		wantErr error
	}{
		{"appends", "ab", 0, strings.NewReader("cdef"), 10, "abcdef", 4, nil},
		{"bounded by max", "ab", 0, strings.NewReader("cdef"), 2, "abcd", 2, nil},
		{"growth keeps prefix", strings.Repeat("p", 1000), 1000, strings.NewReader("xyz"), 4096, strings.Repeat("p", 1000) + "xyz", 3, nil},
		{"fits in spare capacity", "ab", 64, strings.NewReader("cd"), 8, "abcd", 2, nil},
		{"eof keeps content", "ab", 0, strings.NewReader(""), 8, "ab", 0, io.EOF},
		{"error keeps content", "ab", 0, iotest.ErrReader(errTest), 8, "ab", 0, errTest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := Buffer{b: make([]byte, 0, tt.cap)}
			b.SetString(tt.prev)
			n, err := b.AppendFrom(tt.r, tt.max)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if n != tt.wantN || string(b.Bytes()) != tt.want {
				t.Errorf("n=%d content=%q, want %d %q", n, b.Bytes(), tt.wantN, tt.want)
			}
		})
	}
}

func TestBufferAppendFromUntilEOF(t *testing.T) {
	src := bytes.Repeat([]byte("0123456789"), 5000) // 50,000 bytes
	r := iotest.OneByteReader(bytes.NewReader(src))
	var b Buffer
	for i := 0; ; i++ {
		if i > len(src)+2 {
			t.Fatal("AppendFrom never reached EOF")
		}
		_, err := b.AppendFrom(r, 7)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(b.Bytes(), src) {
		t.Errorf("content differs: len %d, want %d", b.Len(), len(src))
	}
	// Growth is amortised: far fewer reallocations than appends.
	var c Buffer
	r2 := bytes.NewReader(src)
	grows, lastCap := 0, cap(c.b)
	for range len(src) / 100 {
		if _, err := c.AppendFrom(r2, 100); err != nil {
			t.Fatal(err)
		}
		if cap(c.b) != lastCap {
			grows++
			lastCap = cap(c.b)
		}
	}
	if grows > 20 {
		t.Errorf("%d reallocations for 500 appends: growth is not amortised", grows)
	}
}

func TestBufferPool(t *testing.T) {
	b := GetBuffer()
	if b.Len() != 0 {
		t.Fatalf("pooled buffer not empty: %d", b.Len())
	}
	if cap(b.b) == 0 {
		t.Error("pooled buffer has no preallocated storage")
	}
	b.SetString("dirty")
	PutBuffer(b)
	// Whatever comes back next, it is empty.
	for range 10 {
		g := GetBuffer()
		if g.Len() != 0 {
			t.Fatalf("GetBuffer returned a non-empty buffer: %q", g.Bytes())
		}
		g.SetString("x")
		PutBuffer(g)
	}
	// An oversized buffer is not pooled, but PutBuffer must not panic
	// or reset it (the caller dropped it anyway).
	big := &Buffer{b: make([]byte, 10, maxPooledBuffer+1)}
	PutBuffer(big)

	// Concurrent use is race-free.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				g := GetBuffer()
				if g.Len() != 0 {
					t.Errorf("goroutine %d: non-empty buffer from pool", i)
					return
				}
				g.SetString("abc")
				PutBuffer(g)
			}
		}()
	}
	wg.Wait()
}

type fakeCompiler struct{ id string }

func (fakeCompiler) Compile(any) (Factory, error)     { return nil, nil }
func (fakeCompiler) CompilePerRoute(any) (any, error) { return nil, nil }

type fakeServer struct{ id string }

func (fakeServer) ServeConn(context.Context, net.Conn, *ConnInfo, Handler, *ServerOptions) error {
	return nil
}

type fakeClient struct{ id string }

func (fakeClient) NewClientConn(net.Conn) ClientConn { return nil }

func TestRegistryFilters(t *testing.T) {
	r := NewRegistry()
	if got := r.FilterTypes(); len(got) != 0 {
		t.Errorf("empty registry lists %q", got)
	}
	a, b := fakeCompiler{"a"}, fakeCompiler{"b"}
	r.RegisterFilter(a, "z.type", "a.type")
	r.RegisterFilter(b, "m.type")
	r.RegisterFilter(b, "a.type") // re-registration replaces
	r.RegisterFilter(a)           // no names: no-op
	if got, want := r.FilterTypes(), []string{"a.type", "m.type", "z.type"}; !reflect.DeepEqual(got, want) {
		t.Errorf("FilterTypes = %q, want %q", got, want)
	}
	tests := []struct {
		name string
		want Compiler
		ok   bool
	}{
		{"z.type", a, true},
		{"a.type", b, true},
		{"m.type", b, true},
		{"A.TYPE", nil, false}, // type names are exact
		{"", nil, false},
	}
	for _, tt := range tests {
		c, ok := r.Filter(tt.name)
		if ok != tt.ok || c != tt.want {
			t.Errorf("Filter(%q) = %v, %v; want %v, %v", tt.name, c, ok, tt.want, tt.ok)
		}
	}
	// The returned list is a copy.
	l := r.FilterTypes()
	l[0] = "changed"
	if r.FilterTypes()[0] != "a.type" {
		t.Error("FilterTypes returned internal storage")
	}
}

func TestRegistryCodecs(t *testing.T) {
	r := NewRegistry()
	r.RegisterCodec("http1", fakeServer{"s1"}, fakeClient{"c1"})
	r.RegisterCodec("serveronly", fakeServer{"s2"}, nil)
	r.RegisterCodec("clientonly", nil, fakeClient{"c2"})
	r.RegisterCodec("http1", nil, nil) // nils do not erase

	tests := []struct {
		name      string
		server    ServerCodec
		client    ClientCodec
		serverErr bool
		clientErr bool
	}{
		{"http1", fakeServer{"s1"}, fakeClient{"c1"}, false, false},
		{"serveronly", fakeServer{"s2"}, nil, false, true},
		{"clientonly", nil, fakeClient{"c2"}, true, false},
		{"nope", nil, nil, true, true},
		{"HTTP1", nil, nil, true, true},
	}
	for _, tt := range tests {
		s, err := r.ServerCodec(tt.name)
		if (err != nil) != tt.serverErr || s != tt.server {
			t.Errorf("ServerCodec(%q) = %v, %v", tt.name, s, err)
		}
		if err != nil && !strings.Contains(err.Error(), "\""+tt.name+"\"") {
			t.Errorf("ServerCodec(%q) error does not name it: %v", tt.name, err)
		}
		c, err := r.ClientCodec(tt.name)
		if (err != nil) != tt.clientErr || c != tt.client {
			t.Errorf("ClientCodec(%q) = %v, %v", tt.name, c, err)
		}
		if err != nil && !strings.Contains(err.Error(), "\""+tt.name+"\"") {
			t.Errorf("ClientCodec(%q) error does not name it: %v", tt.name, err)
		}
	}
}

func TestRegistryConcurrent(t *testing.T) {
	r := NewRegistry()
	var wg sync.WaitGroup
	deadline := time.Now().Add(5 * time.Second)
	for i := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := 0; j < 200 && time.Now().Before(deadline); j++ {
				r.RegisterFilter(fakeCompiler{}, "t"+string(rune('a'+i)))
				r.RegisterCodec("c", fakeServer{}, fakeClient{})
			}
		}()
		go func() {
			defer wg.Done()
			for j := 0; j < 200 && time.Now().Before(deadline); j++ {
				r.Filter("ta")
				r.FilterTypes()
				r.ServerCodec("c")
				r.ClientCodec("c")
			}
		}()
	}
	wg.Wait()
	if got := r.FilterTypes(); !reflect.DeepEqual(got, []string{"ta", "tb", "tc", "td"}) {
		t.Errorf("FilterTypes = %q", got)
	}
}

func TestStatusString(t *testing.T) {
	tests := []struct {
		s    Status
		want string
	}{
		{Continue, "continue"},
		{StopAndBuffer, "stop_and_buffer"},
		{StopAndWait, "stop_and_wait"},
		{LocalReply, "local_reply"},
		{Status(-1), "unknown"},
		{Status(99), "unknown"},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("Status(%d).String() = %q, want %q", int(tt.s), got, tt.want)
		}
	}
}

func TestPassThroughAndFactoryFunc(t *testing.T) {
	var f Filter = PassThrough{}
	var b Buffer
	if f.OnRequestHeaders(nil, false) != Continue || f.OnRequestBody(&b, true) != Continue ||
		f.OnRequestTrailers(nil) != Continue || f.OnResponseHeaders(nil, true) != Continue ||
		f.OnResponseBody(&b, false) != Continue || f.OnResponseTrailers(nil) != Continue {
		t.Error("PassThrough does not continue everywhere")
	}
	f.OnDone()
	called := 0
	fac := FactoryFunc(func(cb Callbacks) Filter { called++; return PassThrough{} })
	if fac.NewFilter(nil) == nil || called != 1 {
		t.Errorf("FactoryFunc: called %d", called)
	}
}
