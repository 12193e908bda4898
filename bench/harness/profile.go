package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluice-proxy/sluice/bench"
)

// runProfile runs sluiceprof (sluice + pprof) pinned like sluice, drives it
// with the keep-alive scenario's wrk, and saves a CPU profile and an
// allocation profile (alloc_objects/alloc_space since start, which is
// almost all under load) to OUT/profiles, printing pprof -top of each.
func runProfile(o options, e *env) {
	logf("== profile: sluiceprof (GOMAXPROCS=1, core %s) under wrk -t1 -c50, %d s", proxyCore, o.profileDur)
	dir := filepath.Join(o.out, "profiles")
	os.MkdirAll(dir, 0o755)
	port, pport := freePort(), freePort()
	cfg := filepath.Join(workDir, "sluiceprof.yaml")
	os.WriteFile(cfg, []byte(bench.SluiceConfig(port, e.originPort, bench.VariantPlain)), 0o644)
	p, err := startProc("sluiceprof", proxyCore, []string{"GOMAXPROCS=1"}, nil, filepath.Join(o.bin, "sluiceprof"),
		"-c", cfg, "-pprof", fmt.Sprintf("127.0.0.1:%d", pport), "-memprofilerate", "4096")
	if err != nil {
		fatalf("%v", err)
	}
	defer p.stop()
	url := fmt.Sprintf("http://127.0.0.1:%d/small", port)
	if err := waitHTTP(p, e.check, url, 10*time.Second); err != nil {
		fatalf("sluiceprof: %v", err)
	}
	wrk(url, 50, 2, nil) // warm up

	type got struct {
		lr  loadResult
		err error
	}
	ch := make(chan got, 1)
	go func() {
		lr, _, err := wrk(url, 50, o.profileDur+2, nil)
		ch <- got{lr, err}
	}()
	time.Sleep(time.Second)
	pprofURL := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/", pport)
	cpuPath := filepath.Join(dir, "cpu.pprof")
	if err := fetch(pprofURL+fmt.Sprintf("profile?seconds=%d", o.profileDur), cpuPath, time.Duration(o.profileDur+20)*time.Second); err != nil {
		fatalf("cpu profile: %v", err)
	}
	g := <-ch
	if g.err != nil {
		fatalf("profile load: %v", g.err)
	}
	allocPath := filepath.Join(dir, "allocs.pprof")
	if err := fetch(pprofURL+"allocs", allocPath, 20*time.Second); err != nil {
		fatalf("alloc profile: %v", err)
	}
	logf("   under profiling: %.0f req/s, p99 %.3f ms (%d requests)", g.lr.ReqPerSec, g.lr.P99ms, g.lr.Requests)
	summary := fmt.Sprintf("# sluice profile: %s requests, %.0f req/s under the CPU profiler\n\n", thousands(float64(g.lr.Requests)), g.lr.ReqPerSec)
	for _, v := range []struct {
		title, file string
		args        []string
	}{
		{"CPU, flat", cpuPath, []string{"-top", "-nodecount=30"}},
		{"CPU, cumulative", cpuPath, []string{"-top", "-cum", "-nodecount=40"}},
		{"allocations (objects), flat", allocPath, []string{"-top", "-sample_index=alloc_objects", "-nodecount=25"}},
		{"allocations (bytes), flat", allocPath, []string{"-top", "-sample_index=alloc_space", "-nodecount=15"}},
	} {
		out, err := exec.Command("go", append(append([]string{"tool", "pprof"}, v.args...), filepath.Join(o.bin, "sluiceprof"), v.file)...).CombinedOutput()
		if err != nil {
			logf("pprof: %v\n%s", err, out)
		}
		summary += "## " + v.title + "\n\n```\n" + strings.TrimSpace(string(out)) + "\n```\n\n"
	}
	if o.idleConns > 0 {
		summary += profileIdle(o, p, pprofURL, fmt.Sprintf("127.0.0.1:%d", port), dir)
	}
	os.WriteFile(filepath.Join(dir, "summary.md"), []byte(summary), 0o644)
	fmt.Print(summary)
	logf("bench: profiles in %s (go tool pprof -http=: %s)", dir, cpuPath)
}

func fetch(url, path string, timeout time.Duration) error {
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// profileIdle holds idle connections to sluiceprof and records where the
// memory is: the heap profile (in use), the runtime's MemStats (stacks are
// not in the heap profile) and the goroutines.
func profileIdle(o options, p *proc, pprofURL, addr, dir string) string {
	logf("   holding %d idle connections to sluiceprof", o.idleConns)
	pr, pw, err := os.Pipe()
	if err != nil {
		fatalf("%v", err)
	}
	ic, err := startProc("idleconns-profile", loadCore, nil, pr, filepath.Join(o.bin, "idleconns"),
		"-addr", addr, "-n", fmt.Sprint(o.idleConns), "-hold", "3m")
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
		if strings.Contains(string(b), "ready") {
			break
		}
		if !ic.alive() || time.Now().After(deadline) {
			return "idle profile failed: " + string(b) + "\n"
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	rss := statusKB([]int{p.pid}, "VmRSS") / 1024
	heapPath := filepath.Join(dir, "idle-heap.pprof")
	if err := fetch(pprofURL+"heap?gc=1", heapPath, 30*time.Second); err != nil {
		fatalf("heap profile: %v", err)
	}
	// heap?debug=1 ends with runtime.MemStats; keep only that part.
	statsPath := filepath.Join(dir, "idle-memstats.txt")
	if err := fetch(pprofURL+"heap?debug=1", statsPath, 30*time.Second); err == nil {
		b, _ := os.ReadFile(statsPath)
		if i := strings.Index(string(b), "\n# runtime.MemStats"); i >= 0 {
			b = b[i+1:]
		}
		os.WriteFile(statsPath, b, 0o644)
	}
	os.Remove(filepath.Join(dir, "idle-heap.txt")) // the old name
	goPath := filepath.Join(dir, "idle-goroutines.txt")
	fetch(pprofURL+"goroutine?debug=1", goPath, 30*time.Second)

	out := fmt.Sprintf("## %d idle keep-alive connections: RSS %.1f MiB\n\n", o.idleConns, rss)
	if b, err := os.ReadFile(statsPath); err == nil {
		out += "runtime.MemStats (from heap?debug=1):\n\n```\n"
		for _, l := range strings.Split(string(b), "\n") {
			for _, k := range []string{"# HeapAlloc", "# HeapInuse", "# HeapIdle", "# HeapReleased", "# Stack =", "# MSpan", "# Sys =", "# NumGC", "# GCSys", "# OtherSys"} {
				if strings.HasPrefix(l, k) {
					out += l + "\n"
				}
			}
		}
		out += "```\n\n"
	}
	if b, err := os.ReadFile(goPath); err == nil {
		lines := strings.Split(string(b), "\n")
		out += "goroutines (top stacks):\n\n```\n"
		n := 0
		for _, l := range lines {
			if strings.HasPrefix(l, "goroutine profile:") || (strings.Contains(l, " @ 0x") && n < 6) {
				out += l[:min(len(l), 40)] + "\n"
				if strings.Contains(l, " @ 0x") {
					n++
				}
			}
			if strings.HasPrefix(l, "#\t") && n <= 6 && n > 0 {
				out += l + "\n"
			}
		}
		out += "```\n\n"
	}
	top, _ := exec.Command("go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=20", filepath.Join(o.bin, "sluiceprof"), heapPath).CombinedOutput()
	out += "heap in use (inuse_space), flat:\n\n```\n" + strings.TrimSpace(string(top)) + "\n```\n\n"
	return out
}
