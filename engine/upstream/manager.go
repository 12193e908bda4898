package upstream

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Manager builds cluster Sets and keeps the current one.
type Manager struct {
	stats  *observe.Store
	codecs *stream.Registry
	log    *slog.Logger

	mu        sync.Mutex // serialises Build, Commit and Close
	resolver  Resolver   // for new DNS clusters; nil: net.DefaultResolver
	dnsWarmup time.Duration
	current   atomic.Pointer[Set]
	reapEvery atomic.Int64 // ns
	stop      chan struct{}
	done      chan struct{}
	closed    bool
}

// Set is an immutable collection of clusters by name.
type Set struct {
	byName map[string]*Cluster
	sorted []*Cluster
}

var emptySet = &Set{byName: map[string]*Cluster{}}

// Get returns the named cluster, or nil.
func (s *Set) Get(name string) *Cluster {
	if s == nil {
		return nil
	}
	return s.byName[name]
}

// Clusters returns the clusters sorted by name (a fresh slice).
func (s *Set) Clusters() []*Cluster {
	if s == nil {
		return nil
	}
	return append([]*Cluster(nil), s.sorted...)
}

// Len is the number of clusters.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.sorted)
}

// NewManager returns a manager with an empty current Set. stats and log
// may be nil (a private store, no logging).
func NewManager(stats *observe.Store, codecs *stream.Registry, log *slog.Logger) *Manager {
	if stats == nil {
		stats = observe.NewStore()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{stats: stats, codecs: codecs, log: log, dnsWarmup: DefaultDNSWarmup}
	m.current.Store(emptySet)
	return m
}

// Current returns the committed Set (never nil).
func (m *Manager) Current() *Set { return m.current.Load() }

// Build validates clusters and builds a Set without touching the current
// one. A cluster whose config equals (deeply) the current cluster of the
// same name is carried over as the same *Cluster, pools and all (a DNS
// cluster with its latest answers). The first invalid cluster fails the
// whole Build. A new DNS cluster's names are resolved before Build returns
// (see SetDNSWarmup).
func (m *Manager) Build(clusters []*config.Cluster) (*Set, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.current.Load()
	set := &Set{byName: make(map[string]*Cluster, len(clusters)), sorted: make([]*Cluster, 0, len(clusters))}
	var warm []*Cluster
	for i, cfg := range clusters {
		if cfg == nil {
			return nil, fmt.Errorf("upstream: cluster %d: nil", i)
		}
		if cfg.Name == "" {
			return nil, fmt.Errorf("upstream: cluster %d: empty name", i)
		}
		if _, dup := set.byName[cfg.Name]; dup {
			return nil, fmt.Errorf("upstream: cluster %q: defined twice", cfg.Name)
		}
		old := cur.Get(cfg.Name)
		c := old
		if old == nil || old.retired.Load() || !reflect.DeepEqual(old.cfg, cfg) {
			var err error
			if c, err = m.newCluster(cfg, old); err != nil {
				return nil, config.Blame(err, config.KindCluster, cfg.Name)
			}
			if c.dns != nil {
				warm = append(warm, c)
			}
		}
		set.byName[c.name] = c
		set.sorted = append(set.sorted, c)
	}
	sort.Slice(set.sorted, func(i, j int) bool { return set.sorted[i].name < set.sorted[j].name })
	m.warmDNS(warm)
	return set, nil
}

// Commit makes set current (nil means empty). Clusters of the previous Set
// that set does not carry are retired: their idle connections are closed
// now (or handed to the same address in the cluster replacing them), busy
// ones when released; requests already holding them finish normally.
func (m *Manager) Commit(set *Set) {
	if set == nil {
		set = emptySet
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.current.Swap(set)
	kept, added, removed := 0, 0, 0
	for _, c := range set.sorted {
		if c.retired.Load() {
			c.revive()
		}
	}
	// Retire before activating: a retired DNS cluster's resolver, stopped
	// by then, cannot overwrite its successor's membership gauges.
	for _, c := range old.sorted {
		if set.byName[c.name] == c {
			continue
		}
		c.retire(set.byName[c.name])
		if set.byName[c.name] == nil {
			removed++
		}
	}
	for _, c := range set.sorted {
		if old.byName[c.name] == c {
			kept++
		} else {
			added++
		}
		c.activate(m.closed)
	}
	level := slog.LevelDebug
	if added > 0 || removed > 0 {
		level = slog.LevelInfo
	}
	m.log.Log(context.Background(), level, "upstream: clusters committed", "kept", kept, "new", added, "removed", removed)

	every := 5 * time.Second
	for _, c := range set.sorted {
		if c.idleTimeout > 0 {
			every = min(every, time.Duration(c.idleTimeout)/2)
		}
		if c.od != nil {
			every = min(every, time.Duration(c.od.cleanup)/2)
		}
		if i := c.outlierInterval(); i > 0 {
			every = min(every, i/2)
		}
	}
	m.reapEvery.Store(int64(max(every, 10*time.Millisecond)))
	if m.stop == nil && !m.closed && len(set.sorted) > 0 {
		m.stop, m.done = make(chan struct{}), make(chan struct{})
		go m.reap(m.stop, m.done)
	}
}

// Close stops the idle reaper and retires every cluster, waiting for the
// DNS resolvers of the current ones to stop (their lookups are cancelled).
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	stop, done := m.stop, m.done
	m.stop = nil
	m.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
	cur := m.current.Load()
	m.Commit(nil)
	for _, c := range cur.sorted {
		if c.dns != nil {
			c.dns.wg.Wait()
		}
	}
}

// reap is the one idle-connection reaper of the manager: every interval it
// closes, on each host of the current Set, the idle connections past their
// cluster's idle timeout (a bounded batch per host per pass).
func (m *Manager) reap(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTimer(time.Duration(m.reapEvery.Load()))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := monoNow()
		for _, c := range m.current.Load().sorted {
			for _, h := range c.hs.Load().hosts {
				h.reapIdle(now)
				h.reapMux(now)
			}
			if c.od != nil {
				c.sweepOriginalDst(now)
			}
			c.sweepOutlier(now)
		}
		t.Reset(time.Duration(m.reapEvery.Load()))
	}
}
