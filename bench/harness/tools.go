package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// loadResult is what one load-generator run measured.
type loadResult struct {
	Requests  int64
	Seconds   float64
	ReqPerSec float64
	P50ms     float64
	P99ms     float64
	Errors    int64
	ErrorText string
	LoadCPU   float64 // the load generator's CPU-seconds
}

// runBounded runs a load generator pinned to the load core, killed if it
// outlives timeout. It returns the output and the generator's CPU-seconds.
func runBounded(timeout time.Duration, argv ...string) (string, float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := pinned(loadCore, argv)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Start()
	if err == nil {
		prioritize(cmd.Process.Pid)
		err = cmd.Wait()
	}
	out := buf.Bytes()
	var cpu float64
	if cmd.ProcessState != nil {
		cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	if ctx.Err() != nil {
		return string(out), cpu, fmt.Errorf("%s: killed after %v", argv[0], timeout)
	}
	return string(out), cpu, err
}

// wrk runs wrk -t1 for dur seconds.
func wrk(url string, conns, dur int, headers []string) (loadResult, string, error) {
	args := []string{"wrk", "-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(dur) + "s", "--timeout", "5s", "--latency"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	args = append(args, url)
	out, cpu, err := runBounded(time.Duration(dur)*time.Second+30*time.Second, args...)
	if err != nil {
		return loadResult{}, out, fmt.Errorf("%v\n%s", err, out)
	}
	r, err := parseWrk(out)
	r.LoadCPU = cpu
	return r, out, err
}

var (
	wrkReqs   = regexp.MustCompile(`(\d+) requests in ([\d.]+)(us|ms|s|m)`)
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkPct    = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$`)
	wrkSock   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func unitMs(v float64, unit string) float64 {
	switch unit {
	case "us":
		return v / 1000
	case "ms":
		return v
	case "s":
		return v * 1000
	case "m":
		return v * 60000
	}
	return v
}

func parseWrk(out string) (loadResult, error) {
	var r loadResult
	m := wrkReqs.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk: no request count in output:\n%s", out)
	}
	r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	d, _ := strconv.ParseFloat(m[2], 64)
	r.Seconds = unitMs(d, m[3]) / 1000
	if m := wrkRPS.FindStringSubmatch(out); m != nil {
		r.ReqPerSec, _ = strconv.ParseFloat(m[1], 64)
	}
	for _, m := range wrkPct.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		if m[1] == "50" {
			r.P50ms = unitMs(v, m[3])
		} else {
			r.P99ms = unitMs(v, m[3])
		}
	}
	var errs []string
	if m := wrkSock.FindStringSubmatch(out); m != nil {
		var n int64
		for _, s := range m[1:] {
			v, _ := strconv.ParseInt(s, 10, 64)
			n += v
		}
		if n > 0 {
			r.Errors += n
			errs = append(errs, strings.TrimSpace(m[0]))
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		v, _ := strconv.ParseInt(m[1], 10, 64)
		r.Errors += v
		errs = append(errs, m[0])
	}
	r.ErrorText = strings.Join(errs, "; ")
	if r.Requests == 0 {
		return r, fmt.Errorf("wrk: no request completed:\n%s", out)
	}
	return r, nil
}

// h2load runs h2load (h2c, prior knowledge) for dur seconds and computes
// the percentiles from its per-request log.
func h2load(url string, conns, streams, dur int) (loadResult, string, error) {
	logFile := filepath.Join(workDir, "h2load-requests.tsv")
	os.Remove(logFile)
	args := []string{"h2load", "-t1", "-c" + strconv.Itoa(conns), "-m" + strconv.Itoa(streams),
		"-D", strconv.Itoa(dur), "--log-file=" + logFile, url}
	out, cpu, err := runBounded(time.Duration(dur)*time.Second+30*time.Second, args...)
	if err != nil {
		return loadResult{}, out, fmt.Errorf("%v\n%s", err, out)
	}
	r, err := parseH2load(out)
	r.LoadCPU = cpu
	if err != nil {
		return r, out, err
	}
	lat, err := readH2loadLog(logFile)
	if err != nil {
		return r, out, err
	}
	r.P50ms = percentile(lat, 50)
	r.P99ms = percentile(lat, 99)
	return r, out, nil
}

var (
	h2Finished = regexp.MustCompile(`finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s`)
	h2Reqs     = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2Codes    = regexp.MustCompile(`status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
)

func parseH2load(out string) (loadResult, error) {
	var r loadResult
	m := h2Finished.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("h2load: no summary in output:\n%s", out)
	}
	d, _ := strconv.ParseFloat(m[1], 64)
	r.Seconds = unitMs(d, m[2]) / 1000
	r.ReqPerSec, _ = strconv.ParseFloat(m[3], 64)
	m = h2Reqs.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("h2load: no request counts in output:\n%s", out)
	}
	done, _ := strconv.ParseInt(m[3], 10, 64)
	r.Requests = done
	var errs []string
	for i, what := range []string{"failed", "errored", "timeout"} {
		v, _ := strconv.ParseInt(m[5+i], 10, 64)
		if v > 0 {
			r.Errors += v
			errs = append(errs, fmt.Sprintf("%d %s", v, what))
		}
	}
	if m := h2Codes.FindStringSubmatch(out); m != nil {
		for i, what := range []string{"4xx", "5xx"} {
			v, _ := strconv.ParseInt(m[3+i], 10, 64)
			if v > 0 {
				r.Errors += v
				errs = append(errs, fmt.Sprintf("%d %s", v, what))
			}
		}
	}
	r.ErrorText = strings.Join(errs, ", ")
	if r.Requests == 0 {
		return r, fmt.Errorf("h2load: no request completed:\n%s", out)
	}
	return r, nil
}

// readH2loadLog returns the per-request latencies in ms.
func readH2loadLog(path string) ([]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lat []float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), "\t")
		if len(fs) < 3 {
			continue
		}
		us, err := strconv.ParseFloat(fs[2], 64)
		if err != nil {
			continue
		}
		lat = append(lat, us/1000)
	}
	if len(lat) == 0 {
		return nil, fmt.Errorf("h2load log %s is empty", path)
	}
	return lat, sc.Err()
}

// percentile of unsorted values (nearest rank).
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	i = max(0, min(i, len(s)-1))
	return s[i]
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func toolVersion(argv ...string) string {
	out, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	line := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	return line
}
