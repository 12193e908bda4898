package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/xds"
	"google.golang.org/protobuf/proto"
)

// newXDSClient makes the xDS client of a bootstrap with dynamic_resources.
// Every snapshot it applies shows, in /config_dump, the bootstrap and the
// resources the control plane sent; the client keeps Envoy's update
// counters, which Istio's pilot-agent reads.
func newXDSClient(lc *loadedConfig, envoy *envoyFlags, srv *server.Server, stats *observe.Store, log *slog.Logger) (*xds.Client, error) {
	b := proto.Clone(lc.bootstrap).(*bootstrapv3.Bootstrap)
	fillNode(b, envoy)
	var client *xds.Client
	apply := func(s *config.Snapshot) error {
		s.EnvoyDump = func() ([]byte, error) { return xds.ConfigDump(b, lc.loaded, client.Dump()) }
		return srv.Apply(s)
	}
	var err error
	client, err = xds.NewClient(xds.ClientOptions{Bootstrap: b, Apply: apply, Logger: log, Source: lc.snap.Source, UserAgentVersion: Version, Stats: stats})
	return client, err
}

// fillNode sets the node fields Envoy takes from --service-cluster,
// --service-node and --service-zone when the bootstrap leaves them empty.
func fillNode(b *bootstrapv3.Bootstrap, e *envoyFlags) {
	if b.Node == nil {
		b.Node = &corev3.Node{}
	}
	n := b.Node
	if n.Id == "" {
		n.Id = e.serviceNode
	}
	if n.Cluster == "" {
		n.Cluster = e.serviceCluster
	}
	if e.serviceZone != "" && n.GetLocality().GetZone() == "" {
		if n.Locality == nil {
			n.Locality = &corev3.Locality{}
		}
		n.Locality.Zone = e.serviceZone
	}
}

// waitStatics waits until the xDS client applied the bootstrap's static
// resources (the server is then live), or failed to.
func waitStatics(srv *server.Server, started <-chan error) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for srv.Snapshot() == nil {
		select {
		case err := <-started:
			if err == nil {
				err = errors.New("xds: client stopped before applying the static resources")
			}
			return err
		case <-t.C:
		}
	}
	return nil
}

// initTimeout bounds INITIALIZING, as Envoy's initial_fetch_timeout (15 s
// by default) bounds its init manager's wait for the first LDS and CDS.
const initTimeout = 15 * time.Second

// markInitialized makes the server LIVE once the control plane's first
// listeners and clusters are applied and nothing warms (or after
// initTimeout): until then /ready answers 503 and server.state is 3, so
// Istio's pilot-agent does not report a sidecar ready that has no mesh
// config yet.
func markInitialized(ctx context.Context, srv *server.Server, client *xds.Client, b *bootstrapv3.Bootstrap, log *slog.Logger) {
	want := map[string]bool{}
	if b.GetDynamicResources().GetLdsConfig() != nil {
		want["type.googleapis.com/envoy.config.listener.v3.Listener"] = true
	}
	if b.GetDynamicResources().GetCdsConfig() != nil {
		want["type.googleapis.com/envoy.config.cluster.v3.Cluster"] = true
	}
	deadline := time.Now().Add(initTimeout)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		st := client.State()
		got := 0
		for _, ts := range st.Types {
			if want[ts.TypeURL] && ts.Version != "" {
				got++
			}
		}
		if got == len(want) && len(st.Warming) == 0 {
			srv.MarkInitialized()
			return
		}
		if time.Now().After(deadline) {
			log.Warn("xds: the control plane's first config is not complete; serving what is there", "waited", initTimeout, "warming", st.Warming)
			srv.MarkInitialized()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
