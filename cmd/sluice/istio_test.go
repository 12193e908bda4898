package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// istioBootstrap has an inbound and an outbound listener in front of one
// upstream, shaped as Istio names them.
func istioBootstrap(admin, inbound, outbound int, upstream string) string {
	host, port, _ := net.SplitHostPort(upstream)
	listener := func(name, dir string, p int) string {
		return fmt.Sprintf(`
  - name: %[1]s
    traffic_direction: %[2]s
    address: { socket_address: { address: 127.0.0.1, port_value: %[3]d } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: %[1]s
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: / }, route: { cluster: app } }]`, name, dir, p)
	}
	return fmt.Sprintf(`future_field_of_a_newer_envoy: true
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: %d } }
static_resources:
  listeners:%s%s
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: %s, port_value: %s } } } }] }]
`, admin, listener("virtualInbound", "INBOUND", inbound), listener("0.0.0.0_9080", "OUTBOUND", outbound), host, port)
}

// Sluice runs with the command line Istio's pilot-agent gives Envoy, answers
// the readiness stats pilot-agent polls, and drains only its inbound
// listeners on POST /drain_listeners?inboundonly&graceful: inbound
// connections are told to close and the listener stops after
// --drain-time-s, while outbound traffic keeps flowing.
func TestIstioPilotAgentContract(t *testing.T) {
	up := newUpstream(t, nil)
	admin, inbound, outbound := freePort(t), freePort(t), freePort(t)
	cfg := filepath.Join(t.TempDir(), "envoy-rev.yaml")
	if err := os.WriteFile(cfg, []byte(istioBootstrap(admin, inbound, outbound, up.addr())), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-c", cfg, "--drain-time-s", "1", "--drain-strategy", "immediate",
		"--local-address-ip-version", "v4", "--file-flush-interval-msec", "1000", "--disable-hot-restart",
		"--allow-unknown-static-fields", "-l", "warning", "--component-log-level", "misc:error", "--concurrency", "2",
		"--config-yaml", `{"node": {"id": "sidecar~10.1.2.3~app-1.default~default.svc.cluster.local", "cluster": "app.default"}}`}
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- runMain(args, io.Discard, &stderr) }()
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", admin)
	t.Cleanup(func() {
		http.Post(adminURL+"/quitquitquit", "", nil)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("sluice did not quit")
		}
	})

	// pilot-agent's readiness probe (istio pilot/cmd/pilot-agent/status/util).
	ready := adminURL + `/stats?usedonly&filter=^(server\.state|listener_manager\.workers_started)`
	var stats string
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := http.Get(ready); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			stats = string(b)
			if strings.Contains(stats, "listener_manager.workers_started: 1") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %q\nstderr: %s", stats, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if want := "listener_manager.workers_started: 1\nserver.state: 0\n"; stats != want {
		t.Fatalf("readiness stats %q, want %q", stats, want)
	}

	// /config_dump in Envoy's shape, with the --config-yaml node merged in.
	resp, err := http.Get(adminURL + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	dump := &adminv3.ConfigDump{}
	if err := protojson.Unmarshal(body, dump); err != nil {
		t.Fatalf("/config_dump is not an envoy.admin.v3.ConfigDump: %v\n%s", err, body)
	}
	counts := map[string]int{}
	for _, c := range dump.Configs {
		m, err := c.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *adminv3.BootstrapConfigDump:
			if id := m.GetBootstrap().GetNode().GetId(); !strings.HasPrefix(id, "sidecar~10.1.2.3~") {
				t.Errorf("bootstrap node id %q: --config-yaml not merged", id)
			}
		case *adminv3.ListenersConfigDump:
			counts["listeners"] = len(m.StaticListeners)
		case *adminv3.ClustersConfigDump:
			counts["clusters"] = len(m.StaticClusters)
		case *adminv3.RoutesConfigDump:
			counts["routes"] = len(m.StaticRouteConfigs)
		}
	}
	if counts["listeners"] != 2 || counts["clusters"] != 1 || counts["routes"] != 2 {
		t.Errorf("config dump has %v, want 2 listeners, 1 cluster, 2 route configs", counts)
	}

	in := fmt.Sprintf("http://127.0.0.1:%d/x", inbound)
	out := fmt.Sprintf("http://127.0.0.1:%d/x", outbound)
	for _, u := range []string{in, out} {
		resp, err := http.Get(u)
		if err != nil || resp.StatusCode != 200 || resp.Close {
			t.Fatalf("GET %s before drain: %v %v", u, err, resp)
		}
		resp.Body.Close()
	}

	resp, err = http.Post(adminURL+"/drain_listeners?inboundonly&graceful", "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("drain: %v %v", err, resp)
	}
	resp.Body.Close()

	// During the drain time the inbound listener still answers, with
	// Connection: close; the outbound one keeps connections alive.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: false}}
	r1, err := client.Get(in)
	if err != nil || r1.StatusCode != 200 || !r1.Close {
		t.Fatalf("inbound during drain: %v %+v", err, r1)
	}
	r1.Body.Close()
	r2, err := client.Get(out)
	if err != nil || r2.StatusCode != 200 || r2.Close {
		t.Fatalf("outbound during drain: %v %+v", err, r2)
	}
	r2.Body.Close()
	if r, err := http.Get(adminURL + "/ready"); err != nil || r.StatusCode != 503 {
		t.Fatalf("/ready while draining: %v %v", err, r)
	} else {
		r.Body.Close()
	}

	// After --drain-time-s the inbound listener is closed; outbound serves.
	deadline = time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", inbound), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("inbound listener still accepting after the drain time")
		}
		time.Sleep(50 * time.Millisecond)
	}
	r3, err := http.Get(out)
	if err != nil || r3.StatusCode != 200 {
		t.Fatalf("outbound after drain: %v %v", err, r3)
	}
	r3.Body.Close()
}

// Bad values of Envoy's flags fail before anything starts.
func TestEnvoyFlagsRejected(t *testing.T) {
	for _, args := range [][]string{
		{"--drain-strategy", "slow"},
		{"--local-address-ip-version", "v5"},
		{"--restart-epoch", "1"},
		{"--component-log-level", "misc"},
		{"-l", "loud"},
	} {
		var errb bytes.Buffer
		if code := runMain(append([]string{"run"}, args...), io.Discard, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, errb.String())
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's and the test's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
