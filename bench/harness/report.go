package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
)

// Results is everything one run measured; bench/results/latest.json.
type Results struct {
	Mode         string         `json:"mode"`
	Started      string         `json:"started"`
	Seconds      float64        `json:"seconds"`
	Machine      Machine        `json:"machine"`
	Method       string         `json:"method"`
	Scenarios    []*Scenario    `json:"scenarios"`
	Idle         []*IdleResult  `json:"idle,omitempty"`
	Ratios       []*Ratio       `json:"ratios"`
	FilterRatios []*FilterRatio `json:"filter_ratios"`
	Targets      []*TargetCheck `json:"targets"`
}

// Machine describes where the numbers come from.
type Machine struct {
	Cores    int               `json:"cores"`
	CPUModel string            `json:"cpu_model"`
	Kernel   string            `json:"kernel"`
	OS       string            `json:"os"`
	MemGiB   float64           `json:"mem_gib"`
	UlimitN  string            `json:"ulimit_n"`
	Sluice   string            `json:"sluice"`
	Tools    map[string]string `json:"tools"`
}

func describeMachine(repo string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Tools: map[string]string{}}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				m.CPUModel = strings.TrimSpace(l[strings.IndexByte(l, ':')+1:])
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	if b, err := os.ReadFile("/etc/debian_version"); err == nil {
		m.OS += " (" + strings.TrimSpace(string(b)) + ")"
	}
	m.MemGiB = statusMemGiB()
	m.UlimitN = strings.TrimSpace(shell("ulimit -n"))
	rev := strings.TrimSpace(gitOut(repo, "rev-parse", "--short", "HEAD"))
	if rev != "" && strings.TrimSpace(gitOut(repo, "status", "--porcelain", "--untracked-files=no")) != "" {
		rev += " + uncommitted changes"
	}
	m.Sluice = rev
	m.Tools["go"] = strings.TrimPrefix(toolVersion("go", "version"), "go version ")
	m.Tools["wrk"] = toolVersion("wrk", "-v")
	m.Tools["h2load"] = toolVersion("h2load", "--version")
	m.Tools["nginx"] = toolVersion("nginx", "-v")
	m.Tools["haproxy"] = toolVersion("haproxy", "-v")
	return m
}

func statusMemGiB() float64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			kb, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return kb / (1 << 20)
		}
	}
	return 0
}

func shell(s string) string {
	out, _ := exec.Command("sh", "-c", s).Output()
	return string(out)
}

func gitOut(repo string, args ...string) string {
	out, _ := exec.Command("git", append([]string{"-C", repo}, args...)...).Output()
	return string(out)
}

// Ratio compares one sluice row to the peers in a scenario (sluice ÷ peer).
type Ratio struct {
	Scenario       string   `json:"scenario"`
	Sluice         string   `json:"sluice"`
	RPSvsNginx     *float64 `json:"req_per_sec_vs_nginx,omitempty"`
	RPSvsHaproxy   *float64 `json:"req_per_sec_vs_haproxy,omitempty"`
	RPSvsDirect    *float64 `json:"req_per_sec_vs_direct,omitempty"`
	P99vsNginx     *float64 `json:"p99_vs_nginx,omitempty"`
	P99vsHaproxy   *float64 `json:"p99_vs_haproxy,omitempty"`
	CPUvsNginx     *float64 `json:"cpu_per_request_vs_nginx,omitempty"`
	CPUvsHaproxy   *float64 `json:"cpu_per_request_vs_haproxy,omitempty"`
	PeakRSSvsNginx *float64 `json:"peak_rss_vs_nginx,omitempty"`
}

// FilterRatio compares a filter row to the no-filter row (filter ÷ none).
type FilterRatio struct {
	Filter string   `json:"filter"`
	RPS    *float64 `json:"req_per_sec"`
	P99    *float64 `json:"p99"`
	CPU    *float64 `json:"cpu_per_request"`
	NA     string   `json:"na,omitempty"`
}

func div(a, b float64) *float64 {
	if b == 0 {
		return nil
	}
	v := a / b
	return &v
}

func divp(a, b *float64) *float64 {
	if a == nil || b == nil {
		return nil
	}
	return div(*a, *b)
}

func computeRatios(scs []*Scenario) ([]*Ratio, []*FilterRatio) {
	var out []*Ratio
	var fr []*FilterRatio
	for _, sc := range scs {
		if sc.Filters {
			base := sc.Rows[0].Median
			for _, r := range sc.Rows[1:] {
				f := &FilterRatio{Filter: r.Label, NA: r.NA}
				if r.Median != nil && base != nil {
					f.RPS = div(r.Median.ReqPerSec, base.ReqPerSec)
					f.P99 = div(r.Median.P99ms, base.P99ms)
					f.CPU = divp(r.Median.CPUPer100k, base.CPUPer100k)
				} else if f.NA == "" {
					f.NA = "not measured"
				}
				fr = append(fr, f)
			}
			continue
		}
		by := map[string]*Measurement{}
		for _, r := range sc.Rows {
			if r.Median != nil {
				by[r.Kind] = r.Median
			}
		}
		for _, r := range sc.Rows {
			if r.Kind != "sluice" || r.Median == nil {
				continue
			}
			s := r.Median
			ra := &Ratio{Scenario: sc.ID, Sluice: r.Label}
			if n := by["nginx"]; n != nil {
				ra.RPSvsNginx, ra.P99vsNginx = div(s.ReqPerSec, n.ReqPerSec), div(s.P99ms, n.P99ms)
				ra.CPUvsNginx, ra.PeakRSSvsNginx = divp(s.CPUPer100k, n.CPUPer100k), divp(s.PeakRSSMiB, n.PeakRSSMiB)
			}
			if h := by["haproxy"]; h != nil {
				ra.RPSvsHaproxy, ra.P99vsHaproxy = div(s.ReqPerSec, h.ReqPerSec), div(s.P99ms, h.P99ms)
				ra.CPUvsHaproxy = divp(s.CPUPer100k, h.CPUPer100k)
			}
			if d := by["direct"]; d != nil {
				ra.RPSvsDirect = div(s.ReqPerSec, d.ReqPerSec)
			}
			out = append(out, ra)
		}
	}
	return out, fr
}

// TargetCheck is one of issue 3's targets, judged from this run.
type TargetCheck struct {
	Target string `json:"target"`
	Value  string `json:"value"`
	Met    *bool  `json:"met,omitempty"`
}

func checkTargets(res *Results) []*TargetCheck {
	var out []*TargetCheck
	b := func(v bool) *bool { return &v }
	for _, ra := range res.Ratios {
		if ra.Scenario != "h1-keepalive" || !strings.Contains(ra.Sluice, "GOMAXPROCS=1") {
			continue
		}
		if ra.RPSvsNginx != nil {
			out = append(out, &TargetCheck{Target: "HTTP/1.1 keep-alive, one core: sluice req/s ≥ nginx's",
				Value: fmt.Sprintf("sluice/nginx = %.2f", *ra.RPSvsNginx), Met: b(*ra.RPSvsNginx >= 1)})
			out = append(out, &TargetCheck{Target: "HTTP/1.1 keep-alive, one core: sluice p99 ≤ 1.2 × nginx's",
				Value: fmt.Sprintf("sluice/nginx = %.2f", *ra.P99vsNginx), Met: b(*ra.P99vsNginx <= 1.2)})
		}
		if ra.CPUvsNginx != nil {
			v := fmt.Sprintf("%.2f", *ra.CPUvsNginx)
			if sl, ng := medianOf(res, "h1-keepalive", "sluice"), medianOf(res, "h1-keepalive", "nginx"); sl != nil && ng != nil && sl.UserPer100k != nil && ng.UserPer100k != nil {
				// CPU-s per 100k requests × 10 = µs per request.
				v += fmt.Sprintf(" (µs per request, user + sys: sluice %.1f + %.1f, nginx %.1f + %.1f)",
					*sl.UserPer100k*10, *sl.SysPer100k*10, *ng.UserPer100k*10, *ng.SysPer100k*10)
			}
			out = append(out, &TargetCheck{Target: "(context) HTTP/1.1 keep-alive: proxy CPU per request, sluice ÷ nginx", Value: v})
		}
	}
	for _, id := range res.Idle {
		if id.Target == "sluice" {
			if id.Error != "" {
				out = append(out, &TargetCheck{Target: "RSS with 10,000 idle keep-alive connections ≤ 150 MiB", Value: "failed: " + id.Error, Met: b(false)})
				continue
			}
			t := &TargetCheck{Target: fmt.Sprintf("RSS with %d idle keep-alive connections ≤ 150 MiB", id.Conns),
				Value: fmt.Sprintf("%.1f MiB (peak %.1f MiB)", id.RSSMiB, id.PeakRSSMiB)}
			if id.Conns >= 10000 {
				t.Met = b(id.PeakRSSMiB <= 150)
			}
			out = append(out, t)
		}
	}
	return out
}

func fmtPtr(p *float64, prec int) string {
	if p == nil {
		return "—"
	}
	return strconv.FormatFloat(*p, 'f', prec, 64)
}

func fmtRatio(p *float64) string {
	if p == nil {
		return "—"
	}
	return fmt.Sprintf("%.2f", *p)
}

func thousands(v float64) string {
	s := strconv.FormatFloat(v, 'f', 0, 64)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func renderMarkdown(res *Results) string {
	var b strings.Builder
	m := res.Machine
	fmt.Fprintf(&b, "## Sluice benchmark (%s run, %s)\n\n", res.Mode, res.Started)
	fmt.Fprintf(&b, "- Machine: %d cores, %s, %.0f GiB RAM, kernel %s, %s, ulimit -n %s\n", m.Cores, m.CPUModel, m.MemGiB, m.Kernel, m.OS, m.UlimitN)
	fmt.Fprintf(&b, "- Sluice: %s; %s\n", m.Sluice, m.Tools["go"])
	fmt.Fprintf(&b, "- Tools: %s; %s; %s; %s\n", m.Tools["wrk"], m.Tools["h2load"], m.Tools["nginx"], m.Tools["haproxy"])
	fmt.Fprintf(&b, "- Method: %s\n", res.Method)
	fmt.Fprintf(&b, "- Run time: %.0f s\n\n", res.Seconds)

	for _, sc := range res.Scenarios {
		fmt.Fprintf(&b, "### %s\n\n`%s`\n\n", sc.Title, sc.Command)
		fmt.Fprintf(&b, "| target | req/s | p50 ms | p99 ms | proxy CPU-s / 100k req (+ softirq) | proxy peak RSS MiB | cores busy %% (proxy/load) | others %% (proxy/load) | errors |\n")
		fmt.Fprintf(&b, "|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		saturated, noisy := false, false
		for _, r := range sc.Rows {
			switch {
			case r.NA != "":
				fmt.Fprintf(&b, "| %s | %s | | | | | | | |\n", r.Label, r.NA)
			case r.Median == nil:
				fmt.Fprintf(&b, "| %s | failed: %s | | | | | | | |\n", r.Label, mdEscape(r.Failed))
			default:
				md := r.Median
				errs := "0"
				if md.Errors > 0 {
					errs = fmt.Sprintf("**%d** (%s)", md.Errors, mdEscape(md.ErrorText))
				}
				label := r.Label
				if r.Failed != "" {
					label += " (a round failed: " + mdEscape(r.Failed) + ")"
				}
				busy := fmt.Sprintf("%.0f / %.0f", md.ProxyCoreBusy, md.LoadCoreBusy)
				others := fmt.Sprintf("%.0f / %.0f", md.OthersProxyCore, md.OthersLoadCore)
				if r.Kind == "direct" { // nothing of ours runs on the proxy core
					busy = fmt.Sprintf("— / %.0f", md.LoadCoreBusy)
					others = fmt.Sprintf("— / %.0f", md.OthersLoadCore)
				} else {
					noisy = noisy || md.OthersProxyCore > 10 || md.OthersLoadCore > 10
				}
				saturated = saturated || (r.Kind != "direct" && md.LoadCoreBusy >= 95)
				cpu := fmtPtr(md.CPUPer100k, 2)
				if md.IRQPer100k != nil {
					cpu += " (+ " + fmtPtr(md.IRQPer100k, 2) + ")"
				}
				fmt.Fprintf(&b, "| %s | %s | %.3f | %.3f | %s | %s | %s | %s | %s |\n", label, thousands(md.ReqPerSec), md.P50ms, md.P99ms,
					cpu, fmtPtr(md.PeakRSSMiB, 1), busy, others, errs)
			}
		}
		b.WriteString("\n")
		if saturated {
			b.WriteString("Note: the load core (wrk/h2load + origin) was ≥ 95% busy for some proxies: their req/s is capped by the load generator, so compare CPU-s per 100k requests.\n\n")
		}
		if noisy {
			b.WriteString("Note: other processes on this machine used more than 10% of a benchmark core in some rows (\"others\"): those numbers are noisy.\n\n")
		}
	}

	if len(res.Ratios) > 0 {
		b.WriteString("### Ratios (sluice ÷ peer; req/s above 1 is better, p99 and CPU below 1 are better)\n\n")
		b.WriteString("| scenario | sluice | req/s ÷ nginx | ÷ haproxy | ÷ direct | p99 ÷ nginx | ÷ haproxy | CPU/req ÷ nginx | ÷ haproxy | peak RSS ÷ nginx |\n")
		b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range res.Ratios {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Scenario, r.Sluice,
				fmtRatio(r.RPSvsNginx), fmtRatio(r.RPSvsHaproxy), fmtRatio(r.RPSvsDirect),
				fmtRatio(r.P99vsNginx), fmtRatio(r.P99vsHaproxy), fmtRatio(r.CPUvsNginx), fmtRatio(r.CPUvsHaproxy), fmtRatio(r.PeakRSSvsNginx))
		}
		b.WriteString("\n")
	}
	if len(res.FilterRatios) > 0 {
		b.WriteString("### Filter cost (filter ÷ no filter)\n\n| filter | req/s | p99 | CPU/req |\n|---|--:|--:|--:|\n")
		for _, f := range res.FilterRatios {
			if f.NA != "" {
				fmt.Fprintf(&b, "| %s | %s | | |\n", f.Filter, f.NA)
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", f.Filter, fmtRatio(f.RPS), fmtRatio(f.P99), fmtRatio(f.CPU))
		}
		b.WriteString("\n")
	}
	if len(res.Idle) > 0 {
		b.WriteString("### Idle keep-alive connections (one request each, then idle)\n\n")
		b.WriteString("| target | connections | RSS before MiB | RSS held MiB | peak RSS MiB | KiB per connection | time to open s |\n|---|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range res.Idle {
			switch {
			case r.NA != "":
				fmt.Fprintf(&b, "| %s | %s | | | | | |\n", r.Label, r.NA)
			case r.Error != "":
				fmt.Fprintf(&b, "| %s | failed: %s | | | | | |\n", r.Label, mdEscape(r.Error))
			default:
				fmt.Fprintf(&b, "| %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f |\n", r.Label, thousands(float64(r.Conns)),
					r.BaselineRSSMiB, r.RSSMiB, r.PeakRSSMiB, r.PerConnKiB, r.OpenSeconds)
			}
		}
		b.WriteString("\n")
	}
	if len(res.Targets) > 0 {
		b.WriteString("### Targets\n\n| target | this run | met |\n|---|---|---|\n")
		for _, t := range res.Targets {
			met := "—"
			if t.Met != nil {
				met = map[bool]string{true: "yes", false: "**no**"}[*t.Met]
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", t.Target, t.Value, met)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// medianOf is the median of a target in a scenario, or nil.
func medianOf(res *Results, scenario, target string) *Measurement {
	for _, sc := range res.Scenarios {
		if sc.ID != scenario {
			continue
		}
		for _, r := range sc.Rows {
			if r.Target == target {
				return r.Median
			}
		}
	}
	return nil
}
