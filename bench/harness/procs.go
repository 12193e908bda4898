package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a process the harness started (in its own process group, killed
// when the harness exits).
type proc struct {
	name string
	cmd  *exec.Cmd
	pid  int
	log  string
	done chan struct{}
	err  error
}

// niceLevel is the scheduling priority of everything the harness starts
// (-20 when root): on a machine that other work shares, it keeps the
// benchmark's processes from waiting for CPU behind it.
var niceLevel int

// prioritize gives the session of pid (every process the harness starts
// leads its own session, so its own scheduler autogroup) the nice level.
// With autogroups on, a task's nice only ranks it inside its session; the
// autogroup's nice is what ranks it against other sessions' work.
func prioritize(pid int) {
	if niceLevel == 0 {
		return
	}
	os.WriteFile(fmt.Sprintf("/proc/%d/autogroup", pid), []byte(strconv.Itoa(niceLevel)), 0)
}

// pinned prefixes argv with taskset (and nice when niceLevel is set).
func pinned(core string, argv []string) []string {
	out := []string{"taskset", "-c", core}
	if niceLevel != 0 {
		out = append([]string{"nice", "-n", strconv.Itoa(niceLevel)}, out...)
	}
	return append(out, argv...)
}

var (
	procsMu sync.Mutex
	procs   []*proc
	workDir string
)

// startProc runs argv pinned to core with taskset, env added to the
// harness's environment, output to WORK/name.log.
func startProc(name, core string, env []string, stdin io.Reader, argv ...string) (*proc, error) {
	logPath := filepath.Join(workDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(pinned(core, argv)[0], pinned(core, argv)[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Stdin = stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	prioritize(cmd.Process.Pid)
	p := &proc{name: name, cmd: cmd, pid: cmd.Process.Pid, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
		procsMu.Lock()
		writePidFile()
		procsMu.Unlock()
	}()
	procsMu.Lock()
	procs = append(procs, p)
	writePidFile()
	procsMu.Unlock()
	return p, nil
}

// writePidFile records the process groups for bench/run's exit trap.
func writePidFile() {
	var b strings.Builder
	for _, p := range procs {
		if p.alive() {
			fmt.Fprintf(&b, "%d\n", p.pid)
		}
	}
	os.WriteFile(filepath.Join(workDir, "pgids"), []byte(b.String()), 0o644)
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop ends the process group: SIGTERM, then SIGKILL after a grace period.
func (p *proc) stop() {
	if !p.alive() {
		return
	}
	syscall.Kill(-p.pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
		syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
	}
	// Children that left the group (none of ours do) would survive; the
	// group kill covers nginx's worker.
	syscall.Kill(-p.pid, syscall.SIGKILL)
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func stopAll() {
	procsMu.Lock()
	ps := append([]*proc(nil), procs...)
	procsMu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop() }()
	}
	wg.Wait()
}

// freePort returns a loopback port that was free a moment ago.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatalf("no free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitHTTP polls url until it answers 200 or the timeout passes.
func waitHTTP(p *proc, client *http.Client, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if p != nil && !p.alive() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail())
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			cancel()
			if resp.StatusCode == 200 {
				return nil
			}
			last = fmt.Errorf("status %d", resp.StatusCode)
		} else {
			cancel()
			last = err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not answering 200 within %v: %v", url, timeout, last)
}

// processTree returns pid and all its descendants.
func processTree(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(n)
		if err != nil {
			continue
		}
		children[st.ppid] = append(children[st.ppid], n)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

type procStat struct {
	ppid         int
	utime, stime uint64 // clock ticks
}

// clkTck is USER_HZ; 100 on every Linux this runs on.
const clkTck = 100

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("bad stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("short stat")
	}
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	stt, _ := strconv.ParseUint(f[12], 10, 64)
	return procStat{ppid: ppid, utime: ut, stime: stt}, nil
}

// cpuSeconds is utime+stime of the process tree, in seconds.
func cpuSeconds(pids []int) float64 {
	u, s := cpuSplit(pids)
	return u + s
}

// cpuSplit is utime and stime of the process tree, in seconds.
func cpuSplit(pids []int) (user, sys float64) {
	var u, s uint64
	for _, p := range pids {
		if st, err := readStat(p); err == nil {
			u += st.utime
			s += st.stime
		}
	}
	return float64(u) / clkTck, float64(s) / clkTck
}

// statusKB reads a "Vm...:  N kB" line of /proc/PID/status, summed over pids.
func statusKB(pids []int, key string) float64 {
	var sum float64
	for _, p := range pids {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, key+":") {
				fs := strings.Fields(line[len(key)+1:])
				if len(fs) > 0 {
					v, _ := strconv.ParseFloat(fs[0], 64)
					sum += v
				}
				break
			}
		}
		f.Close()
	}
	return sum
}

// resetPeakRSS sets VmHWM back to the current RSS (Linux ≥ 4.0).
func resetPeakRSS(pids []int) {
	for _, p := range pids {
		os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p), []byte("5"), 0)
	}
}

// coreTimes are per-core jiffies from /proc/stat: busy (everything but
// idle and iowait), of which irq (irq + softirq: on loopback, most of the
// receive-side TCP work of the sender's packets; the kernel charges it to
// no process), and total.
type coreTimes struct{ busy, irq, total [2]uint64 }

func readCoreTimes() coreTimes {
	var ct coreTimes
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return ct
	}
	for _, line := range strings.Split(string(b), "\n") {
		var core int
		switch {
		case strings.HasPrefix(line, "cpu0 "):
			core = 0
		case strings.HasPrefix(line, "cpu1 "):
			core = 1
		default:
			continue
		}
		f := strings.Fields(line)[1:]
		var total, idle, irq uint64
		for i, v := range f {
			n, _ := strconv.ParseUint(v, 10, 64)
			if i >= 8 { // guest time is already in user
				break
			}
			total += n
			switch i {
			case 3, 4: // idle, iowait
				idle += n
			case 5, 6: // irq, softirq
				irq += n
			}
		}
		ct.busy[core] = total - idle
		ct.irq[core] = irq
		ct.total[core] = total
	}
	return ct
}

// irqSeconds is the irq+softirq time of a core between a and b.
func irqSeconds(a, b coreTimes, core int) float64 {
	return float64(b.irq[core]-a.irq[core]) / clkTck
}

func busyPercent(a, b coreTimes, core int) float64 {
	dt := float64(b.total[core] - a.total[core])
	if dt <= 0 {
		return 0
	}
	return 100 * float64(b.busy[core]-a.busy[core]) / dt
}

// othersPercent is the share of a core's time used by processes other than
// ours (oursSec CPU-seconds of ours ran there) between a and b; irq and
// softirq time is left out (it is mostly our own packets).
func othersPercent(a, b coreTimes, core int, oursSec float64) float64 {
	dt := float64(b.total[core] - a.total[core])
	if dt <= 0 {
		return 0
	}
	o := float64(b.busy[core]-a.busy[core]) - float64(b.irq[core]-a.irq[core]) - oursSec*clkTck
	return max(0, 100*o/dt)
}
