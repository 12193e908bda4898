// Command harness is the engine of bench/run: it starts the origin, sluice,
// nginx and haproxy pinned to CPU cores, drives them with wrk and h2load in
// alternating rounds, measures the proxies' CPU and memory from /proc, and
// writes a markdown table and bench/results/latest.json.
//
// Run it through bench/run, which installs the tools and builds the
// binaries; see bench/README.md.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Cores: the proxy under test gets proxyCore alone; the load generator and
// the origin share loadCore.
const (
	proxyCore = "0"
	loadCore  = "1"
)

type options struct {
	quick       bool
	rounds      int
	dur, warm   int // seconds
	idleConns   int
	scenarios   string
	bin         string
	repo        string
	out         string
	noPeers     bool
	profile     bool
	profileOnly bool
	profileDur  int
	baseline    string // another sluice binary, measured beside this one
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	stopAll()
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func main() {
	var o options
	flag.BoolVar(&o.quick, "quick", false, "short run (3 rounds of 1 s; under 3 minutes)")
	flag.IntVar(&o.rounds, "rounds", 0, "rounds per scenario (default 3 quick, 5 full)")
	flag.IntVar(&o.dur, "duration", 0, "seconds per measurement (default 1 quick, 5 full)")
	flag.IntVar(&o.warm, "warmup", 0, "warm-up seconds per target and scenario (default 1 quick, 2 full)")
	flag.IntVar(&o.idleConns, "idle-conns", 10000, "idle keep-alive connections for the memory scenario (0 skips it)")
	flag.StringVar(&o.scenarios, "scenarios", "", "comma-separated scenario ids to run (default all): "+strings.Join(scenarioIDs(), ","))
	flag.StringVar(&o.bin, "bin", "", "directory with the built binaries (sluice, origin, idleconns[, sluiceprof])")
	flag.StringVar(&o.repo, "repo", ".", "repository root")
	flag.StringVar(&o.out, "out", "", "results directory (default REPO/bench/results)")
	flag.StringVar(&workDir, "work", "", "scratch directory for configs and logs")
	defNice := 0
	if os.Geteuid() == 0 {
		defNice = -20
	}
	flag.IntVar(&niceLevel, "nice", defNice, "nice level of every process started (default -20 as root: other work on the machine yields to the benchmark)")
	flag.BoolVar(&o.noPeers, "no-peers", false, "skip nginx and haproxy")
	flag.StringVar(&o.baseline, "baseline", "", "a sluice binary (say, built from an earlier commit) measured in the same rounds as this one, GOMAXPROCS=1, HTTP/1.1 scenarios: tells a regression from the machine's drift")
	flag.BoolVar(&o.profile, "profile", false, "after the run, profile sluice (CPU and allocations) under the keep-alive load")
	flag.BoolVar(&o.profileOnly, "profile-only", false, "only the profiles (no scenarios; results/latest.* untouched)")
	flag.IntVar(&o.profileDur, "profile-seconds", 10, "CPU profile length with -profile")
	flag.Parse()
	if o.rounds == 0 {
		o.rounds = pick(o.quick, 3, 5)
	}
	if o.dur == 0 {
		o.dur = pick(o.quick, 1, 5)
	}
	if o.warm == 0 {
		o.warm = pick(o.quick, 1, 2)
	}
	if o.out == "" {
		o.out = filepath.Join(o.repo, "bench", "results")
	}
	if o.bin == "" {
		fatalf("-bin is required (use bench/run)")
	}
	if workDir == "" {
		d, err := os.MkdirTemp("", "sluice-bench-")
		if err != nil {
			fatalf("%v", err)
		}
		workDir = d
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		logf("bench: %v: stopping every process started", s)
		stopAll()
		os.Exit(130)
	}()

	started := time.Now()
	res := &Results{Mode: pickS(o.quick, "quick", "full"), Started: started.UTC().Format(time.RFC3339),
		Machine: describeMachine(o.repo), Method: method(o)}
	env := startOrigin(o)
	if o.profileOnly {
		runProfile(o, env)
		stopAll()
		return
	}
	selected := map[string]bool{}
	for _, id := range strings.Split(o.scenarios, ",") {
		if id = strings.TrimSpace(id); id != "" {
			selected[id] = true
		}
	}
	for _, sc := range buildScenarios(o) {
		if len(selected) > 0 && !selected[sc.ID] {
			continue
		}
		runScenario(o, env, sc)
		res.Scenarios = append(res.Scenarios, sc)
	}
	if o.idleConns > 0 && (len(selected) == 0 || selected["idle"]) {
		res.Idle = runIdle(o, env)
	}
	res.Ratios, res.FilterRatios = computeRatios(res.Scenarios)
	res.Targets = checkTargets(res)
	res.Seconds = time.Since(started).Seconds()

	md := renderMarkdown(res)
	fmt.Print(md)
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		fatalf("%v", err)
	}
	js, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(filepath.Join(o.out, "latest.json"), append(js, '\n'), 0o644); err != nil {
		fatalf("%v", err)
	}
	if err := os.WriteFile(filepath.Join(o.out, "latest.md"), []byte(md), 0o644); err != nil {
		fatalf("%v", err)
	}
	// Also by mode, so a quick run does not hide the last full one.
	os.WriteFile(filepath.Join(o.out, res.Mode+".json"), append(js, '\n'), 0o644)
	os.WriteFile(filepath.Join(o.out, res.Mode+".md"), []byte(md), 0o644)
	logf("bench: wrote %s/{latest,%s}.{json,md} (%.0f s)", o.out, res.Mode, res.Seconds)

	if o.profile {
		runProfile(o, env)
	}
	stopAll()
}

func pick(quick bool, q, f int) int {
	if quick {
		return q
	}
	return f
}

func pickS(quick bool, q, f string) string {
	if quick {
		return q
	}
	return f
}

func method(o options) string {
	return fmt.Sprintf("Each proxy is pinned to core %s (taskset) and is alone there; wrk/h2load and the origin share core %s. "+
		"Every scenario runs %d rounds of %d s, the targets alternating within each round (A B C A B C ...), after a %d s warm-up per target; "+
		"the tables show the median of the rounds (peak RSS: the highest). CPU-seconds come from utime+stime in /proc/PID/stat "+
		"(summed over the proxy's process tree; in brackets the proxy core's irq+softirq time, kernel network work charged to no process), "+
		"peak RSS from VmHWM in /proc/PID/status, reset before every measurement. "+
		"Every process runs at nice %d; \"others\" is the share of each core used by processes the harness did not start (noise).",
		proxyCore, loadCore, o.rounds, o.dur, o.warm, niceLevel)
}

// target is one server the load generator can be pointed at.
type target struct {
	id, label string
	kind      string // direct, sluice, nginx, haproxy
	proc      *proc  // the proxy measured (nil for direct)
	h1, h2    string // base URLs; "" when it does not speak that protocol
}

type env struct {
	bin        string
	baseline   string // --baseline binary, or ""
	origin     *proc
	originPort int
	direct     *target
	check      *http.Client // HTTP/1.1, no keep-alive
	checkH2    *http.Client // h2c prior knowledge
}
