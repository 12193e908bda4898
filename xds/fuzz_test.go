package xds

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
)

// FuzzLoadBootstrap feeds arbitrary documents to the loader. It must never
// panic; it returns either an error that names the file, or a snapshot
// whose invariants hold. The seed corpus is testdata/fuzz/FuzzLoadBootstrap
// (TLS and HTTP/2 configs included) plus every bootstrap under testdata and
// the static sample.
func FuzzLoadBootstrap(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.yaml")
	json, _ := filepath.Glob("testdata/*/*.json")
	seeds = append(append(seeds, json...), filepath.Join("..", "samples", "static", "envoy.yaml"))
	for _, p := range seeds {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := LoadBootstrap(data, "fuzz.yaml")
		if err != nil {
			if s != nil {
				t.Fatalf("snapshot and error %v", err)
			}
			if !strings.HasPrefix(err.Error(), "xds: fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		b, err := DecodeBootstrap(data, "fuzz.yaml")
		if err != nil {
			t.Fatalf("loaded but does not decode: %v", err)
		}
		dr := b.GetDynamicResources()
		checkInvariants(t, s, dr.GetCdsConfig() == nil && dr.GetCdsResourcesLocator() == "")
	})
}

func checkInvariants(t *testing.T, s *config.Snapshot, allClustersKnown bool) {
	t.Helper()
	if s == nil {
		t.Fatal("nil snapshot without error")
	}
	clusters := map[string]bool{}
	for _, c := range s.Clusters {
		if c.Name == "" || clusters[c.Name] {
			t.Fatalf("cluster name %q empty or duplicate", c.Name)
		}
		clusters[c.Name] = true
		if c.ConnectTimeout < 0 || c.IdleTimeout < 0 || c.Protocol == "" {
			t.Fatalf("cluster %q: %+v", c.Name, c)
		}
		switch c.Protocol {
		case config.ProtocolHTTP1, config.ProtocolHTTP2, config.ProtocolDownstream:
		case config.ProtocolAuto:
			if c.TLS == nil {
				t.Fatalf("cluster %q: auto protocol without TLS", c.Name)
			}
		default:
			t.Fatalf("cluster %q: protocol %q", c.Name, c.Protocol)
		}
		if c.HTTP2.ConnectionKeepaliveInterval < 0 || c.HTTP2.ConnectionKeepaliveTimeout < 0 {
			t.Fatalf("cluster %q: HTTP/2 options %+v", c.Name, c.HTTP2)
		}
		if tls := c.TLS; tls != nil && tls.Certificate != nil && (tls.Certificate.Chain.IsZero() || tls.Certificate.Key.IsZero()) {
			t.Fatalf("cluster %q: client certificate %+v", c.Name, tls.Certificate)
		}
		for _, e := range c.Endpoints {
			if e.Address == "" || e.Weight == 0 {
				t.Fatalf("cluster %q: endpoint %+v", c.Name, e)
			}
		}
	}
	for _, l := range s.Listeners {
		if l.Address == "" {
			t.Fatalf("listener %q has no address", l.Name)
		}
		chains := l.FilterChains
		if l.DefaultFilterChain != nil {
			chains = append(chains[:len(chains):len(chains)], l.DefaultFilterChain)
		}
		if len(chains) == 0 {
			t.Fatalf("listener %q has no filter chain", l.Name)
		}
		for _, fc := range chains {
			if fc.TCP != nil {
				checkTCPInvariants(t, l.Name, fc, clusters, allClustersKnown)
				continue
			}
			h := fc.HTTP
			if h == nil {
				t.Fatalf("listener %q: filter chain without HCM or TCP proxy", l.Name)
			}
			switch h.Codec {
			case config.CodecAuto, config.CodecHTTP1, config.CodecHTTP2:
			default:
				t.Fatalf("listener %q: codec %q", l.Name, h.Codec)
			}
			if tls := fc.TLS; tls != nil {
				if len(tls.Certificates) == 0 {
					t.Fatalf("listener %q: TLS without a certificate", l.Name)
				}
				for _, c := range tls.Certificates {
					if c.Chain.IsZero() || c.Key.IsZero() {
						t.Fatalf("listener %q: certificate %+v", l.Name, c)
					}
				}
			}
			if (h.RDSName == "") == (h.RouteConfig == nil) {
				t.Fatalf("listener %q: RDS name %q and inline route config %v", l.Name, h.RDSName, h.RouteConfig != nil)
			}
			for _, hf := range h.HTTPFilters {
				if hf.TypeURL == config.TypeRouter {
					t.Fatalf("listener %q: the router filter was kept", l.Name)
				}
			}
			if h.RouteConfig != nil {
				checkRouteInvariants(t, h.RouteConfig, clusters, allClustersKnown)
			}
		}
	}
}

func checkRouteInvariants(t *testing.T, rc *config.RouteConfiguration, clusters map[string]bool, allClustersKnown bool) {
	t.Helper()
	known := func(name string) {
		if allClustersKnown && !clusters[name] {
			t.Fatalf("route table %q refers to unknown cluster %q", rc.Name, name)
		}
	}
	for _, vh := range rc.VirtualHosts {
		for _, r := range vh.Routes {
			n := 0
			for _, set := range []bool{r.Action != nil, r.DirectResponse != nil, r.Redirect != nil} {
				if set {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("route %q has %d actions", r.Name, n)
			}
			if r.Match.SafeRegex != "" {
				if _, err := regexp.Compile(r.Match.SafeRegex); err != nil {
					t.Fatalf("route %q: regex accepted: %v", r.Name, err)
				}
			}
			a := r.Action
			if a == nil {
				continue
			}
			if a.Timeout < 0 || a.IdleTimeout < 0 {
				t.Fatalf("route %q: negative timeout", r.Name)
			}
			if a.Cluster != "" {
				known(a.Cluster)
			}
			var sum uint64
			for _, wc := range a.WeightedClusters {
				known(wc.Name)
				sum += uint64(wc.Weight)
			}
			if len(a.WeightedClusters) > 0 && sum == 0 {
				t.Fatalf("route %q: weighted clusters with zero total weight", r.Name)
			}
			if a.Cluster == "" && a.ClusterHeader == "" && len(a.WeightedClusters) == 0 {
				t.Fatalf("route %q: no cluster", r.Name)
			}
			for _, m := range a.MirrorPolicy {
				known(m.Cluster)
				if m.Percent < 0 || m.Percent > 100 {
					t.Fatalf("route %q: mirror percent %v", r.Name, m.Percent)
				}
			}
		}
	}
}
