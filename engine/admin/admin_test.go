package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/observe"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type fixture struct {
	srv    *Server
	base   string
	state  atomic.Value // string
	drains chan [2]bool
	quits  chan struct{}
	logs   *syncBuffer
}

func newFixture(t *testing.T, deps *Deps) *fixture {
	t.Helper()
	f := &fixture{drains: make(chan [2]bool, 4), quits: make(chan struct{}, 4), logs: &syncBuffer{}}
	f.state.Store(StateLive)
	if deps == nil {
		store := observe.NewStore()
		sc := store.Scope("cluster.api.", "cluster_", observe.Label{Name: "envoy_cluster_name", Value: "api"})
		sc.Counter("upstream_rq_total").Add(5)
		sc.Counter("upstream_rq_5xx")
		sc.Gauge("upstream_cx_active").Set(2)
		sc.Histogram("upstream_rq_time").Record(3)
		store.Scope("server.", "server_").Gauge("live").Set(1)
		deps = &Deps{
			Stats:      store,
			ConfigDump: func() any { return map[string]any{"configs": []any{map[string]string{"@type": "bootstrap"}}} },
			Clusters: func(w io.Writer, format string) {
				if format == "json" {
					io.WriteString(w, `{"cluster_statuses":[{"name":"api"}]}`)
					return
				}
				fmt.Fprintf(w, "api::10.0.0.1:80::rq_total::5\n(format=%s)\n", format)
			},
			Listeners: func() []ListenerInfo {
				return []ListenerInfo{{"http", "0.0.0.0:8080"}, {"v6", "[::1]:8443"}, {"uds", "/run/sluice.sock"}}
			},
			Drain:      func(inbound, graceful bool) { f.drains <- [2]bool{inbound, graceful} },
			Quit:       func() { f.quits <- struct{}{} },
			State:      func() string { return f.state.Load().(string) },
			ServerInfo: nil,
		}
	}
	f.srv = New("127.0.0.1:0", *deps, slog.New(slog.NewTextHandler(f.logs, nil)))
	if err := f.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.srv.Close)
	f.base = "http://" + f.srv.Addr()
	return f
}

var client = &http.Client{Timeout: 5 * time.Second}

type response struct {
	code int
	ct   string
	body string
	hdr  http.Header
}

func (f *fixture) do(t *testing.T, method, path string, hdr ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, f.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header.Get("Content-Type"), string(b), resp.Header}
}

func isJSON(t *testing.T, body string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("invalid JSON: %v\n%s", err, body)
	}
}

func TestEndpoints(t *testing.T) {
	f := newFixture(t, nil)
	tests := []struct {
		method, path string
		code         int
		ct           string
		check        func(t *testing.T, body string)
	}{
		{"GET", "/", 200, ctHTML, func(t *testing.T, b string) {
			for _, p := range []string{`href="/stats"`, `action="/quitquitquit" method="post"`, "/ready"} {
				if !strings.Contains(b, p) {
					t.Errorf("index lacks %s", p)
				}
			}
		}},
		{"GET", "/help", 200, ctText, func(t *testing.T, b string) {
			if !strings.HasPrefix(b, "admin commands are:\n") || !strings.Contains(b, "  /drain_listeners: ") {
				t.Errorf("help: %s", b)
			}
		}},
		{"GET", "/nope", 404, ctText, func(t *testing.T, b string) {
			if !strings.HasPrefix(b, "invalid path. admin commands are:") {
				t.Errorf("404 body: %s", b)
			}
		}},
		{"GET", "/ready", 200, ctText, body("LIVE\n")},
		{"HEAD", "/ready", 200, ctText, body("")},
		{"GET", "/stats", 200, ctText, body("cluster.api.upstream_cx_active: 2\ncluster.api.upstream_rq_5xx: 0\ncluster.api.upstream_rq_total: 5\nserver.live: 1\n" +
			"cluster.api.upstream_rq_time: P0(nan,1) P25(nan,2) P50(nan,3) P75(nan,4) P90(nan,4.6) P95(nan,4.8) P99(nan,4.96) P99.5(nan,4.98) P99.9(nan,4.996) P100(nan,5)\n")},
		{"GET", "/stats?filter=rq_total", 200, ctText, body("cluster.api.upstream_rq_total: 5\n")},
		{"GET", "/stats?filter=%5Eserver%5C.", 200, ctText, body("server.live: 1\n")},
		{"GET", "/stats?usedonly&filter=upstream_rq_", 200, ctText, func(t *testing.T, b string) {
			if strings.Contains(b, "5xx") || !strings.Contains(b, "upstream_rq_total: 5") || !strings.Contains(b, "upstream_rq_time: P0") {
				t.Errorf("usedonly: %s", b)
			}
		}},
		{"GET", "/stats?filter=(", 400, ctText, func(t *testing.T, b string) {
			if !strings.HasPrefix(b, "Invalid regex: ") {
				t.Errorf("body %s", b)
			}
		}},
		{"GET", "/stats?format=xml", 400, ctText, nil},
		{"GET", "/stats?format=json&filter=rq_total", 200, ctJSON, func(t *testing.T, b string) {
			var v struct {
				Stats []struct {
					Name  string `json:"name"`
					Value int64  `json:"value"`
				} `json:"stats"`
			}
			isJSON(t, b, &v)
			if len(v.Stats) != 1 || v.Stats[0].Name != "cluster.api.upstream_rq_total" || v.Stats[0].Value != 5 {
				t.Errorf("stats %+v", v)
			}
		}},
		{"GET", "/stats?format=prometheus", 200, ctPrometheus, checkPrometheus},
		{"GET", "/stats/prometheus", 200, ctPrometheus, checkPrometheus},
		{"GET", "/config_dump", 200, ctJSON, func(t *testing.T, b string) {
			var v map[string]any
			isJSON(t, b, &v)
			if _, ok := v["configs"]; !ok {
				t.Errorf("config dump %s", b)
			}
		}},
		{"GET", "/clusters", 200, ctText, body("api::10.0.0.1:80::rq_total::5\n(format=text)\n")},
		{"GET", "/clusters?format=json", 200, ctJSON, func(t *testing.T, b string) { isJSON(t, b, new(any)) }},
		{"GET", "/clusters?format=yaml", 400, ctText, nil},
		{"GET", "/listeners", 200, ctText, body("http::0.0.0.0:8080\nv6::[::1]:8443\nuds::/run/sluice.sock\n")},
		{"GET", "/listeners?format=json", 200, ctJSON, body(`{
  "listener_statuses": [
    {
      "name": "http",
      "local_address": {
        "socket_address": {
          "address": "0.0.0.0",
          "port_value": 8080
        }
      }
    },
    {
      "name": "v6",
      "local_address": {
        "socket_address": {
          "address": "::1",
          "port_value": 8443
        }
      }
    },
    {
      "name": "uds",
      "local_address": {
        "pipe": {
          "path": "/run/sluice.sock"
        }
      }
    }
  ]
}
`)},
		{"GET", "/server_info", 200, ctJSON, func(t *testing.T, b string) {
			var v struct {
				Version, State, UptimeCurrentEpoch string
				CommandLineOptions                 struct{ Args []string } `json:"command_line_options"`
			}
			isJSON(t, b, &v)
			if v.State != "LIVE" || v.Version == "" || len(v.CommandLineOptions.Args) == 0 || !strings.Contains(b, `"uptime_current_epoch": "`) {
				t.Errorf("server_info %s", b)
			}
		}},
		// Read endpoints refuse other methods.
		{"POST", "/stats", 405, ctText, nil},
		{"DELETE", "/ready", 405, ctText, nil},
		// Mutating endpoints require POST.
		{"GET", "/quitquitquit", 405, ctText, body("This endpoint requires POST.\n")},
		{"GET", "/drain_listeners", 405, ctText, nil},
		{"GET", "/healthcheck/fail", 405, ctText, nil},
		{"HEAD", "/healthcheck/ok", 405, ctText, nil},
		{"PUT", "/drain_listeners", 405, ctText, nil},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := f.do(t, tt.method, tt.path)
			if r.code != tt.code {
				t.Errorf("status %d, want %d (body %q)", r.code, tt.code, r.body)
			}
			if r.ct != tt.ct {
				t.Errorf("content type %q, want %q", r.ct, tt.ct)
			}
			if r.hdr.Get("X-Content-Type-Options") != "nosniff" {
				t.Error("no nosniff header")
			}
			if r.code == 405 && r.hdr.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
			if tt.check != nil {
				tt.check(t, r.body)
			}
		})
	}
	select {
	case <-f.quits:
		t.Error("GET /quitquitquit quit the server")
	case d := <-f.drains:
		t.Errorf("GET /drain_listeners drained: %v", d)
	default:
	}
}

func body(want string) func(*testing.T, string) {
	return func(t *testing.T, got string) {
		t.Helper()
		if got != want {
			t.Errorf("body:\n%s\nwant:\n%s", got, want)
		}
	}
}

// checkPrometheus checks the exposition's main invariants; the strict
// format checker lives in engine/observe's tests.
func checkPrometheus(t *testing.T, b string) {
	t.Helper()
	if !strings.HasSuffix(b, "\n") {
		t.Fatal("no final newline")
	}
	types := map[string]bool{}
	var inf, count string
	for _, line := range strings.Split(strings.TrimSuffix(b, "\n"), "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			n := strings.Fields(name)[0]
			if types[n] {
				t.Errorf("second TYPE for %s", n)
			}
			types[n] = true
			continue
		}
		if strings.HasPrefix(line, "envoy_cluster_upstream_rq_time_bucket{") && strings.Contains(line, `le="+Inf"`) {
			inf = line[strings.LastIndexByte(line, ' ')+1:]
		}
		if strings.HasPrefix(line, "envoy_cluster_upstream_rq_time_count{") {
			count = line[strings.LastIndexByte(line, ' ')+1:]
		}
	}
	for _, want := range []string{"envoy_cluster_upstream_rq_total", "envoy_cluster_upstream_cx_active", "envoy_cluster_upstream_rq_time", "envoy_server_live"} {
		if !types[want] {
			t.Errorf("no family %s", want)
		}
	}
	if inf != "1" || count != "1" {
		t.Errorf("+Inf bucket %q, count %q", inf, count)
	}
	if !strings.Contains(b, "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"api\"} 5\n") {
		t.Errorf("counter line missing:\n%s", b)
	}
}

func TestReadyAndHealthcheck(t *testing.T) {
	f := newFixture(t, nil)
	steps := []struct {
		state, method, path string
		code                int
		body                string
	}{
		{StateLive, "GET", "/ready", 200, "LIVE\n"},
		{StatePreInitializing, "GET", "/ready", 503, "PRE_INITIALIZING\n"},
		{StateDraining, "GET", "/ready", 503, "DRAINING\n"},
		{StateLive, "POST", "/healthcheck/fail", 200, "OK\n"},
		{StateLive, "GET", "/ready", 503, "DRAINING\n"},
		{StatePreInitializing, "GET", "/ready", 503, "PRE_INITIALIZING\n"},
		{StateLive, "POST", "/healthcheck/ok", 200, "OK\n"},
		{StateLive, "GET", "/ready", 200, "LIVE\n"},
	}
	for i, s := range steps {
		f.state.Store(s.state)
		r := f.do(t, s.method, s.path)
		if r.code != s.code || r.body != s.body {
			t.Errorf("step %d %s %s (state %s): %d %q, want %d %q", i, s.method, s.path, s.state, r.code, r.body, s.code, s.body)
		}
		if s.path == "/healthcheck/fail" && !f.srv.HealthCheckFailed() {
			t.Error("HealthCheckFailed false after /healthcheck/fail")
		}
	}
}

func TestDrain(t *testing.T) {
	f := newFixture(t, nil)
	for _, tt := range []struct {
		query             string
		inbound, graceful bool
	}{
		{"", false, false},
		{"?inboundonly", true, false},
		{"?graceful", false, true},
		{"?inboundonly&graceful", true, true},
	} {
		r := f.do(t, "POST", "/drain_listeners"+tt.query)
		if r.code != 200 || r.body != "OK\n" {
			t.Fatalf("%s: %d %q", tt.query, r.code, r.body)
		}
		select {
		case got := <-f.drains:
			if got != [2]bool{tt.inbound, tt.graceful} {
				t.Errorf("%s: Drain(%v, %v)", tt.query, got[0], got[1])
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: Drain not called", tt.query)
		}
	}
}

func TestQuit(t *testing.T) {
	f := newFixture(t, nil)
	r := f.do(t, "POST", "/quitquitquit")
	if r.code != 200 || r.body != "OK\n" {
		t.Fatalf("%d %q", r.code, r.body)
	}
	select {
	case <-f.quits:
	case <-time.After(5 * time.Second):
		t.Fatal("Quit not called")
	}
}

func TestQuitMayCloseServer(t *testing.T) {
	var srv *Server
	closed := make(chan struct{})
	srv = New("127.0.0.1:0", Deps{Quit: func() { srv.Close(); close(closed) }}, slog.New(slog.DiscardHandler))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resp, err := client.Post("http://"+srv.Addr()+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close from Quit did not finish")
	}
	if _, err := client.Get("http://" + srv.Addr() + "/ready"); err == nil {
		t.Error("server still answers after Close")
	}
}

func TestCrossOriginPostRefused(t *testing.T) {
	f := newFixture(t, nil)
	r := f.do(t, "POST", "/healthcheck/fail", "Sec-Fetch-Site", "cross-site")
	if r.code != http.StatusForbidden {
		t.Errorf("cross-site POST: %d", r.code)
	}
	if f.srv.HealthCheckFailed() {
		t.Error("cross-site POST took effect")
	}
	r = f.do(t, "POST", "/healthcheck/fail", "Sec-Fetch-Site", "same-origin")
	if r.code != 200 || !f.srv.HealthCheckFailed() {
		t.Errorf("same-origin POST: %d", r.code)
	}
}

func TestNilDeps(t *testing.T) {
	f := newFixture(t, &Deps{})
	for _, tt := range []struct{ method, path string }{
		{"GET", "/stats"}, {"GET", "/stats/prometheus"}, {"GET", "/config_dump"}, {"GET", "/clusters"},
		{"GET", "/listeners"}, {"POST", "/drain_listeners"}, {"POST", "/quitquitquit"},
	} {
		if r := f.do(t, tt.method, tt.path); r.code != http.StatusNotImplemented {
			t.Errorf("%s %s: %d", tt.method, tt.path, r.code)
		}
	}
	if r := f.do(t, "GET", "/ready"); r.code != 200 || r.body != "LIVE\n" {
		t.Errorf("/ready without State: %d %q", r.code, r.body)
	}
	if r := f.do(t, "GET", "/server_info"); r.code != 200 || r.ct != ctJSON {
		t.Errorf("/server_info: %d %q", r.code, r.ct)
	}
}

func TestCustomServerInfo(t *testing.T) {
	var srv *Server
	f := newFixture(t, &Deps{ServerInfo: func() any { return map[string]string{"version": "1.2.3", "state": srv.State()} }})
	srv = f.srv
	r := f.do(t, "GET", "/server_info")
	var v map[string]string
	isJSON(t, r.body, &v)
	if v["version"] != "1.2.3" || v["state"] != "LIVE" {
		t.Errorf("server_info %v", v)
	}
	if r := f.do(t, "POST", "/server_info"); r.code != 405 {
		t.Errorf("POST /server_info: %d", r.code)
	}
}

func TestBindAddr(t *testing.T) {
	tests := []struct {
		in, want          string
		defaulted, public bool
		err               bool
	}{
		{"", DefaultAddr, true, false, false},
		{":9901", "127.0.0.1:9901", true, false, false},
		{":0", "127.0.0.1:0", true, false, false},
		{"127.0.0.1:0", "127.0.0.1:0", false, false, false},
		{"[::1]:0", "[::1]:0", false, false, false},
		{"localhost:9901", "localhost:9901", false, false, false},
		{"0.0.0.0:9901", "0.0.0.0:9901", false, true, false},
		{"[::]:9901", "[::]:9901", false, true, false},
		{"admin.example.com:9901", "admin.example.com:9901", false, true, false},
		{"9901", "", false, false, true},
	}
	for _, tt := range tests {
		got, d, p, err := bindAddr(tt.in)
		if (err != nil) != tt.err || got != tt.want || d != tt.defaulted || p != tt.public {
			t.Errorf("bindAddr(%q) = %q, %v, %v, %v; want %q, %v, %v, err %v", tt.in, got, d, p, err, tt.want, tt.defaulted, tt.public, tt.err)
		}
	}
}

func TestStartDefaultsToLoopback(t *testing.T) {
	logs := &syncBuffer{}
	srv := New(":0", Deps{}, slog.New(slog.NewTextHandler(logs, nil)))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !strings.HasPrefix(srv.Addr(), "127.0.0.1:") {
		t.Errorf("bound %s", srv.Addr())
	}
	if !strings.Contains(logs.String(), "binding loopback") {
		t.Errorf("no log about the loopback default:\n%s", logs)
	}
	if err := srv.Start(); err == nil {
		t.Error("second Start succeeded")
	}
}

func TestStartErrorsAndClose(t *testing.T) {
	if err := New("nonsense", Deps{}, nil).Start(); err == nil {
		t.Error("bad address accepted")
	}
	a := New("127.0.0.1:0", Deps{}, slog.New(slog.DiscardHandler))
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	b := New(a.Addr(), Deps{}, slog.New(slog.DiscardHandler))
	if err := b.Start(); err == nil {
		t.Error("second listener on a bound port")
		b.Close()
	}
	addr := a.Addr()
	a.Close()
	a.Close() // idempotent
	if _, err := client.Get("http://" + addr + "/ready"); err == nil {
		t.Error("server answers after Close")
	}
	if err := a.Start(); err == nil {
		t.Error("Start after Close succeeded")
	}
	New("", Deps{}, nil).Close() // Close before Start
}

func TestHTTPServerTimeouts(t *testing.T) {
	f := newFixture(t, &Deps{})
	f.srv.mu.Lock()
	s := f.srv.srv
	f.srv.mu.Unlock()
	if s.ReadHeaderTimeout == 0 || s.ReadTimeout == 0 || s.WriteTimeout == 0 || s.IdleTimeout == 0 || s.MaxHeaderBytes == 0 {
		t.Errorf("timeouts not set: %+v", s)
	}
}
