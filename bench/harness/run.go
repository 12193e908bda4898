package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/bench"
)

const notImplemented = "n/a (not implemented yet)"

// originPids is the origin process (its CPU counts as ours on the load core).
var originPids []int

// startOrigin starts the origin (for the whole run) and the check clients.
func startOrigin(o options) *env {
	e := &env{
		bin:      o.bin,
		baseline: o.baseline,
		check:    &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	e.checkH2 = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Protocols: &p}}

	e.originPort = freePort()
	originH2 := freePort()
	var err error
	e.origin, err = startProc("origin", loadCore, []string{"GOMAXPROCS=1"}, nil, filepath.Join(o.bin, "origin"),
		"-addr", fmt.Sprintf("127.0.0.1:%d", e.originPort), "-h2c", fmt.Sprintf("127.0.0.1:%d", originH2))
	if err != nil {
		fatalf("%v", err)
	}
	e.direct = &target{id: "direct", label: targetInfo["direct"].label, kind: "direct",
		h1: fmt.Sprintf("http://127.0.0.1:%d", e.originPort), h2: fmt.Sprintf("http://127.0.0.1:%d", originH2)}
	if err := waitHTTP(e.origin, e.check, e.direct.h1+"/small", 10*time.Second); err != nil {
		fatalf("origin: %v", err)
	}
	originPids = []int{e.origin.pid}
	for _, c := range []struct {
		client *http.Client
		url    string
		size   int
	}{{e.check, e.direct.h1 + "/small", 35}, {e.check, e.direct.h1 + "/16k", 16384}, {e.checkH2, e.direct.h2 + "/small", 35}} {
		if err := checkOnce(c.client, c.url, c.size, ""); err != nil {
			fatalf("origin: %v", err)
		}
	}
	return e
}

// targetInfo names the targets; every proxy target is started fresh for
// each scenario (so peak RSS is that scenario's) and stopped after it.
var targetInfo = map[string]struct{ label, kind string }{
	"direct":                {"direct (no proxy)", "direct"},
	"sluice":                {"sluice (GOMAXPROCS=1)", "sluice"},
	"sluice-gmp2":           {"sluice (GOMAXPROCS=2)", "sluice"},
	"sluice-headermutation": {"sluice + header_mutation filter", "sluice"},
	"sluice-lua":            {"sluice + Lua header filter", "sluice"},
	"sluice-baseline":       {"sluice --baseline binary (GOMAXPROCS=1)", "sluice"},
	"sluice-wasm":           {"sluice + Wasm header filter", "sluice"},
	"sluice-wasm-lean":      {"sluice + Wasm header filter (hand-written guest)", "sluice"},
	"sluice-routes100":      {"sluice, 100 prefix routes (last matches)", "sluice"},
	"sluice-dsl-routes100":  {"sluice, 100 DSL routes (last matches)", "sluice"},
	"sluice-cel":            {"sluice + CEL `on request` filter (DSL)", "sluice"},
	"nginx":                 {"nginx (worker_processes 1)", "nginx"},
	"haproxy":               {"haproxy (nbthread 1)", "haproxy"},
}

var starts int

// startTarget starts a fresh proxy and checks it answers what the
// scenarios ask before anything is measured.
func (e *env) startTarget(id string) (*target, error) {
	if id == "direct" {
		return e.direct, nil
	}
	starts++
	name := fmt.Sprintf("%s.%d", id, starts)
	info := targetInfo[id]
	t := &target{id: id, label: info.label, kind: info.kind}
	var err error
	switch id {
	case "sluice", "sluice-gmp2", "sluice-headermutation", "sluice-routes100", "sluice-lua", "sluice-wasm", "sluice-wasm-lean", "sluice-baseline":
		variant, procs := bench.VariantPlain, 1
		switch id {
		case "sluice-gmp2":
			procs = 2
		case "sluice-headermutation":
			variant = bench.VariantHeaderMutation
		case "sluice-lua":
			variant = bench.VariantLua
		case "sluice-wasm":
			variant = bench.VariantWasm
			if abs, err := filepath.Abs(bench.WasmModule); err == nil {
				bench.WasmModule = abs
			}
		case "sluice-wasm-lean":
			variant = bench.VariantWasmLean
			if abs, err := filepath.Abs(bench.WasmLeanModule); err == nil {
				bench.WasmLeanModule = abs
			}
		case "sluice-routes100":
			variant = bench.VariantRoutes100
		}
		port := freePort()
		cfg := filepath.Join(workDir, name+".yaml")
		if err := os.WriteFile(cfg, []byte(bench.SluiceConfig(port, e.originPort, variant)), 0o644); err != nil {
			return nil, err
		}
		binary := filepath.Join(e.bin, "sluice")
		if id == "sluice-baseline" {
			binary = e.baseline
		}
		t.proc, err = startProc(name, proxyCore, []string{"GOMAXPROCS=" + strconv.Itoa(procs)}, nil,
			binary, "run", "-c", cfg, "--admin", "127.0.0.1:0", "--log-level", "warn")
		// codec_type AUTO: HTTP/1.1 and h2c (prior knowledge) on one port.
		t.h1 = fmt.Sprintf("http://127.0.0.1:%d", port)
		t.h2 = t.h1
	case "sluice-dsl-routes100", "sluice-cel":
		// The same proxy written in the Sluice DSL. The file sets no admin
		// address; --admin gives it one, as for the YAML targets.
		variant, want := bench.VariantDSLRoutes100, "route: r99 "
		if id == "sluice-cel" {
			variant, want = bench.VariantDSLCEL, "x-cel: GET /small"
		}
		port := freePort()
		cfg := filepath.Join(workDir, name+".sluice")
		if err := os.WriteFile(cfg, []byte(bench.SluiceDSLConfig(port, e.originPort, variant)), 0o644); err != nil {
			return nil, err
		}
		// The origin does not echo request headers, so `sluice explain`
		// checks the compiled file does what the row says (the route that
		// matches, the header the filter sets) before it is run.
		if err := explainHas(filepath.Join(e.bin, "sluice"), cfg, dslPath(id), want); err != nil {
			return nil, err
		}
		t.proc, err = startProc(name, proxyCore, []string{"GOMAXPROCS=1"}, nil,
			filepath.Join(e.bin, "sluice"), "run", "-c", cfg, "--admin", "127.0.0.1:0", "--log-level", "warn")
		t.h1 = fmt.Sprintf("http://127.0.0.1:%d", port)
	case "nginx":
		h1, h2 := freePort(), freePort()
		dir := filepath.Join(workDir, name)
		for _, d := range []string{"nginx-body", "nginx-proxy", "nginx-fastcgi", "nginx-uwsgi", "nginx-scgi"} {
			os.MkdirAll(filepath.Join(dir, d), 0o755)
		}
		conf := filepath.Join(dir, "nginx.conf")
		os.WriteFile(conf, []byte(nginxConfig(dir, h1, h2, e.originPort)), 0o644)
		t.proc, err = startProc(name, proxyCore, nil, nil, "nginx", "-e", filepath.Join(dir, "nginx-error.log"), "-p", dir, "-c", conf)
		t.h1, t.h2 = fmt.Sprintf("http://127.0.0.1:%d", h1), fmt.Sprintf("http://127.0.0.1:%d", h2)
	case "haproxy":
		h1, h2 := freePort(), freePort()
		conf := filepath.Join(workDir, name+".cfg")
		os.WriteFile(conf, []byte(haproxyConfig(h1, h2, e.originPort)), 0o644)
		t.proc, err = startProc(name, proxyCore, nil, nil, "haproxy", "-db", "-f", conf)
		t.h1, t.h2 = fmt.Sprintf("http://127.0.0.1:%d", h1), fmt.Sprintf("http://127.0.0.1:%d", h2)
	default:
		return nil, fmt.Errorf("unknown target %q", id)
	}
	if err != nil {
		return nil, err
	}
	path := "/small"
	switch id {
	case "sluice-routes100":
		path = "/p099/small"
	case "sluice-dsl-routes100":
		path = bench.DSLRoutes100Path
	}
	if err := waitHTTP(t.proc, e.check, t.h1+path, 15*time.Second); err != nil {
		t.proc.stop()
		return nil, err
	}
	type check struct {
		client *http.Client
		url    string
		size   int
		header string
	}
	checks := []check{{e.check, t.h1 + path, 35, ""}, {e.check, t.h1 + "/16k", 16384, ""}}
	switch id {
	case "sluice-headermutation", "sluice-lua":
		checks = append(checks, check{e.check, t.h1 + "/small", 35, "X-Proxied-By"})
	case "sluice-routes100", "sluice-dsl-routes100":
		checks = checks[:1]
	case "nginx", "haproxy", "sluice":
		checks = append(checks, check{e.checkH2, t.h2 + "/small", 35, ""})
	}
	for _, c := range checks {
		if err := checkOnce(c.client, c.url, c.size, c.header); err != nil {
			t.proc.stop()
			return nil, err
		}
	}
	return t, nil
}

// dslPath is the path a DSL target is measured (and explained) on.
func dslPath(id string) string {
	if id == "sluice-dsl-routes100" {
		return bench.DSLRoutes100Path
	}
	return "/small"
}

// explainHas runs `sluice explain CFG GET http://bench<path>` and wants want
// in its output.
func explainHas(sluice, cfg, path, want string) error {
	out, err := exec.Command(sluice, "explain", cfg, "GET", "http://bench"+path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sluice explain %s: %v\n%s", cfg, err, out)
	}
	if !strings.Contains(string(out), want) {
		return fmt.Errorf("sluice explain %s GET %s: no %q in its output:\n%s", cfg, path, want, out)
	}
	return nil
}

func checkOnce(c *http.Client, url string, size int, hdr string) error {
	var last error
	for i := 0; i < 50; i++ {
		resp, err := c.Get(url)
		if err != nil {
			last = err
			time.Sleep(100 * time.Millisecond)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode != 200:
			return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
		case len(b) != size:
			return fmt.Errorf("GET %s: body of %d bytes, want %d", url, len(b), size)
		case hdr != "" && resp.Header.Get(hdr) == "":
			return fmt.Errorf("GET %s: no %s header: the filter did not run", url, hdr)
		}
		return nil
	}
	return fmt.Errorf("GET %s: %v", url, last)
}

// Scenario is one load shape over several targets.
type Scenario struct {
	ID      string   `json:"id"`
	Title   string   `json:"title"`
	Tool    string   `json:"tool"`
	Command string   `json:"command"`
	Conns   int      `json:"connections"`
	Streams int      `json:"streams_per_connection,omitempty"`
	Headers []string `json:"headers,omitempty"`
	Rows    []*Row   `json:"rows"`
	Filters bool     `json:"-"` // rows compare against the first row (no filter)
}

// Row is one target in a scenario.
type Row struct {
	Target string         `json:"target"`
	Label  string         `json:"label"`
	Kind   string         `json:"kind"`
	URL    string         `json:"url,omitempty"`
	NA     string         `json:"na,omitempty"`
	Failed string         `json:"failed,omitempty"`
	Rounds []*Measurement `json:"rounds,omitempty"`
	Median *Measurement   `json:"median,omitempty"`
	Path   string         `json:"-"`
	H2     bool           `json:"-"`
	t      *target
}

// Measurement is one run (or the median of the rounds).
type Measurement struct {
	ReqPerSec   float64  `json:"req_per_sec"`
	Requests    int64    `json:"requests"`
	Seconds     float64  `json:"seconds"`
	P50ms       float64  `json:"p50_ms"`
	P99ms       float64  `json:"p99_ms"`
	ProxyCPUSec *float64 `json:"proxy_cpu_seconds,omitempty"`
	CPUPer100k  *float64 `json:"proxy_cpu_seconds_per_100k_requests,omitempty"`
	// UserPer100k and SysPer100k split CPUPer100k into utime and stime.
	UserPer100k *float64 `json:"proxy_user_seconds_per_100k_requests,omitempty"`
	SysPer100k  *float64 `json:"proxy_sys_seconds_per_100k_requests,omitempty"`
	// IRQPer100k is the proxy core's irq+softirq time per 100k requests:
	// kernel network work (mostly the loopback receive path of the packets
	// the proxy sends) that /proc/PID/stat does not charge to the proxy.
	IRQPer100k    *float64 `json:"proxy_core_softirq_seconds_per_100k_requests,omitempty"`
	PeakRSSMiB    *float64 `json:"proxy_peak_rss_mib,omitempty"`
	Errors        int64    `json:"errors"`
	ErrorText     string   `json:"error_text,omitempty"`
	ProxyCoreBusy float64  `json:"proxy_core_busy_pct"`
	LoadCoreBusy  float64  `json:"load_core_busy_pct"`
	// Others*: the share of the core used by processes the harness did not
	// start (other work on a shared machine): noise in this measurement.
	OthersProxyCore float64 `json:"others_on_proxy_core_pct"`
	OthersLoadCore  float64 `json:"others_on_load_core_pct"`
}

func scenarioIDs() []string {
	return []string{"h1-keepalive", "h1-16k", "h1-close", "h2", "h1-1000conns", "filters", "idle"}
}

func buildScenarios(o options) []*Scenario {
	peers := func(path string, h2 bool) []*Row {
		ids := []string{"direct", "sluice", "sluice-gmp2", "nginx", "haproxy"}
		if h2 {
			ids = []string{"direct", "sluice", "nginx", "haproxy"}
		} else if o.baseline != "" {
			ids = []string{"direct", "sluice", "sluice-baseline", "sluice-gmp2", "nginx", "haproxy"}
		}
		var rows []*Row
		for _, id := range ids {
			if o.noPeers && (id == "nginx" || id == "haproxy") {
				continue
			}
			info := targetInfo[id]
			r := &Row{Target: id, Label: info.label, Kind: info.kind, Path: path, H2: h2}
			rows = append(rows, r)
		}
		return rows
	}
	var out []*Scenario
	out = append(out,
		&Scenario{ID: "h1-keepalive", Title: "HTTP/1.1 keep-alive, small body (35 B)", Tool: "wrk", Conns: 50, Rows: peers("/small", false)},
		&Scenario{ID: "h1-16k", Title: "HTTP/1.1 keep-alive, 16 KiB body", Tool: "wrk", Conns: 50, Rows: peers("/16k", false)},
		&Scenario{ID: "h1-close", Title: "HTTP/1.1, new connection per request (Connection: close)", Tool: "wrk", Conns: 50,
			Headers: []string{"Connection: close"}, Rows: peers("/small", false)},
		&Scenario{ID: "h2", Title: "HTTP/2 (h2c, prior knowledge), small body; the upstream leg is HTTP/1.1 (direct: Go net/http h2c origin)",
			Tool: "h2load", Conns: 10, Streams: 10, Rows: peers("/small", true)},
		&Scenario{ID: "h1-1000conns", Title: "HTTP/1.1 keep-alive, 1,000 concurrent connections", Tool: "wrk", Conns: 1000, Rows: peers("/small", false)},
	)
	f := &Scenario{ID: "filters", Title: "sluice alone (GOMAXPROCS=1), by filter kind; small body, keep-alive", Tool: "wrk", Conns: 50, Filters: true}
	row := func(id, label, path string) *Row {
		return &Row{Target: id, Label: label, Kind: "sluice", Path: path}
	}
	f.Rows = []*Row{
		row("sluice", "no filter (router only)", "/small"),
		row("sluice-headermutation", "native header_mutation (1 request + 1 response header)", "/small"),
		row("sluice-routes100", "100 prefix routes, the last one matches", "/p099/small"),
		row("sluice-dsl-routes100", "100 DSL routes (`when request.path.startsWith`), the last one matches", bench.DSLRoutes100Path),
		row("sluice-cel", "CEL `on request` filter (DSL; 1 request header from a string expression)", "/small"),
		row("sluice-lua", "Envoy Lua filter (1 request + 1 response header, as header_mutation)", "/small"),
		row("sluice-wasm", "proxy-wasm filter (standard-Go guest; adds 1 request header, counts a metric)", "/small"),
		row("sluice-wasm-lean", "proxy-wasm filter (hand-written guest, as lean as a Rust/C++ SDK filter; adds 1 request header)", "/small"),
	}
	out = append(out, f)
	for _, sc := range out {
		switch sc.Tool {
		case "wrk":
			sc.Command = fmt.Sprintf("wrk -t1 -c%d -dDURs --timeout 5s --latency", sc.Conns)
			for _, h := range sc.Headers {
				sc.Command += fmt.Sprintf(" -H '%s'", h)
			}
		case "h2load":
			sc.Command = fmt.Sprintf("h2load -t1 -c%d -m%d -D DUR --log-file=...", sc.Conns, sc.Streams)
		}
		sc.Command += " URL"
	}
	return out
}

// runScenario starts the scenario's targets fresh, warms each up, measures
// the rounds, and stops the targets.
func runScenario(o options, e *env, sc *Scenario) {
	logf("== %s: %s", sc.ID, sc.Title)
	rows := measurable(sc)
	for _, r := range rows {
		t, err := e.startTarget(r.Target)
		if err != nil {
			r.Failed = firstLine(err.Error())
			logf("   %s did not start: %v", r.Target, err)
			continue
		}
		r.t = t
		base := t.h1
		if r.H2 {
			base = t.h2
		}
		r.URL = base + r.Path
	}
	defer func() {
		for _, r := range rows {
			if r.t != nil && r.t.proc != nil {
				r.t.proc.stop()
			}
		}
	}()
	for _, r := range rows {
		if r.Failed != "" {
			continue
		}
		if _, err := measure(sc, r, o.warm); err != nil {
			r.Failed = firstLine(err.Error())
			logf("   warm-up %s failed: %v", r.Target, err)
		}
	}
	for round := 1; round <= o.rounds; round++ {
		for _, r := range rows {
			if r.Failed != "" {
				continue
			}
			m, err := measure(sc, r, o.dur)
			if err != nil {
				r.Failed = firstLine(err.Error())
				logf("   round %d %s failed: %v", round, r.Target, err)
				continue
			}
			r.Rounds = append(r.Rounds, m)
			logf("   round %d %-22s %9.0f req/s  p50 %6.3f ms  p99 %7.3f ms  cpu/100k %s (user %s, +softirq %s)  rss %s MiB  errors %d  others %.0f%%/%.0f%%",
				round, r.Target, m.ReqPerSec, m.P50ms, m.P99ms, fmtPtr(m.CPUPer100k, 2), fmtPtr(m.UserPer100k, 2), fmtPtr(m.IRQPer100k, 2), fmtPtr(m.PeakRSSMiB, 1), m.Errors,
				m.OthersProxyCore, m.OthersLoadCore)
		}
	}
	for _, r := range rows {
		r.Median = summarize(r.Rounds)
	}
}

func measurable(sc *Scenario) []*Row {
	var out []*Row
	for _, r := range sc.Rows {
		if r.NA == "" {
			out = append(out, r)
		}
	}
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// measure runs the scenario's load generator once against a row.
func measure(sc *Scenario, r *Row, dur int) (*Measurement, error) {
	var pids []int
	var cpu0, user0, sys0 float64
	if r.t.proc != nil {
		if !r.t.proc.alive() {
			return nil, fmt.Errorf("%s is not running: %v\n%s", r.t.proc.name, r.t.proc.err, r.t.proc.tail())
		}
		pids = processTree(r.t.proc.pid)
		resetPeakRSS(pids)
		user0, sys0 = cpuSplit(pids)
		cpu0 = user0 + sys0
	}
	originCPU0 := cpuSeconds(originPids)
	ct0 := readCoreTimes()
	var lr loadResult
	var err error
	switch sc.Tool {
	case "wrk":
		lr, _, err = wrk(r.URL, sc.Conns, dur, sc.Headers)
	case "h2load":
		lr, _, err = h2load(r.URL, sc.Conns, sc.Streams, dur)
	}
	ct1 := readCoreTimes()
	originCPU := cpuSeconds(originPids) - originCPU0
	if err != nil {
		return nil, err
	}
	m := &Measurement{ReqPerSec: lr.ReqPerSec, Requests: lr.Requests, Seconds: lr.Seconds, P50ms: lr.P50ms, P99ms: lr.P99ms,
		Errors: lr.Errors, ErrorText: lr.ErrorText,
		ProxyCoreBusy: busyPercent(ct0, ct1, 0), LoadCoreBusy: busyPercent(ct0, ct1, 1),
		OthersLoadCore: othersPercent(ct0, ct1, 1, lr.LoadCPU+originCPU)}
	m.OthersProxyCore = othersPercent(ct0, ct1, 0, 0)
	if r.t.proc != nil {
		if !r.t.proc.alive() {
			return nil, fmt.Errorf("%s exited during the run: %v\n%s", r.t.proc.name, r.t.proc.err, r.t.proc.tail())
		}
		user1, sys1 := cpuSplit(pids)
		cpu := user1 + sys1 - cpu0
		up, sp := (user1-user0)/float64(lr.Requests)*100000, (sys1-sys0)/float64(lr.Requests)*100000
		m.UserPer100k, m.SysPer100k = &up, &sp
		m.OthersProxyCore = othersPercent(ct0, ct1, 0, cpu)
		irq := irqSeconds(ct0, ct1, 0) / float64(lr.Requests) * 100000
		m.IRQPer100k = &irq
		per := cpu / float64(lr.Requests) * 100000
		rss := statusKB(pids, "VmHWM") / 1024
		m.ProxyCPUSec, m.CPUPer100k, m.PeakRSSMiB = &cpu, &per, &rss
	}
	return m, nil
}

// summarize is the median of each metric over the rounds (peak RSS: the
// highest; errors: the sum).
func summarize(ms []*Measurement) *Measurement {
	if len(ms) == 0 {
		return nil
	}
	col := func(f func(*Measurement) float64) float64 {
		var v []float64
		for _, m := range ms {
			v = append(v, f(m))
		}
		return median(v)
	}
	s := &Measurement{
		ReqPerSec:       col(func(m *Measurement) float64 { return m.ReqPerSec }),
		Seconds:         col(func(m *Measurement) float64 { return m.Seconds }),
		P50ms:           col(func(m *Measurement) float64 { return m.P50ms }),
		P99ms:           col(func(m *Measurement) float64 { return m.P99ms }),
		ProxyCoreBusy:   col(func(m *Measurement) float64 { return m.ProxyCoreBusy }),
		LoadCoreBusy:    col(func(m *Measurement) float64 { return m.LoadCoreBusy }),
		OthersProxyCore: col(func(m *Measurement) float64 { return m.OthersProxyCore }),
		OthersLoadCore:  col(func(m *Measurement) float64 { return m.OthersLoadCore }),
	}
	s.Requests = int64(col(func(m *Measurement) float64 { return float64(m.Requests) }))
	var errs []string
	for _, m := range ms {
		s.Errors += m.Errors
		if m.ErrorText != "" {
			errs = append(errs, m.ErrorText)
		}
	}
	s.ErrorText = strings.Join(errs, " | ")
	if ms[0].CPUPer100k != nil {
		cpu := col(func(m *Measurement) float64 { return *m.ProxyCPUSec })
		per := col(func(m *Measurement) float64 { return *m.CPUPer100k })
		irq := col(func(m *Measurement) float64 { return *m.IRQPer100k })
		user := col(func(m *Measurement) float64 { return *m.UserPer100k })
		sys := col(func(m *Measurement) float64 { return *m.SysPer100k })
		s.IRQPer100k, s.UserPer100k, s.SysPer100k = &irq, &user, &sys
		var peak float64
		for _, m := range ms {
			peak = max(peak, *m.PeakRSSMiB)
		}
		s.ProxyCPUSec, s.CPUPer100k, s.PeakRSSMiB = &cpu, &per, &peak
	}
	return s
}

// IdleResult is the memory held for idle keep-alive connections.
type IdleResult struct {
	Target         string  `json:"target"`
	Label          string  `json:"label"`
	Conns          int     `json:"connections"`
	BaselineRSSMiB float64 `json:"baseline_rss_mib"`
	RSSMiB         float64 `json:"rss_mib"`
	PeakRSSMiB     float64 `json:"peak_rss_mib"`
	PerConnKiB     float64 `json:"per_connection_kib"`
	OpenSeconds    float64 `json:"open_seconds"`
	Error          string  `json:"error,omitempty"`
	NA             string  `json:"na,omitempty"`
}

// runIdle holds o.idleConns idle keep-alive connections (one request each)
// to a fresh sluice, and to the running nginx for reference.
func runIdle(o options, e *env) []*IdleResult {
	logf("== idle: %d idle keep-alive connections", o.idleConns)
	var out []*IdleResult

	for _, id := range []string{"sluice", "nginx"} {
		if o.noPeers && id == "nginx" {
			continue
		}
		t, err := e.startTarget(id)
		if err != nil {
			out = append(out, &IdleResult{Target: id, Label: targetInfo[id].label, Conns: o.idleConns, Error: firstLine(err.Error())})
			continue
		}
		t.label += ", fresh process"
		out = append(out, holdIdle(o, t))
		t.proc.stop()
	}
	if !o.noPeers {
		out = append(out, &IdleResult{Target: "haproxy", Label: targetInfo["haproxy"].label, Conns: o.idleConns,
			NA: "n/a: haproxy's maxconn is capped near 9000 by ulimit -n 20000 here"})
	}
	return out
}

func holdIdle(o options, t *target) *IdleResult {
	r := &IdleResult{Target: t.id, Label: t.label, Conns: o.idleConns}
	pids := processTree(t.proc.pid)
	r.BaselineRSSMiB = statusKB(pids, "VmRSS") / 1024
	resetPeakRSS(pids)

	pr, pw, err := os.Pipe()
	if err != nil {
		fatalf("%v", err)
	}
	start := time.Now()
	addr := strings.TrimPrefix(t.h1, "http://")
	ic, err := startProc("idleconns-"+t.id, loadCore, nil, pr, filepath.Join(o.bin, "idleconns"),
		"-addr", addr, "-n", strconv.Itoa(o.idleConns), "-hold", "3m")
	pr.Close()
	if err != nil {
		fatalf("%v", err)
	}
	defer func() {
		pw.Close()
		select {
		case <-ic.done:
		case <-time.After(10 * time.Second):
			ic.stop()
		}
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, _ := os.ReadFile(ic.log)
		s := string(b)
		if strings.Contains(s, "ready") {
			break
		}
		if strings.Contains(s, "failed") || !ic.alive() || time.Now().After(deadline) {
			r.Error = "idleconns: " + strings.TrimSpace(s)
			if r.Error == "idleconns: " {
				r.Error += "did not get ready in time"
			}
			logf("   %s: %s", t.id, r.Error)
			return r
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.OpenSeconds = time.Since(start).Seconds()
	time.Sleep(time.Second) // let the proxy settle
	pids = processTree(t.proc.pid)
	r.RSSMiB = statusKB(pids, "VmRSS") / 1024
	r.PeakRSSMiB = statusKB(pids, "VmHWM") / 1024
	r.PerConnKiB = (r.RSSMiB - r.BaselineRSSMiB) * 1024 / float64(o.idleConns)
	// The connections must still be open: count them from the proxy side.
	if !t.proc.alive() {
		r.Error = "proxy exited: " + t.proc.tail()
	}
	logf("   %-12s baseline %.1f MiB, with %d idle connections %.1f MiB (peak %.1f MiB), %.1f KiB per connection",
		t.id, r.BaselineRSSMiB, o.idleConns, r.RSSMiB, r.PeakRSSMiB, r.PerConnKiB)
	return r
}
