package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func post(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminEndpoints(t *testing.T) {
	up := newUpstream(t, nil)
	m := hcm(prefixRoute("api", "/", "up"))
	srv := startServer(t, snapshot(m, cluster("up", up.addr())))
	admin := "http://" + srv.AdminAddr()
	for i := 0; i < 3; i++ {
		get(t, proxyURL(srv)+"/x")
	}

	if code, body := get(t, admin+"/ready"); code != 200 || strings.TrimSpace(body) != "LIVE" {
		t.Errorf("/ready: %d %q", code, body)
	}
	// Stats are recorded after the response is written: give the last
	// request a moment to be counted.
	var prom string
	for deadline := time.Now().Add(2 * time.Second); ; {
		_, prom = get(t, admin+"/stats/prometheus")
		if strings.Contains(prom, `envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="test"} 3`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{
		`envoy_http_downstream_rq_2xx{envoy_http_conn_manager_prefix="test"} 3`,
		`envoy_cluster_upstream_rq_total{envoy_cluster_name="up"} 3`,
		`envoy_vhost_route_rq_2xx{envoy_virtual_host="all",envoy_route="api"} 3`,
		`envoy_listener_downstream_cx_total{envoy_listener_address="main"}`,
		`envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="test",le="+Inf"} 3`,
	} {
		if !strings.Contains(prom, want) {
			t.Errorf("/stats/prometheus lacks %s", want)
		}
	}
	if _, text := get(t, admin+"/stats"); !strings.Contains(text, "http.test.downstream_rq_total: 3") {
		t.Errorf("/stats lacks http.test.downstream_rq_total: 3")
	}
	_, dump := get(t, admin+"/config_dump")
	var parsed map[string]any
	if err := json.Unmarshal([]byte(dump), &parsed); err != nil || parsed["version"] != "test" {
		t.Errorf("/config_dump: %v %v", err, parsed["version"])
	}
	if _, cl := get(t, admin+"/clusters"); !strings.Contains(cl, "up::"+up.addr()+"::rq_total::3") {
		t.Errorf("/clusters:\n%s", cl)
	}
	if _, ls := get(t, admin+"/listeners"); !strings.Contains(ls, "main") {
		t.Errorf("/listeners: %q", ls)
	}
	if code, _ := get(t, admin+"/drain_listeners"); code != 405 {
		t.Errorf("GET /drain_listeners: %d, want 405", code)
	}
	addr := srv.ListenerAddr("main").String()
	if code, _ := post(t, admin+"/drain_listeners"); code != 200 {
		t.Errorf("POST /drain_listeners: %d", code)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepts after /drain_listeners")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, body := get(t, admin+"/ready"); strings.TrimSpace(body) != "DRAINING" {
		t.Errorf("/ready after drain: %q", body)
	}
	post(t, admin+"/quitquitquit")
	select {
	case <-srv.Done():
	case <-time.After(2 * time.Second):
		t.Error("/quitquitquit did not signal")
	}
}
