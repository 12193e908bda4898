package observe

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func testStore() *Store {
	s := NewStore()
	api := s.Scope("cluster.api.", "cluster_", Label{"envoy_cluster_name", "api"})
	web := s.Scope("cluster.web.", "cluster_", Label{"envoy_cluster_name", "web"})
	api.Counter("upstream_rq_total").Add(7)
	web.Counter("upstream_rq_total").Add(3)
	api.Counter("upstream_rq_5xx")
	api.Gauge("upstream_cx_active").Set(-2)
	web.Gauge("upstream_cx_active")
	h := api.Histogram("upstream_rq_time")
	for _, v := range []float64{0.2, 3, 3, 7, 40, 120, 999999999} {
		h.Record(v)
	}
	web.Histogram("upstream_rq_time")
	odd := s.Scope("http.in.", "http_", Label{"envoy_http_conn_manager_prefix", "a\\b\"c\nd"}, Label{"9bad-name", "\xff"})
	odd.Counter("downstream_rq.total").Inc()
	s.Scope("server.", "server_").Gauge("live").Set(1)
	return s
}

func TestWriteText(t *testing.T) {
	s := testStore()
	var buf bytes.Buffer
	if err := WriteText(&buf, s, nil, false); err != nil {
		t.Fatal(err)
	}
	want := `cluster.api.upstream_cx_active: -2
cluster.api.upstream_rq_5xx: 0
cluster.api.upstream_rq_total: 7
cluster.web.upstream_cx_active: 0
cluster.web.upstream_rq_total: 3
http.in.downstream_rq.total: 1
server.live: 1
cluster.api.upstream_rq_time: P0(nan,0) P25(nan,2.5) P50(nan,7.5) P75(nan,137.5) P90(nan,3600000) P95(nan,3600000) P99(nan,3600000) P99.5(nan,3600000) P99.9(nan,3600000) P100(nan,3600000)
cluster.web.upstream_rq_time: No recorded values
`
	if got := buf.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteTextFilter(t *testing.T) {
	s := testStore()
	tests := []struct {
		filter   string
		usedOnly bool
		want     []string
	}{
		{"", true, []string{"cluster.api.upstream_cx_active", "cluster.api.upstream_rq_total", "cluster.web.upstream_rq_total", "http.in.downstream_rq.total", "server.live", "cluster.api.upstream_rq_time"}},
		{`rq.total$`, false, []string{"cluster.api.upstream_rq_total", "cluster.web.upstream_rq_total", "http.in.downstream_rq.total"}},
		{`^cluster\.web\.`, false, []string{"cluster.web.upstream_cx_active", "cluster.web.upstream_rq_total", "cluster.web.upstream_rq_time"}},
		{`^cluster\.web\.`, true, []string{"cluster.web.upstream_rq_total"}},
		{`rq_time`, false, []string{"cluster.api.upstream_rq_time", "cluster.web.upstream_rq_time"}},
		{`nomatch`, false, nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%v", tt.filter, tt.usedOnly), func(t *testing.T) {
			var re *regexp.Regexp
			if tt.filter != "" {
				re = regexp.MustCompile(tt.filter)
			}
			var buf bytes.Buffer
			if err := WriteText(&buf, s, re, tt.usedOnly); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
				if line != "" {
					got = append(got, line[:strings.Index(line, ": ")])
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWriteJSON(t *testing.T) {
	s := testStore()
	var buf bytes.Buffer
	if err := WriteJSON(&buf, s, regexp.MustCompile(`^cluster\.`), false); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Stats []json.RawMessage `json:"stats"`
	}
	dec := json.NewDecoder(&buf)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Stats) != 6 {
		t.Fatalf("%d stats elements, want 5 stats + histograms", len(doc.Stats))
	}
	var first struct {
		Name  string `json:"name"`
		Value int64  `json:"value"`
	}
	if err := json.Unmarshal(doc.Stats[0], &first); err != nil || first.Name != "cluster.api.upstream_cx_active" || first.Value != -2 {
		t.Errorf("first stat %s (%v)", doc.Stats[0], err)
	}
	var hs struct {
		Histograms struct {
			Supported []float64 `json:"supported_quantiles"`
			Computed  []struct {
				Name   string `json:"name"`
				Values []struct {
					Interval   *float64 `json:"interval"`
					Cumulative *float64 `json:"cumulative"`
				} `json:"values"`
			} `json:"computed_quantiles"`
		} `json:"histograms"`
	}
	if err := json.Unmarshal(doc.Stats[5], &hs); err != nil {
		t.Fatal(err)
	}
	h := hs.Histograms
	if fmt.Sprint(h.Supported) != "[0 25 50 75 90 95 99 99.5 99.9 100]" {
		t.Errorf("supported quantiles %v", h.Supported)
	}
	if len(h.Computed) != 2 || h.Computed[0].Name != "cluster.api.upstream_rq_time" || len(h.Computed[0].Values) != 10 {
		t.Fatalf("computed %+v", h.Computed)
	}
	if v := h.Computed[0].Values[2]; v.Interval != nil || v.Cumulative == nil || *v.Cumulative != 7.5 {
		t.Errorf("P50 %+v", v)
	}
	if v := h.Computed[1].Values[2]; v.Interval != nil || v.Cumulative != nil {
		t.Errorf("empty histogram P50 %+v", v)
	}

	buf.Reset()
	if err := WriteJSON(&buf, NewStore(), nil, false); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(buf.String()); got != `{"stats":[]}` {
		t.Errorf("empty store: %s", got)
	}
}

func TestWritePrometheus(t *testing.T) {
	s := testStore()
	// A kind conflict and a histogram suffix collision must not make the
	// output invalid.
	s.Scope("x.", "x_").Counter("m").Inc()
	s.Scope("y.", "x_").Gauge("m").Set(5)
	s.Scope("z.", "z_").Histogram("t").Record(1)
	s.Scope("z.", "z_").Counter("t_count").Inc()
	var buf bytes.Buffer
	if err := WritePrometheus(&buf, s); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	fams, err := checkExposition(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	wantFams := map[string]string{
		"envoy_cluster_upstream_rq_total":  "counter",
		"envoy_cluster_upstream_rq_5xx":    "counter",
		"envoy_cluster_upstream_cx_active": "gauge",
		"envoy_cluster_upstream_rq_time":   "histogram",
		"envoy_http_downstream_rq_total":   "counter",
		"envoy_server_live":                "gauge",
		"envoy_x_m":                        "counter",
		"envoy_z_t":                        "histogram",
	}
	if len(fams) != len(wantFams) {
		t.Errorf("families %v, want %v", fams, wantFams)
	}
	for n, typ := range wantFams {
		if fams[n] != typ {
			t.Errorf("family %s: type %q, want %q", n, fams[n], typ)
		}
	}
	for _, line := range []string{
		`envoy_cluster_upstream_rq_total{envoy_cluster_name="api"} 7`,
		`envoy_cluster_upstream_rq_total{envoy_cluster_name="web"} 3`,
		`envoy_cluster_upstream_cx_active{envoy_cluster_name="api"} -2`,
		`envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="a\\b\"c\nd",_9bad_name="` + "\uFFFD" + `"} 1`,
		`envoy_server_live 1`,
		`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="api",le="0.5"} 1`,
		`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="api",le="5"} 3`,
		`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="api",le="3600000"} 6`,
		`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="api",le="+Inf"} 7`,
		`envoy_cluster_upstream_rq_time_count{envoy_cluster_name="api"} 7`,
		`envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="api"} 1000000172.2`,
		`envoy_cluster_upstream_rq_time_count{envoy_cluster_name="web"} 0`,
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("missing line %s", line)
		}
	}
	if strings.Count(out, "# TYPE envoy_cluster_upstream_rq_total ") != 1 {
		t.Error("family split across TYPE lines")
	}
}

func TestWritePrometheusEmpty(t *testing.T) {
	var buf bytes.Buffer
	if err := WritePrometheus(&buf, NewStore()); err != nil || buf.Len() != 0 {
		t.Errorf("empty store: %q, %v", buf.String(), err)
	}
}

func TestCheckExpositionRejects(t *testing.T) {
	bad := []string{
		"# TYPE a counter\na 1\n# TYPE a counter\n",
		"a 1\n# TYPE a counter\n",
		"# TYPE a counter\na 1\n# TYPE b counter\nb 1\na{x=\"1\"} 2\n",
		"# TYPE a counter\na{x=\"1\"} 1\na{x=\"1\"} 2\n",
		"# TYPE a counter\na{x=\"\\q\"} 1\n",
		"# TYPE a counter\na{x=\"1} 1\n",
		"# TYPE a counter\na one\n",
		"# TYPE a counter\na 1",
		"# TYPE 1a counter\n",
		"# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
		"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
		"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
	}
	for _, in := range bad {
		if _, err := checkExposition(in); err == nil {
			t.Errorf("accepted %q", in)
		}
	}
}

// checkExposition is a strict checker of the Prometheus text format 0.0.4:
// it returns the families and their types, or the first violation.
func checkExposition(in string) (map[string]string, error) {
	if in != "" && !strings.HasSuffix(in, "\n") {
		return nil, fmt.Errorf("output does not end with a newline")
	}
	metricName := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelName := regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	types := map[string]string{}
	done := map[string]bool{} // families whose samples have ended
	series := map[string]bool{}
	type hist struct {
		les      []float64
		counts   []float64
		sum, cnt *float64
	}
	hists := map[string]*hist{}
	cur := ""
	for n, line := range strings.Split(strings.TrimSuffix(in, "\n"), "\n") {
		fail := func(format string, args ...any) (map[string]string, error) {
			return nil, fmt.Errorf("line %d %q: %s", n+1, line, fmt.Sprintf(format, args...))
		}
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[1] == "TYPE" {
				if len(f) != 4 || !metricName.MatchString(f[2]) {
					return fail("bad TYPE line")
				}
				switch f[3] {
				case "counter", "gauge", "histogram", "summary", "untyped":
				default:
					return fail("bad type")
				}
				if _, dup := types[f[2]]; dup || done[f[2]] || cur == f[2] {
					return fail("second TYPE for %s or TYPE after its samples", f[2])
				}
				if cur != "" {
					done[cur] = true
				}
				types[f[2]], cur = f[3], f[2]
			}
			continue
		}
		// name{labels} value
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			return fail("no value")
		}
		name := line[:i]
		if !metricName.MatchString(name) {
			return fail("bad metric name")
		}
		rest := line[i:]
		var labels [][2]string
		if rest[0] == '{' {
			rest = rest[1:]
			for {
				if strings.HasPrefix(rest, "}") {
					rest = rest[1:]
					break
				}
				eq := strings.IndexByte(rest, '=')
				if eq < 0 || !labelName.MatchString(rest[:eq]) || len(rest) < eq+2 || rest[eq+1] != '"' {
					return fail("bad label")
				}
				ln := rest[:eq]
				rest = rest[eq+2:]
				var v strings.Builder
				closed := false
				for len(rest) > 0 && !closed {
					c := rest[0]
					rest = rest[1:]
					switch c {
					case '"':
						closed = true
					case '\n':
						return fail("raw newline in label value")
					case '\\':
						if len(rest) == 0 {
							return fail("dangling escape")
						}
						switch rest[0] {
						case '\\':
							v.WriteByte('\\')
						case '"':
							v.WriteByte('"')
						case 'n':
							v.WriteByte('\n')
						default:
							return fail("bad escape \\%c", rest[0])
						}
						rest = rest[1:]
					default:
						v.WriteByte(c)
					}
				}
				if !closed {
					return fail("unterminated label value")
				}
				for _, l := range labels {
					if l[0] == ln {
						return fail("repeated label %s", ln)
					}
				}
				labels = append(labels, [2]string{ln, v.String()})
				if strings.HasPrefix(rest, ",") {
					rest = rest[1:]
				} else if !strings.HasPrefix(rest, "}") {
					return fail("expected , or }")
				}
			}
		}
		if !strings.HasPrefix(rest, " ") {
			return fail("expected a space before the value")
		}
		fields := strings.Fields(rest)
		if len(fields) < 1 || len(fields) > 2 {
			return fail("expected value [timestamp]")
		}
		val, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return fail("bad value")
		}
		// Which family?
		fam, suffix := name, ""
		if types[name] == "" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, s); ok && types[b] == "histogram" {
					fam, suffix = b, s
				}
			}
		}
		if types[fam] == "" {
			return fail("sample without TYPE")
		}
		if fam != cur {
			return fail("samples of %s are not contiguous", fam)
		}
		if types[fam] == "histogram" && suffix == "" {
			return fail("histogram sample without suffix")
		}
		var key, seriesKey strings.Builder
		seriesKey.WriteString(name)
		key.WriteString(fam)
		le := ""
		hasLE := false
		for _, l := range labels {
			fmt.Fprintf(&seriesKey, "|%s=%q", l[0], l[1])
			if l[0] == "le" && suffix == "_bucket" {
				le, hasLE = l[1], true
				continue
			}
			fmt.Fprintf(&key, "|%s=%q", l[0], l[1])
		}
		if series[seriesKey.String()] {
			return fail("duplicate series")
		}
		series[seriesKey.String()] = true
		if types[fam] == "counter" && (val < 0 || math.IsNaN(val)) {
			return fail("negative counter")
		}
		if types[fam] != "histogram" {
			continue
		}
		h := hists[key.String()]
		if h == nil {
			h = &hist{}
			hists[key.String()] = h
		}
		switch suffix {
		case "_bucket":
			if !hasLE {
				return fail("bucket without le")
			}
			b, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return fail("bad le")
			}
			if k := len(h.les); k > 0 && (b <= h.les[k-1] || val < h.counts[k-1]) {
				return fail("buckets not increasing or not cumulative")
			}
			h.les, h.counts = append(h.les, b), append(h.counts, val)
		case "_sum":
			h.sum = &val
		case "_count":
			h.cnt = &val
		}
	}
	for k, h := range hists {
		n := len(h.les)
		switch {
		case n == 0 || !math.IsInf(h.les[n-1], 1):
			return nil, fmt.Errorf("histogram %s: no +Inf bucket", k)
		case h.sum == nil || h.cnt == nil:
			return nil, fmt.Errorf("histogram %s: no _sum or _count", k)
		case *h.cnt != h.counts[n-1]:
			return nil, fmt.Errorf("histogram %s: +Inf bucket %v != count %v", k, h.counts[n-1], *h.cnt)
		}
	}
	// Families must be sorted, as WritePrometheus promises.
	var order []string
	for _, line := range strings.Split(in, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[1] == "TYPE" {
			order = append(order, f[2])
		}
	}
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			return nil, fmt.Errorf("families not sorted: %s before %s", order[i-1], order[i])
		}
	}
	return types, nil
}
