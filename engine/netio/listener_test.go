package netio

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

const testTimeout = 5 * time.Second

var discard = slog.New(slog.DiscardHandler)

// startListener listens on 127.0.0.1:0 and starts accepting; it closes the
// listener when the test ends.
func startListener(t *testing.T, name string, serve ServeFunc) (*Listener, *observe.Store) {
	t.Helper()
	st := observe.NewStore()
	l, err := Listen(name, "127.0.0.1:0", serve, st, discard)
	if err != nil {
		t.Fatal(err)
	}
	l.Start()
	t.Cleanup(l.Close)
	return l, st
}

func dial(t *testing.T, l *Listener) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", l.Addr().String(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond until it holds or the test timeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func metric(st *observe.Store, name string) (float64, bool) {
	for _, m := range st.Metrics() {
		if m.Name == name {
			return m.Value, true
		}
	}
	return 0, false
}

// echo copies what it reads back to the peer.
func echo(_ context.Context, c net.Conn, _ *stream.ConnInfo) {
	io.Copy(c, c)
}

func TestListenBadAddress(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:99999", "not-an-address", "256.0.0.1:0"} {
		l, err := Listen("bad", addr, echo, observe.NewStore(), discard)
		if err == nil {
			l.Close()
			t.Errorf("Listen(%q) succeeded", addr)
			continue
		}
		if want := `listener "bad"`; !strings.Contains(err.Error(), want) {
			t.Errorf("Listen(%q) error %q does not name the listener", addr, err)
		}
	}
}

func TestListenerServes(t *testing.T) {
	type seen struct {
		info *stream.ConnInfo
		ctx  context.Context
	}
	infos := make(chan seen, 4)
	l, st := startListener(t, "l1", func(ctx context.Context, c net.Conn, info *stream.ConnInfo) {
		infos <- seen{info, ctx}
		echo(ctx, c, info)
	})
	if l.Name() != "l1" {
		t.Errorf("Name = %q", l.Name())
	}
	if a, ok := l.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() || a.Port == 0 {
		t.Fatalf("Addr = %v", l.Addr())
	}

	var ids []uint64
	for i := range 2 {
		c := dial(t, l)
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("conn %d: echo = %q, %v", i, line, err)
		}
		var s seen
		select {
		case s = <-infos:
		case <-time.After(testTimeout):
			t.Fatal("ServeFunc not called")
		}
		if s.ctx == nil || s.ctx.Err() != nil {
			t.Errorf("ServeFunc ctx done before drain: %v", s.ctx.Err())
		}
		local := netip.MustParseAddrPort(l.Addr().String())
		if s.info.Local != local {
			t.Errorf("info.Local = %v, want %v", s.info.Local, local)
		}
		if s.info.Remote.String() != c.LocalAddr().String() {
			t.Errorf("info.Remote = %v, want %v", s.info.Remote, c.LocalAddr())
		}
		if s.info.TLS != nil {
			t.Error("info.TLS set on a plaintext connection")
		}
		ids = append(ids, s.info.ID)
	}
	if ids[0] == 0 || ids[0] == ids[1] {
		t.Errorf("connection IDs not unique and non-zero: %v", ids)
	}
	waitFor(t, "2 active connections", func() bool { return l.ActiveConnections() == 2 })
	if v, _ := metric(st, "listener.l1.downstream_cx_active"); v != 2 {
		t.Errorf("downstream_cx_active = %v, want 2", v)
	}
	if v, _ := metric(st, "listener.l1.downstream_cx_total"); v != 2 {
		t.Errorf("downstream_cx_total = %v, want 2", v)
	}
}

func TestListenerActiveConnections(t *testing.T) {
	release := make(chan struct{})
	l, st := startListener(t, "act", func(ctx context.Context, c net.Conn, _ *stream.ConnInfo) {
		<-release
	})
	if n := l.ActiveConnections(); n != 0 {
		t.Fatalf("ActiveConnections before any = %d", n)
	}
	for range 3 {
		dial(t, l)
	}
	waitFor(t, "3 active", func() bool { return l.ActiveConnections() == 3 })
	close(release)
	waitFor(t, "0 active", func() bool { return l.ActiveConnections() == 0 })
	waitFor(t, "3 destroyed", func() bool { v, _ := metric(st, "listener.act.downstream_cx_destroy"); return v == 3 })
	if v, _ := metric(st, "listener.act.downstream_cx_active"); v != 0 {
		t.Errorf("downstream_cx_active = %v, want 0", v)
	}
}

func TestListenerMaxConnections(t *testing.T) {
	started := make(chan struct{}, 4)
	release := make(chan struct{})
	l, st := startListener(t, "max", func(ctx context.Context, c net.Conn, _ *stream.ConnInfo) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		c.Write([]byte("bye"))
	})
	l.SetMaxConnections(1)

	first := dial(t, l)
	select {
	case <-started:
	case <-time.After(testTimeout):
		t.Fatal("first connection not served")
	}

	second := dial(t, l)
	buf := make([]byte, 8)
	n, err := second.Read(buf)
	if err == nil || n != 0 {
		t.Fatalf("second connection read %q, %v; want it closed", buf[:n], err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("second connection was not closed (read timed out)")
	}
	select {
	case <-started:
		t.Fatal("ServeFunc was called for the overflowing connection")
	default:
	}
	waitFor(t, "overflow counted", func() bool { v, _ := metric(st, "listener.max.downstream_cx_overflow"); return v == 1 })
	if v, _ := metric(st, "listener.max.downstream_cx_total"); v != 2 {
		t.Errorf("downstream_cx_total = %v, want 2", v)
	}
	if n := l.ActiveConnections(); n != 1 {
		t.Errorf("ActiveConnections = %d, want 1", n)
	}

	// Once the first finishes there is room again.
	close(release)
	if _, err := io.ReadAll(first); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "first closed", func() bool { return l.ActiveConnections() == 0 })
	dial(t, l)
	select {
	case <-started:
	case <-time.After(testTimeout):
		t.Fatal("third connection not served after the first closed")
	}

	// 0 lifts the cap.
	l.SetMaxConnections(0)
	dial(t, l)
	select {
	case <-started:
	case <-time.After(testTimeout):
		t.Fatal("connection not served after removing the cap")
	}
	if v, _ := metric(st, "listener.max.downstream_cx_overflow"); v != 1 {
		t.Errorf("downstream_cx_overflow = %v, want 1", v)
	}
}

func TestListenerDrain(t *testing.T) {
	started := make(chan struct{}, 2)
	var mu sync.Mutex
	var ctxErrs []error
	l, _ := startListener(t, "drain", func(ctx context.Context, c net.Conn, _ *stream.ConnInfo) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
		case <-time.After(testTimeout):
		}
		mu.Lock()
		ctxErrs = append(ctxErrs, ctx.Err())
		mu.Unlock()
		c.Write([]byte("drained"))
	})
	c := dial(t, l)
	select {
	case <-started:
	case <-time.After(testTimeout):
		t.Fatal("not served")
	}
	if l.Draining() {
		t.Fatal("Draining before Drain")
	}
	l.Drain()
	if !l.Draining() {
		t.Error("Draining false after Drain")
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "drained" {
		t.Fatalf("read %q, %v", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if !l.Wait(ctx) {
		t.Error("Wait = false, want true: the connection finished by itself")
	}
	mu.Lock()
	if len(ctxErrs) != 1 || !errors.Is(ctxErrs[0], context.Canceled) {
		t.Errorf("ServeFunc ctx errors = %v, want [context.Canceled]", ctxErrs)
	}
	mu.Unlock()

	// No longer accepting.
	if c2, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		c2.SetDeadline(time.Now().Add(time.Second))
		n, rerr := c2.Read(make([]byte, 1))
		c2.Close()
		if rerr == nil || n > 0 {
			t.Error("a connection after Drain was accepted and served")
		}
	}
	// Drain twice is harmless.
	l.Drain()
	select {
	case <-started:
		t.Error("ServeFunc called after Drain")
	default:
	}
}

func TestListenerWaitTimeoutForceCloses(t *testing.T) {
	readErr := make(chan error, 1)
	started := make(chan struct{}, 1)
	l, _ := startListener(t, "force", func(ctx context.Context, c net.Conn, _ *stream.ConnInfo) {
		started <- struct{}{}
		// Ignores ctx: only closing the connection ends this.
		_, err := c.Read(make([]byte, 1))
		readErr <- err
	})
	dial(t, l)
	select {
	case <-started:
	case <-time.After(testTimeout):
		t.Fatal("not served")
	}
	l.Drain()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	begin := time.Now()
	if l.Wait(ctx) {
		t.Error("Wait = true, want false: the connection had to be closed")
	}
	if d := time.Since(begin); d < 40*time.Millisecond {
		t.Errorf("Wait returned after %v, before its ctx ended", d)
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("ServeFunc read succeeded; want the force-close error")
		}
	case <-time.After(testTimeout):
		t.Fatal("ServeFunc still blocked after Wait returned")
	}
	if n := l.ActiveConnections(); n != 0 {
		t.Errorf("ActiveConnections = %d after Wait, want 0", n)
	}
}

func TestListenerWaitNoConnections(t *testing.T) {
	l, _ := startListener(t, "idle", echo)
	l.Drain()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if !l.Wait(ctx) {
		t.Error("Wait with no connections = false")
	}
}

func TestListenerHandlerPanicIsContained(t *testing.T) {
	l, st := startListener(t, "panic", func(context.Context, net.Conn, *stream.ConnInfo) {
		panic("boom")
	})
	c := dial(t, l)
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection not closed after its handler panicked")
	}
	waitFor(t, "0 active", func() bool { return l.ActiveConnections() == 0 })
	waitFor(t, "destroy counted", func() bool { v, _ := metric(st, "listener.panic.downstream_cx_destroy"); return v == 1 })
	// Still accepting.
	c2 := dial(t, l)
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Error("second connection not closed")
	}
}

func TestListenerClose(t *testing.T) {
	st := observe.NewStore()
	served := make(chan struct{}, 1)
	l, err := Listen("close", "127.0.0.1:0", func(ctx context.Context, c net.Conn, _ *stream.ConnInfo) {
		served <- struct{}{}
		c.Read(make([]byte, 1)) // blocks until closed
	}, st, discard)
	if err != nil {
		t.Fatal(err)
	}
	l.Start()
	c := dial(t, l)
	select {
	case <-served:
	case <-time.After(testTimeout):
		t.Fatal("not served")
	}
	done := make(chan struct{})
	go func() { l.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Close did not return")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("client connection still open after Close")
	}
	if l.ActiveConnections() != 0 {
		t.Errorf("ActiveConnections = %d after Close", l.ActiveConnections())
	}
}
