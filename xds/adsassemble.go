package xds

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

// The engine applies whole snapshots, so after every accepted response the
// client assembles one from scratch: the static resources and the dynamic
// ones, each translated by the same functions as a bootstrap, so an error
// names the resource and the field. Translating everything each time costs
// little next to the engine compiling the whole graph, and it means no
// stale translation can survive a change of something it depends on.
//
// Warming follows Envoy. A listener or cluster that waits for something
// (see deps) is left out of the snapshot; if an earlier version of it was
// in the last snapshot, that version is kept (translated again against the
// current resources) until the new one is complete, so an update never
// takes a listener down. What a resource may do without once its initial
// fetch timeout (15 s by default) has passed:
//   - a route table: the listener serves an empty table, so 404s;
//   - a load assignment: the cluster has no endpoints, so 503s;
//   - an ECDS filter config with default_config: the default.
//
// Secrets and ECDS configs without a default are waited for however long
// it takes: a TLS listener cannot serve without its certificate, and a
// filter cannot run without its config (Envoy would fail those requests;
// Sluice keeps the listener out instead, or keeps its previous version).

// assembler builds snapshots from the static resources of a bootstrap and
// a store of dynamic ones.
type assembler struct {
	listeners []*listenerv3.Listener
	clusters  []*clusterv3.Cluster
	secrets   map[string]*tlsv3.Secret
	admin     *config.Admin
	// node is the bootstrap's node, for Istio's filters.
	node *config.Node
	// dynamicClusters: clusters come from CDS, so a route may name one
	// that has not arrived (Snapshot.DynamicClusters: 503 at request time).
	dynamicClusters bool
	source          string
}

// built is a listener or cluster in a snapshot, with the proto it came
// from and the names it refers to.
type built struct {
	msg      any // *listenerv3.Listener or *clusterv3.Cluster
	listener *config.Listener
	cluster  *config.Cluster
	refs     [numTypes]map[string]bool
}

// assembly is an assembled snapshot and what the client learns from it.
type assembly struct {
	snap *config.Snapshot
	// subs are the names to subscribe to, by type (wildcard types: none).
	subs      [numTypes]map[string]bool
	listeners map[string]*built
	clusters  map[string]*built
	// warming says what waits for what, for logs and State.
	warming []string
	// deadline is the earliest initial fetch timeout that would change
	// the snapshot when it passes; zero: none.
	deadline time.Time
	// sdsSources are the SDS servers other than the ADS stream that the
	// snapshot's secrets come from, by key; secretSource maps the names
	// of their secrets to the key (names absent come over ADS).
	sdsSources   map[string]*sdsSource
	secretSource map[string]string
}

func (a *assembly) ref(refs *[numTypes]map[string]bool) {
	for t, names := range refs {
		for n := range names {
			if a.subs[t] == nil {
				a.subs[t] = map[string]bool{}
			}
			a.subs[t][n] = true
		}
	}
}

func (a *assembly) wait(what string, d *deps) {
	a.warming = append(a.warming, fmt.Sprintf("%s waits for %s", what, strings.Join(d.missing, ", ")))
	if !d.deadline.IsZero() && (a.deadline.IsZero() || d.deadline.Before(a.deadline)) {
		a.deadline = d.deadline
	}
}

// assemble builds the snapshot of v's store; prev is the assembly of the
// snapshot last applied (nil: none).
func (as *assembler) assemble(v *view, prev *assembly) (*assembly, error) {
	out := &assembly{
		snap:      &config.Snapshot{Admin: as.admin, Source: as.source, Version: snapshotVersion(v.st)},
		listeners: map[string]*built{},
		clusters:  map[string]*built{},
	}
	if prev == nil {
		prev = &assembly{}
	}
	// translate translates one listener or cluster and says whether it is
	// complete; refs are recorded either way, so what it waits for is
	// subscribed.
	translate := func(msg any) (*built, *deps, error) {
		d := &deps{view: v, statics: as.secrets, node: as.node}
		b := &built{msg: msg}
		var err error
		switch m := msg.(type) {
		case *listenerv3.Listener:
			b.listener, err = translateListener(m, d)
			err = inNamed(err, "listener", m.GetName())
		case *clusterv3.Cluster:
			b.cluster, err = translateCluster(m, d)
			err = inNamed(err, "cluster", m.GetName())
		}
		if err != nil {
			return nil, nil, err
		}
		b.refs = d.refs
		out.ref(&d.refs)
		for name, key := range d.secretSource {
			if other, ok := out.secretSource[name]; ok && other != key {
				return nil, nil, fmt.Errorf("secret %q is asked of two SDS servers (%s and %s): %w", name, other, key, ErrUnsupported)
			}
			if out.sdsSources == nil {
				out.sdsSources, out.secretSource = map[string]*sdsSource{}, map[string]string{}
			}
			out.secretSource[name] = key
			out.sdsSources[key] = d.sdsSources[key]
		}
		return b, d, nil
	}
	// add translates a resource and includes it, or the last version
	// included, when complete.
	add := func(kind, name string, msg any, included, previous map[string]*built) error {
		b, d, err := translate(msg)
		if err != nil {
			return err
		}
		if b.listener != nil && as.dynamicClusters {
			waitForTCPClusters(b.listener, out.clusters, d)
		}
		if len(d.missing) == 0 {
			included[name] = b
			return nil
		}
		what := fmt.Sprintf("%s %q", kind, name)
		out.wait(what, d)
		p := previous[name]
		if p == nil || p.msg == msg {
			return nil
		}
		// The previous version keeps serving while the new one warms; it
		// is translated again so it sees the current resources it names.
		b, d, err = translate(p.msg)
		if err != nil {
			return fmt.Errorf("previous version of %s: %w", what, err)
		}
		if b.listener != nil && as.dynamicClusters {
			waitForTCPClusters(b.listener, out.clusters, d)
		}
		if len(d.missing) == 0 {
			included[name] = b
		}
		return nil
	}

	for i, c := range as.clusters {
		if err := add("cluster", c.GetName(), c, out.clusters, prev.clusters); err != nil {
			return nil, inIndex(err, "static_resources.clusters", i)
		}
	}
	for _, name := range v.st.names(tCluster) {
		if slices.ContainsFunc(as.clusters, func(c *clusterv3.Cluster) bool { return c.GetName() == name }) {
			return nil, inNamed(fmt.Errorf("a static cluster has this name"), "cluster", name)
		}
		if err := add("cluster", name, v.st.get(tCluster, name).msg, out.clusters, prev.clusters); err != nil {
			return nil, blame(err, tCluster, name)
		}
	}
	for i, l := range as.listeners {
		if err := add("listener", listenerName(l), l, out.listeners, prev.listeners); err != nil {
			return nil, inIndex(err, "static_resources.listeners", i)
		}
	}
	for _, name := range v.st.names(tListener) {
		if slices.ContainsFunc(as.listeners, func(l *listenerv3.Listener) bool { return listenerName(l) == name }) {
			return nil, inNamed(fmt.Errorf("a static listener has this name"), "listener", name)
		}
		if err := add("listener", name, v.st.get(tListener, name).msg, out.listeners, prev.listeners); err != nil {
			return nil, blame(err, tListener, name)
		}
	}

	// Static resources first, in bootstrap order, then dynamic ones by
	// name.
	s := out.snap
	for _, c := range as.clusters {
		if b := out.clusters[c.GetName()]; b != nil {
			s.Clusters = append(s.Clusters, b.cluster)
		}
	}
	for _, name := range v.st.names(tCluster) {
		if b := out.clusters[name]; b != nil {
			s.Clusters = append(s.Clusters, b.cluster)
		}
	}
	routes := map[string]bool{}
	for _, l := range as.listeners {
		if b := out.listeners[listenerName(l)]; b != nil {
			s.Listeners = append(s.Listeners, b.listener)
			maps.Copy(routes, b.refs[tRoute])
		}
	}
	for _, name := range v.st.names(tListener) {
		if b := out.listeners[name]; b != nil {
			s.Listeners = append(s.Listeners, b.listener)
			maps.Copy(routes, b.refs[tRoute])
		}
	}
	for _, name := range slices.Sorted(maps.Keys(routes)) {
		rc := &config.RouteConfiguration{Name: name}
		if e := v.st.get(tRoute, name); e != nil {
			var err error
			if rc, err = translateRouteConfiguration(e.msg.(*routev3.RouteConfiguration)); err != nil {
				return nil, blame(inNamed(err, "route_config", name), tRoute, name)
			}
		}
		// else the listener is past the initial fetch timeout, or a kept
		// version names a table since removed: Envoy's empty table.
		s.RouteConfigs = append(s.RouteConfigs, rc)
	}
	s.DynamicClusters = as.dynamicClusters
	if err := applyIstio(s); err != nil {
		return nil, err
	}
	if err := checkSnapshot(s, !as.dynamicClusters); err != nil {
		return nil, err
	}
	return out, nil
}

// snapshotVersion names the versions a snapshot is built from, in type
// order: "cds:3 eds:7 lds:3 rds:5".
func snapshotVersion(st *store) string {
	var parts []string
	for t := range numTypes {
		if st.received[t] {
			parts = append(parts, typeInfo[t].short+":"+st.version[t])
		}
	}
	return strings.Join(parts, " ")
}

// waitForTCPClusters makes a listener wait for the clusters its TCP
// proxies name that are not in the snapshot yet (from CDS, still warming
// or not sent): the engine compiles a TCP proxy against its clusters.
// Routes do not wait: a missing cluster answers 503 at request time
// (Snapshot.DynamicClusters). Envoy serves such a listener and closes
// its connections; Sluice keeps it (or its previous version) out until
// the cluster arrives.
func waitForTCPClusters(l *config.Listener, clusters map[string]*built, d *deps) {
	chains := l.FilterChains
	if l.DefaultFilterChain != nil {
		chains = append(slices.Clip(chains), l.DefaultFilterChain)
	}
	seen := map[string]bool{}
	need := func(name string) {
		if name != "" && clusters[name] == nil && !seen[name] {
			seen[name] = true
			d.missing = append(d.missing, fmt.Sprintf("cluster %q", name))
		}
	}
	for _, fc := range chains {
		if fc.TCP == nil {
			continue
		}
		need(fc.TCP.Cluster)
		for _, wc := range fc.TCP.WeightedClusters {
			need(wc.Name)
		}
	}
}
