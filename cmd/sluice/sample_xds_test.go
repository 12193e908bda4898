package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSampleXDS runs samples/xds as its README does: the sample control
// plane (built from source), an app behind it, and sluice on the sample's
// bootstrap; a push changes the Lua and the Wasm filter of live traffic,
// and sluice keeps serving while the control plane is down.
func TestSampleXDS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the sample control plane")
	}
	dir := t.TempDir()
	cpBin := filepath.Join(dir, "controlplane")
	if out, err := exec.Command("go", "build", "-o", cpBin, "../../samples/xds/controlplane").CombinedOutput(); err != nil {
		t.Fatalf("building the control plane: %v\n%s", err, out)
	}
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello\n") })
	xdsPort, pushPort, listenPort, adminPort := freePort(t), freePort(t), freePort(t), freePort(t)
	startCP := func() *exec.Cmd {
		cmd := exec.Command(cpBin, "-xds", fmt.Sprintf("127.0.0.1:%d", xdsPort), "-http", fmt.Sprintf("127.0.0.1:%d", pushPort),
			"-listen", fmt.Sprintf("127.0.0.1:%d", listenPort), "-upstream", app.addr(), "-wasm", "../../samples/wasm/header/header.wasm")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			cmd.Process.Kill()
			t.Fatalf("control plane: %q %v", line, err)
		}
		return cmd
	}
	cp := startCP()
	t.Cleanup(func() { cp.Process.Kill(); cp.Wait() })

	b, err := os.ReadFile("../../samples/xds/bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	boot := strings.NewReplacer("port_value: 18000", fmt.Sprintf("port_value: %d", xdsPort),
		"port_value: 9901", fmt.Sprintf("port_value: %d", adminPort)).Replace(string(b))
	cfg := filepath.Join(dir, "bootstrap.yaml")
	if err := os.WriteFile(cfg, []byte(boot), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- runMain([]string{"run", "-c", cfg, "--log-level", "warn"}, io.Discard, &stderr) }()
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	t.Cleanup(func() {
		http.Post(adminURL+"/quitquitquit", "", nil)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("sluice did not quit")
		}
	})

	url := fmt.Sprintf("http://127.0.0.1:%d/", listenPort)
	expect := func(what, greeting, wasm string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		var last string
		for time.Now().Before(deadline) {
			resp, err := http.Get(url)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				last = fmt.Sprintf("%d %q x-greeting=%q x-wasm=%q", resp.StatusCode, body, resp.Header.Get("x-greeting"), resp.Header.Get("x-wasm"))
				if resp.StatusCode == 200 && string(body) == "hello\n" && resp.Header.Get("x-greeting") == greeting && resp.Header.Get("x-wasm") == wasm {
					return
				}
			} else {
				last = err.Error()
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s: last answer %s\nsluice: %s", what, last, stderr.String())
	}
	expect("version 1", "hello", "xds-v1")

	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/push?greeting=bonjour&wasm=xds-v2", pushPort), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	expect("version 2", "bonjour", "xds-v2")

	// The control plane goes away: the last config keeps serving. It comes
	// back (at its version 1) and sluice takes that.
	cp.Process.Kill()
	cp.Wait()
	expect("control plane down", "bonjour", "xds-v2")
	cp = startCP()
	expect("control plane back", "hello", "xds-v1")

	if r, err := http.Get(adminURL + "/stats?filter=lds.update_rejected"); err == nil {
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if !strings.Contains(string(b), "listener_manager.lds.update_rejected: 0") {
			t.Errorf("rejected updates: %s", b)
		}
	}
}
