package xds

import (
	"fmt"
	"net/netip"

	"github.com/sluice-proxy/sluice/engine/config"
)

// CheckSnapshot checks what no single resource can: listener and cluster
// names are unique, no two listeners bind the same address, and, when
// allClustersKnown (no clusters come from CDS later), every cluster that a
// route table of the snapshot refers to exists. An HCM that names an RDS
// route table is not checked here: its table arrives later.
func CheckSnapshot(s *config.Snapshot, allClustersKnown bool) error {
	return prefixed(checkSnapshot(s, allClustersKnown))
}

func checkSnapshot(s *config.Snapshot, allClustersKnown bool) error {
	names := map[string]bool{}
	addrs := map[string]string{}
	for _, l := range s.Listeners {
		// Envoy names unnamed static listeners itself.
		if l.Name != "" && names[l.Name] {
			return fmt.Errorf("duplicate listener name %q", l.Name)
		}
		names[l.Name] = true
		a := l.Address
		if ap, err := netip.ParseAddrPort(a); err == nil {
			a = ap.String()
		}
		if other, dup := addrs[a]; dup {
			return blame(inNamed(fmt.Errorf("address %s is already used by listener %q", l.Address, other), "listener", l.Name), tListener, l.Name)
		}
		addrs[a] = l.Name
	}
	clusters := map[string]bool{}
	for _, c := range s.Clusters {
		if clusters[c.Name] {
			return fmt.Errorf("duplicate cluster name %q", c.Name)
		}
		clusters[c.Name] = true
	}
	routeNames := map[string]bool{}
	for _, rc := range s.RouteConfigs {
		if routeNames[rc.Name] {
			return fmt.Errorf("duplicate route configuration name %q", rc.Name)
		}
		routeNames[rc.Name] = true
	}
	if !allClustersKnown {
		return nil
	}
	for _, l := range s.Listeners {
		for i, fc := range l.FilterChains {
			if err := checkHCMClusters(fc, clusters); err != nil {
				return inNamed(inIndex(err, "filter_chains", i), "listener", l.Name)
			}
		}
		if err := checkHCMClusters(l.DefaultFilterChain, clusters); err != nil {
			return inNamed(inField(err, "default_filter_chain"), "listener", l.Name)
		}
	}
	for _, rc := range s.RouteConfigs {
		if err := checkRouteClusters(rc, clusters); err != nil {
			return inNamed(err, "route_config", rc.Name)
		}
	}
	return nil
}

func checkHCMClusters(fc *config.FilterChain, clusters map[string]bool) error {
	if err := checkTCPProxyClusters(fc, clusters); err != nil {
		return err
	}
	if fc == nil || fc.HTTP == nil || fc.HTTP.RouteConfig == nil {
		return nil
	}
	err := checkRouteClusters(fc.HTTP.RouteConfig, clusters)
	return at(inField(err, "route_config"), segFieldEnd, "filters[0] (envoy.filters.network.http_connection_manager)")
}

// checkRouteClusters checks that every cluster a route table names exists.
// cluster_header routes name theirs at request time.
func checkRouteClusters(rc *config.RouteConfiguration, clusters map[string]bool) error {
	for _, vh := range rc.VirtualHosts {
		for i, r := range vh.Routes {
			if err := checkActionClusters(r.Action, clusters); err != nil {
				return inNamed(inElem(err, "routes", i, "route", r.Name), "virtual_host", vh.Name)
			}
		}
	}
	return nil
}

func checkActionClusters(a *config.RouteAction, clusters map[string]bool) error {
	if a == nil {
		return nil
	}
	if a.Cluster != "" && !clusters[a.Cluster] {
		return fmt.Errorf("unknown cluster %q", a.Cluster)
	}
	for _, wc := range a.WeightedClusters {
		if !clusters[wc.Name] {
			return fmt.Errorf("unknown weighted cluster %q", wc.Name)
		}
	}
	for _, m := range a.MirrorPolicy {
		if !clusters[m.Cluster] {
			return fmt.Errorf("unknown mirror cluster %q", m.Cluster)
		}
	}
	return nil
}
