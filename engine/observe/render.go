package observe

import (
	"encoding/json"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Renderings of a Store for the admin server: Envoy's /stats text and JSON
// forms and the Prometheus text exposition format (version 0.0.4). They run
// on the admin path, never on the request path, so they favour clarity over
// avoiding allocations, but they stream their output in chunks so a large
// store does not become one large buffer.

// flushAt is the size at which a renderer hands its buffer to the writer.
const flushAt = 32 << 10

// quantiles are the quantiles Envoy reports for histograms, with their labels.
var quantiles = [...]struct {
	q     float64
	label string
}{
	{0, "P0"}, {0.25, "P25"}, {0.5, "P50"}, {0.75, "P75"}, {0.9, "P90"},
	{0.95, "P95"}, {0.99, "P99"}, {0.995, "P99.5"}, {0.999, "P99.9"}, {1, "P100"},
}

// chunkWriter accumulates output and writes it in chunks, remembering the
// first error so callers can check once at the end.
type chunkWriter struct {
	w   io.Writer
	buf []byte
	err error
}

func (c *chunkWriter) maybeFlush() {
	if len(c.buf) >= flushAt {
		c.flush()
	}
}

func (c *chunkWriter) flush() error {
	if c.err == nil && len(c.buf) > 0 {
		_, c.err = c.w.Write(c.buf)
	}
	c.buf = c.buf[:0]
	return c.err
}

// selected reports whether a metric passes the /stats filter and usedonly.
func selected(m *Metric, filter *regexp.Regexp, usedOnly bool) bool {
	if filter != nil && !filter.MatchString(m.Name) {
		return false
	}
	return !usedOnly || used(m)
}

// used approximates Envoy's "used" flag (written at least once): a metric
// counts as used when it is non-zero or, for a gauge, was Set (Istio's
// readiness check reads `server.state: 0` through ?usedonly). Counters and
// Inc/Dec gauges keep no such bit: it would cost the request path.
func used(m *Metric) bool {
	if m.Kind == KindHistogram {
		return m.Histogram.Count() > 0
	}
	return m.Value != 0 || m.Set
}

// appendValue formats a counter or gauge value as an integer, as Envoy does.
func appendValue(b []byte, m *Metric) []byte {
	if m.Kind == KindGauge {
		return strconv.AppendInt(b, int64(m.Value), 10)
	}
	return strconv.AppendUint(b, uint64(m.Value), 10)
}

// appendFloat formats like fmt's "{}" for doubles: fixed notation for
// ordinary magnitudes, exponent notation for very large or small ones.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	if a := math.Abs(v); a == 0 || (a >= 1e-4 && a < 1e16) {
		return strconv.AppendFloat(b, v, 'f', -1, 64)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// WriteText writes the store in Envoy's /stats text format: one
// "name: value" line per counter and gauge, sorted by name, then one line
// per histogram with its quantiles. filter (may be nil) keeps the metrics
// whose name it matches anywhere; usedOnly drops metrics never written.
//
// Histogram lines have Envoy's shape "P50(interval,cumulative)". The store
// keeps no per-flush interval, so the interval value is always "nan".
func WriteText(w io.Writer, s *Store, filter *regexp.Regexp, usedOnly bool) error {
	metrics := s.Metrics()
	cw := &chunkWriter{w: w, buf: make([]byte, 0, 4096)}
	for i := range metrics {
		m := &metrics[i]
		if m.Kind == KindHistogram || !selected(m, filter, usedOnly) {
			continue
		}
		cw.buf = append(cw.buf, m.Name...)
		cw.buf = append(cw.buf, ": "...)
		cw.buf = appendValue(cw.buf, m)
		cw.buf = append(cw.buf, '\n')
		cw.maybeFlush()
	}
	for i := range metrics {
		m := &metrics[i]
		if m.Kind != KindHistogram || !selected(m, filter, usedOnly) {
			continue
		}
		cw.buf = append(cw.buf, m.Name...)
		cw.buf = append(cw.buf, ": "...)
		if m.Histogram.Count() == 0 {
			cw.buf = append(cw.buf, "No recorded values"...)
		} else {
			for j, q := range quantiles {
				if j > 0 {
					cw.buf = append(cw.buf, ' ')
				}
				cw.buf = append(cw.buf, q.label...)
				cw.buf = append(cw.buf, "(nan,"...)
				cw.buf = appendFloat(cw.buf, m.Histogram.Quantile(q.q))
				cw.buf = append(cw.buf, ')')
			}
		}
		cw.buf = append(cw.buf, '\n')
		cw.maybeFlush()
	}
	return cw.flush()
}

// WriteJSON writes the store in Envoy's /stats?format=json shape:
//
//	{"stats":[{"name":"a","value":1},...,
//	  {"histograms":{"supported_quantiles":[0,25,...],
//	    "computed_quantiles":[{"name":"h","values":[{"interval":null,"cumulative":1.5},...]}]}}]}
//
// filter and usedOnly work as in WriteText. Interval values are always null
// (see WriteText).
func WriteJSON(w io.Writer, s *Store, filter *regexp.Regexp, usedOnly bool) error {
	type value struct {
		Interval   *float64 `json:"interval"`
		Cumulative *float64 `json:"cumulative"`
	}
	type computed struct {
		Name   string  `json:"name"`
		Values []value `json:"values"`
	}
	type histograms struct {
		Supported []float64  `json:"supported_quantiles"`
		Computed  []computed `json:"computed_quantiles"`
	}
	type stat struct {
		Name  string      `json:"name"`
		Value json.Number `json:"value"`
	}
	out := struct {
		Stats []any `json:"stats"`
	}{Stats: []any{}}
	hs := histograms{}
	var num []byte
	for _, m := range s.Metrics() {
		if !selected(&m, filter, usedOnly) {
			continue
		}
		if m.Kind != KindHistogram {
			num = appendValue(num[:0], &m)
			out.Stats = append(out.Stats, stat{Name: m.Name, Value: json.Number(num)})
			continue
		}
		c := computed{Name: m.Name, Values: make([]value, len(quantiles))}
		if m.Histogram.Count() > 0 {
			for i, q := range quantiles {
				v := m.Histogram.Quantile(q.q)
				c.Values[i].Cumulative = &v
			}
		}
		hs.Computed = append(hs.Computed, c)
	}
	if len(hs.Computed) > 0 {
		for _, q := range quantiles {
			hs.Supported = append(hs.Supported, q.q*100)
		}
		out.Stats = append(out.Stats, struct {
			Histograms histograms `json:"histograms"`
		}{hs})
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(out)
}

// promFamily is one Prometheus metric family: every metric sharing a name.
type promFamily struct {
	name    string
	kind    Kind
	metrics []promSeries
}

type promSeries struct {
	labels string // rendered label pairs without braces, sorted as given
	m      Metric
}

// WritePrometheus writes every metric of the store in the Prometheus text
// exposition format 0.0.4. Metrics sharing a Prometheus name form one family
// with a single "# TYPE" line; families are sorted by name and series within
// a family by their labels. Histograms are rendered with cumulative
// "_bucket" series (bounds in milliseconds, ending with le="+Inf"), "_sum"
// and "_count", taken from one snapshot so "+Inf" always equals "_count".
//
// Series that would make the exposition invalid are left out: a metric whose
// Prometheus name already names a family of another kind, a series whose name
// and labels duplicate an earlier one, and a counter or gauge whose name
// collides with a histogram's _bucket, _sum or _count series.
func WritePrometheus(w io.Writer, s *Store) error {
	fams := map[string]*promFamily{}
	histNames := map[string]bool{}
	var lb []byte
	for _, m := range s.Metrics() {
		name := promName(m.PromName)
		f := fams[name]
		if f == nil {
			f = &promFamily{name: name, kind: m.Kind}
			fams[name] = f
			if m.Kind == KindHistogram {
				histNames[name+"_bucket"] = true
				histNames[name+"_sum"] = true
				histNames[name+"_count"] = true
			}
		}
		if f.kind != m.Kind {
			continue
		}
		lb = appendLabels(lb[:0], m.Labels)
		f.metrics = append(f.metrics, promSeries{labels: string(lb), m: m})
	}
	names := make([]string, 0, len(fams))
	for n, f := range fams {
		if f.kind != KindHistogram && histNames[n] {
			continue
		}
		names = append(names, n)
	}
	sort.Strings(names)

	cw := &chunkWriter{w: w, buf: make([]byte, 0, 4096)}
	for _, n := range names {
		f := fams[n]
		sort.SliceStable(f.metrics, func(i, j int) bool { return f.metrics[i].labels < f.metrics[j].labels })
		cw.buf = append(cw.buf, "# TYPE "...)
		cw.buf = append(cw.buf, n...)
		switch f.kind {
		case KindCounter:
			cw.buf = append(cw.buf, " counter\n"...)
		case KindGauge:
			cw.buf = append(cw.buf, " gauge\n"...)
		default:
			cw.buf = append(cw.buf, " histogram\n"...)
		}
		for i := range f.metrics {
			sr := &f.metrics[i]
			if i > 0 && sr.labels == f.metrics[i-1].labels {
				continue // duplicate series
			}
			if f.kind != KindHistogram {
				cw.buf = appendSample(cw.buf, n, "", sr.labels, "", nil)
				cw.buf = appendValue(cw.buf, &sr.m)
				cw.buf = append(cw.buf, '\n')
				cw.maybeFlush()
				continue
			}
			h := sr.m.Histogram
			snap := h.Snapshot()
			var cum uint64
			for b, c := range snap {
				cum += c
				var le []byte
				if b < len(HistogramBuckets) {
					le = appendFloat(lb[:0], HistogramBuckets[b])
				} else {
					le = append(lb[:0], "+Inf"...)
				}
				lb = le
				cw.buf = appendSample(cw.buf, n, "_bucket", sr.labels, "le", le)
				cw.buf = strconv.AppendUint(cw.buf, cum, 10)
				cw.buf = append(cw.buf, '\n')
			}
			cw.buf = appendSample(cw.buf, n, "_sum", sr.labels, "", nil)
			cw.buf = appendFloat(cw.buf, h.Sum())
			cw.buf = append(cw.buf, '\n')
			cw.buf = appendSample(cw.buf, n, "_count", sr.labels, "", nil)
			cw.buf = strconv.AppendUint(cw.buf, cum, 10)
			cw.buf = append(cw.buf, '\n')
			cw.maybeFlush()
		}
	}
	return cw.flush()
}

// appendSample writes `name+suffix{labels,extra="v"} ` (braces only when
// there are labels).
func appendSample(b []byte, name, suffix, labels, extra string, extraValue []byte) []byte {
	b = append(b, name...)
	b = append(b, suffix...)
	if labels != "" || extra != "" {
		b = append(b, '{')
		b = append(b, labels...)
		if extra != "" {
			if labels != "" {
				b = append(b, ',')
			}
			b = append(b, extra...)
			b = append(b, `="`...)
			b = append(b, extraValue...)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	return append(b, ' ')
}

// appendLabels renders name="value" pairs separated by commas, with label
// names made valid and values escaped as the format requires.
func appendLabels(b []byte, labels []Label) []byte {
	for i, l := range labels {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendLabelName(b, l.Name)
		b = append(b, `="`...)
		b = appendLabelValue(b, l.Value)
		b = append(b, '"')
	}
	return b
}

func isNameChar(c byte, first bool) bool {
	return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || !first && '0' <= c && c <= '9'
}

// appendLabelName maps a label name onto [a-zA-Z_][a-zA-Z0-9_]*.
func appendLabelName(b []byte, n string) []byte {
	if n == "" {
		return append(b, '_')
	}
	if !isNameChar(n[0], true) && isNameChar(n[0], false) {
		b = append(b, '_')
	}
	for i := 0; i < len(n); i++ {
		if isNameChar(n[i], false) {
			b = append(b, n[i])
		} else {
			b = append(b, '_')
		}
	}
	return b
}

// promName makes a metric name valid ([a-zA-Z_:][a-zA-Z0-9_:]*). Names made
// by Scope are valid already; this guards names built elsewhere.
func promName(n string) string {
	ok := n != ""
	for i := 0; ok && i < len(n); i++ {
		ok = isNameChar(n[i], i == 0) || n[i] == ':'
	}
	if ok {
		return n
	}
	var b []byte
	if n == "" || !isNameChar(n[0], true) && n[0] != ':' && isNameChar(n[0], false) {
		b = append(b, '_')
	}
	for i := 0; i < len(n); i++ {
		if isNameChar(n[i], false) || n[i] == ':' {
			b = append(b, n[i])
		} else {
			b = append(b, '_')
		}
	}
	return string(b)
}

// appendLabelValue escapes \, " and newline, and replaces invalid UTF-8.
func appendLabelValue(b []byte, v string) []byte {
	if !utf8.ValidString(v) {
		v = strings.ToValidUTF8(v, "\uFFFD")
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, c)
		}
	}
	return b
}
