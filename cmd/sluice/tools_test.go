package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// External conformance tools (h2spec, the gRPC interop client and server)
// are installed by .ci/run into $SLUICE_TOOLS. A developer without them
// sees the tests skipped; CI sets SLUICE_REQUIRE_TOOLS=1 so a missing tool
// fails instead of hiding a regression.

// tool returns the path of an installed tool binary, or skips the test.
func tool(t *testing.T, name string) string {
	t.Helper()
	var dirs []string
	if d := os.Getenv("SLUICE_TOOLS"); d != "" {
		dirs = append(dirs, d)
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, p := range filepath.SplitList(strings.TrimSpace(string(out))) {
			dirs = append(dirs, filepath.Join(p, "bin"))
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	if os.Getenv("SLUICE_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s not installed in %v (run .ci/install-tools)", name, dirs)
	}
	t.Skipf("%s not installed (run .ci/install-tools to run this test)", name)
	return ""
}

// freePort returns a loopback port nobody listens on right now.
// freePort returns a loopback port the OS just had free, never one it
// returned before in this process: the kernel may hand the same port to
// two quick listen-and-close calls, and a test that takes several ports
// (admin, listeners) then binds two things to one (seen in CI).
func freePort(t *testing.T) int {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if _, dup := portsGiven.LoadOrStore(port, true); !dup {
			return port
		}
	}
}

var portsGiven sync.Map

// deadAddr returns a loopback address where connections are refused, and
// stays so until the test ends: its port is bound by a socket that never
// listens, so no listener of this process or another (the proxy's own,
// bound to port 0) can be given it meanwhile.
func deadAddr(tb testing.TB) string {
	tb.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// startProcess runs a tool in the background until the test ends.
func startProcess(t *testing.T, path string, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, path, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(path), out.String())
		}
	})
	return cmd
}

// waitListening waits until addr accepts connections.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listening on %s", addr)
}
