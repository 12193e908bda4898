// Package observe holds Sluice's statistics (counters, gauges, latency
// histograms) with Envoy's stat names, their text and Prometheus renderings,
// and the access log. Metrics are created at config time and updated on the
// hot path with single atomic operations.
package observe

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
)

// Label is one Prometheus label.
type Label struct {
	Name  string
	Value string
}

// Counter only goes up.
type Counter struct {
	v    atomic.Uint64
	meta meta
}

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Value returns the current count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// Gauge goes up and down.
type Gauge struct {
	v    atomic.Int64
	set  atomic.Bool // Set was called: a gauge set to 0 is "used" (Envoy's usedonly)
	meta meta
}

// Inc adds one.
func (g *Gauge) Inc() { g.v.Add(1) }

// Dec subtracts one.
func (g *Gauge) Dec() { g.v.Add(-1) }

// Add adds n (which may be negative).
func (g *Gauge) Add(n int64) { g.v.Add(n) }

// Set sets the value.
func (g *Gauge) Set(n int64) {
	g.v.Store(n)
	if !g.set.Load() {
		g.set.Store(true)
	}
}

// Value returns the current value.
func (g *Gauge) Value() int64 { return g.v.Load() }

// HistogramBuckets are Envoy's default bucket bounds, in milliseconds.
var HistogramBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// Histogram records durations in milliseconds into fixed buckets.
type Histogram struct {
	buckets []atomic.Uint64 // len(HistogramBuckets)+1, last is +Inf
	count   atomic.Uint64
	sumBits atomic.Uint64 // float64 sum, updated with CAS
	meta    meta
}

// Record adds one observation in milliseconds.
func (h *Histogram) Record(ms float64) {
	i := sort.SearchFloat64s(HistogramBuckets, ms)
	h.buckets[i].Add(1)
	h.count.Add(1)
	for {
		old := h.sumBits.Load()
		if h.sumBits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+ms)) {
			return
		}
	}
}

// Count returns how many observations were recorded.
func (h *Histogram) Count() uint64 { return h.count.Load() }

// Sum returns the sum of observations in milliseconds.
func (h *Histogram) Sum() float64 { return math.Float64frombits(h.sumBits.Load()) }

// Snapshot returns per-bucket (not cumulative) counts; the last is +Inf.
func (h *Histogram) Snapshot() []uint64 {
	out := make([]uint64, len(h.buckets))
	for i := range h.buckets {
		out[i] = h.buckets[i].Load()
	}
	return out
}

// Quantile estimates quantile q (0..1) from the buckets, in milliseconds.
func (h *Histogram) Quantile(q float64) float64 {
	counts := h.Snapshot()
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var seen float64
	for i, c := range counts {
		if seen+float64(c) >= rank && c > 0 {
			lo := 0.0
			if i > 0 {
				lo = HistogramBuckets[i-1]
			}
			if i == len(HistogramBuckets) {
				return lo
			}
			hi := HistogramBuckets[i]
			return lo + (hi-lo)*(rank-seen)/float64(c)
		}
		seen += float64(c)
	}
	return HistogramBuckets[len(HistogramBuckets)-1]
}

// meta names a metric: Name is Envoy's dotted stat name
// ("cluster.api.upstream_rq_total"); PromName and Labels are its Prometheus
// form ("envoy_cluster_upstream_rq_total{envoy_cluster_name="api"}").
type meta struct {
	Name     string
	PromName string
	Labels   []Label
}

// Kind of a metric.
type Kind int

const (
	KindCounter Kind = iota
	KindGauge
	KindHistogram
)

// Store owns every metric of the process. Metrics survive config swaps:
// asking twice for the same name returns the same metric, so counters keep
// counting across reloads.
type Store struct {
	mu         sync.RWMutex
	counters   map[string]*Counter
	gauges     map[string]*Gauge
	histograms map[string]*Histogram
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{counters: map[string]*Counter{}, gauges: map[string]*Gauge{}, histograms: map[string]*Histogram{}}
}

// OrDetached returns st, or when st is nil a store nothing renders (one
// for the whole process): where a filter is compiled without the server's
// store (tests, `sluice validate`), its counters still have a home.
func OrDetached(st *Store) *Store {
	if st != nil {
		return st
	}
	detachedOnce.Do(func() { detached = NewStore() })
	return detached
}

var (
	detachedOnce sync.Once
	detached     *Store
)

// Scope makes metric names under a prefix. The text name is
// prefix + name; the Prometheus name is "envoy_" + promPrefix + name with
// the scope's labels.
type Scope struct {
	store      *Store
	prefix     string
	promPrefix string
	labels     []Label
	custom     bool   // a custom namespace: Prometheus names carry no "envoy_"
	suffix     string // ends text names (LabeledScope)
}

// Scope returns a scope. For example Scope("cluster.api.", "cluster_",
// Label{"envoy_cluster_name", "api"}).
func (s *Store) Scope(prefix, promPrefix string, labels ...Label) *Scope {
	return &Scope{store: s, prefix: prefix, promPrefix: promPrefix, labels: labels}
}

// CustomScope is a scope for a custom stat namespace, as Envoy's
// "wasmcustom.": text names are prefix + name, Prometheus names are just
// the (sanitised) name, with no "envoy_" and no namespace — how Envoy
// exports the metrics Wasm plugins define.
func (s *Store) CustomScope(prefix string) *Scope {
	return &Scope{store: s, prefix: prefix, custom: true}
}

// LabeledScope is CustomScope for one series of labelled metric families
// (Istio's istio_requests_total{reporter="source",...}): text names are
// prefix + name + suffix, so the suffix must tell the series apart;
// Prometheus names are the (sanitised) name alone, with labels.
func (s *Store) LabeledScope(prefix, suffix string, labels ...Label) *Scope {
	return &Scope{store: s, prefix: prefix, suffix: suffix, labels: labels, custom: true}
}

func (sc *Scope) meta(name string) meta {
	if sc.custom {
		return meta{Name: sc.prefix + name + sc.suffix, PromName: promSanitize(name), Labels: sc.labels}
	}
	return meta{Name: sc.prefix + name, PromName: "envoy_" + sc.promPrefix + promSanitize(name), Labels: sc.labels}
}

// Counter returns the scope's counter name, creating it once.
func (sc *Scope) Counter(name string) *Counter {
	m := sc.meta(name)
	s := sc.store
	s.mu.RLock()
	c := s.counters[m.Name]
	s.mu.RUnlock()
	if c != nil {
		return c
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c = s.counters[m.Name]; c == nil {
		c = &Counter{meta: m}
		s.counters[m.Name] = c
	}
	return c
}

// Gauge returns the scope's gauge name, creating it once.
func (sc *Scope) Gauge(name string) *Gauge {
	m := sc.meta(name)
	s := sc.store
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.gauges[m.Name]
	if g == nil {
		g = &Gauge{meta: m}
		s.gauges[m.Name] = g
	}
	return g
}

// Histogram returns the scope's histogram name, creating it once.
func (sc *Scope) Histogram(name string) *Histogram {
	m := sc.meta(name)
	s := sc.store
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.histograms[m.Name]
	if h == nil {
		h = &Histogram{buckets: make([]atomic.Uint64, len(HistogramBuckets)+1), meta: m}
		s.histograms[m.Name] = h
	}
	return h
}

// Metric is a read-only view of one metric for rendering.
type Metric struct {
	Kind      Kind
	Name      string
	PromName  string
	Labels    []Label
	Value     float64 // counters and gauges
	Histogram *Histogram
	// Set marks a gauge given a value with Set (used even at 0).
	Set bool
}

// Metrics returns every metric sorted by text name.
func (s *Store) Metrics() []Metric {
	s.mu.RLock()
	out := make([]Metric, 0, len(s.counters)+len(s.gauges)+len(s.histograms))
	for _, c := range s.counters {
		out = append(out, Metric{Kind: KindCounter, Name: c.meta.Name, PromName: c.meta.PromName, Labels: c.meta.Labels, Value: float64(c.Value())})
	}
	for _, g := range s.gauges {
		out = append(out, Metric{Kind: KindGauge, Name: g.meta.Name, PromName: g.meta.PromName, Labels: g.meta.Labels, Value: float64(g.Value()), Set: g.set.Load()})
	}
	for _, h := range s.histograms {
		out = append(out, Metric{Kind: KindHistogram, Name: h.meta.Name, PromName: h.meta.PromName, Labels: h.meta.Labels, Histogram: h})
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// promSanitize maps a stat name to Prometheus' [a-zA-Z0-9_] alphabet.
func promSanitize(s string) string {
	ok := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if !(c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}
