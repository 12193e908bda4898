package server

import (
	"fmt"
	"net"
	"strconv"

	"github.com/sluice-proxy/sluice/engine/config"
)

// Validate checks a snapshot's cross-references and addresses. Front-ends
// check their own syntax; this catches what only the whole snapshot shows.
func Validate(snap *config.Snapshot) error {
	if snap == nil {
		return fmt.Errorf("server: empty snapshot")
	}
	clusters := map[string]bool{}
	for i, c := range snap.Clusters {
		if c == nil {
			return fmt.Errorf("server: cluster %d is empty", i)
		}
		if c.Name == "" {
			return fmt.Errorf("server: cluster %d has no name", i)
		}
		if clusters[c.Name] {
			return fmt.Errorf("server: duplicate cluster %q", c.Name)
		}
		clusters[c.Name] = true
	}
	routeClusters := clusters
	if snap.DynamicClusters {
		routeClusters = nil
	}
	tables := map[string]bool{}
	for i, rc := range snap.RouteConfigs {
		if rc == nil {
			return fmt.Errorf("server: route configuration %d is empty", i)
		}
		if tables[rc.Name] {
			return fmt.Errorf("server: duplicate route configuration %q", rc.Name)
		}
		tables[rc.Name] = true
		if err := checkRoutes(rc, routeClusters); err != nil {
			return config.Blame(fmt.Errorf("server: %w", err), config.KindRouteConfig, rc.Name)
		}
	}
	names := map[string]bool{}
	addrs := map[string]string{}
	for i, l := range snap.Listeners {
		if l == nil {
			return fmt.Errorf("server: listener %d is empty", i)
		}
		if l.Name == "" {
			return fmt.Errorf("server: listener %d has no name", i)
		}
		if names[l.Name] {
			return fmt.Errorf("server: duplicate listener %q", l.Name)
		}
		names[l.Name] = true
		if err := checkAddress(l.Address); err != nil {
			return config.Blame(fmt.Errorf("server: listener %q: %w", l.Name, err), config.KindListener, l.Name)
		}
		if other, ok := addrs[l.Address]; ok && !endsWithPortZero(l.Address) {
			return config.Blame(fmt.Errorf("server: listeners %q and %q both use address %s", other, l.Name, l.Address), config.KindListener, l.Name)
		}
		addrs[l.Address] = l.Name
		if len(l.FilterChains) == 0 && l.DefaultFilterChain == nil {
			return config.Blame(fmt.Errorf("server: listener %q has no filter chain", l.Name), config.KindListener, l.Name)
		}
		chains := append([]*config.FilterChain{}, l.FilterChains...)
		if l.DefaultFilterChain != nil {
			chains = append(chains, l.DefaultFilterChain)
		}
		for j, fc := range chains {
			if fc == nil {
				return config.Blame(fmt.Errorf("server: listener %q: filter chain %d is empty", l.Name, j), config.KindListener, l.Name)
			}
			if fc.TCP != nil {
				if err := checkTCPClusters(fc.TCP, clusters); err != nil {
					return config.Blame(fmt.Errorf("server: listener %q: filter chain %d: %w", l.Name, j, err), config.KindListener, l.Name)
				}
			}
			if fc.HTTP == nil {
				continue
			}
			if fc.HTTP.RouteConfig != nil {
				if err := checkRoutes(fc.HTTP.RouteConfig, routeClusters); err != nil {
					return config.Blame(fmt.Errorf("server: listener %q: filter chain %d: %w", l.Name, j, err), config.KindListener, l.Name)
				}
			} else if fc.HTTP.RDSName != "" && !tables[fc.HTTP.RDSName] {
				return config.Blame(fmt.Errorf("server: listener %q: filter chain %d: route configuration %q not found", l.Name, j, fc.HTTP.RDSName), config.KindListener, l.Name)
			}
		}
	}
	if snap.Admin != nil && snap.Admin.Address != "" {
		if err := checkAddress(snap.Admin.Address); err != nil {
			return fmt.Errorf("server: admin: %w", err)
		}
	}
	return nil
}

// checkRoutes checks rc's routes; a nil clusters map accepts any cluster
// name (Snapshot.DynamicClusters).
func checkRoutes(rc *config.RouteConfiguration, clusters map[string]bool) error {
	known := func(name string) bool { return clusters == nil || clusters[name] }
	for k, vh := range rc.VirtualHosts {
		if vh == nil {
			return fmt.Errorf("route configuration %q: virtual host %d is empty", rc.Name, k)
		}
		for i, r := range vh.Routes {
			if r == nil {
				return fmt.Errorf("route configuration %q: virtual host %q: route %d is empty", rc.Name, vh.Name, i)
			}
			if r.Action == nil {
				continue
			}
			name := r.Name
			if name == "" {
				name = "#" + strconv.Itoa(i)
			}
			if c := r.Action.Cluster; c != "" && !known(c) {
				return fmt.Errorf("route configuration %q: virtual host %q: route %s: unknown cluster %q", rc.Name, vh.Name, name, c)
			}
			for _, wc := range r.Action.WeightedClusters {
				if wc == nil {
					return fmt.Errorf("route configuration %q: virtual host %q: route %s: empty weighted cluster", rc.Name, vh.Name, name)
				}
				if !known(wc.Name) {
					return fmt.Errorf("route configuration %q: virtual host %q: route %s: unknown cluster %q", rc.Name, vh.Name, name, wc.Name)
				}
			}
			for _, m := range r.Action.MirrorPolicy {
				if !known(m.Cluster) {
					return fmt.Errorf("route configuration %q: virtual host %q: route %s: unknown mirror cluster %q", rc.Name, vh.Name, name, m.Cluster)
				}
			}
		}
	}
	return nil
}

// checkTCPClusters checks that the clusters a TCP proxy names exist.
func checkTCPClusters(t *config.TCPProxy, clusters map[string]bool) error {
	if t.Cluster != "" && !clusters[t.Cluster] {
		return fmt.Errorf("tcp_proxy %q: unknown cluster %q", t.StatPrefix, t.Cluster)
	}
	for _, wc := range t.WeightedClusters {
		if wc == nil {
			return fmt.Errorf("tcp_proxy %q: empty weighted cluster", t.StatPrefix)
		}
		if !clusters[wc.Name] {
			return fmt.Errorf("tcp_proxy %q: unknown cluster %q", t.StatPrefix, wc.Name)
		}
	}
	return nil
}

func checkAddress(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("bad address %q: %w", a, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("bad port in address %q", a)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("address %q: listeners bind IP addresses, not host names", a)
	}
	return nil
}

func endsWithPortZero(a string) bool {
	_, port, _ := net.SplitHostPort(a)
	return port == "0"
}
