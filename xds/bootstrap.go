package xds

import (
	"errors"
	"fmt"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

var (
	// Bootstrap: only admin and static_resources are translated;
	// dynamic_resources and node are read by the xDS client. The other
	// fields are process settings Sluice does not use (stats sinks and
	// flushing, tracing, runtime, overload manager, watchdogs, DNS
	// resolver, regex engine, inline headers, ...) and are ignored.
	staticResourcesFields = knownFields(&bootstrapv3.Bootstrap_StaticResources{}, "listeners", "clusters", "secrets")
	// Admin: profile_path and socket_options are ignored.
	adminFields = knownFields(&bootstrapv3.Admin{}, "access_log", "access_log_path", "profile_path", "address",
		"socket_options", "ignore_global_conn_limit")
)

// Translate checks an Envoy v3 bootstrap's validation rules and translates
// its admin section and static resources into a snapshot, then checks the
// snapshot (see CheckSnapshot). Route references to clusters are not
// checked when clusters also come from CDS (dynamic_resources.cds_config).
func Translate(b *bootstrapv3.Bootstrap) (*config.Snapshot, error) {
	s, err := translate(b)
	return s, prefixed(err)
}

func translate(b *bootstrapv3.Bootstrap) (*config.Snapshot, error) {
	if b == nil {
		return nil, errors.New("nil bootstrap")
	}
	if err := validateMsg(b); err != nil {
		return nil, err
	}
	s := &config.Snapshot{}
	if a := b.GetAdmin(); a != nil {
		admin, err := translateAdmin(a)
		if err != nil {
			return nil, inField(err, "admin")
		}
		s.Admin = admin
	}
	sr := b.GetStaticResources()
	if err := staticResourcesFields.check(sr); err != nil {
		return nil, inField(err, "static_resources")
	}
	statics, err := staticSecrets(sr.GetSecrets())
	if err != nil {
		return nil, inField(err, "static_resources")
	}
	d := &deps{statics: statics, node: nodeOf(b.GetNode())}
	for i, l := range sr.GetListeners() {
		cl, err := translateListener(l, d)
		if err != nil {
			return nil, inElem(err, "static_resources.listeners", i, "listener", l.GetName())
		}
		s.Listeners = append(s.Listeners, cl)
	}
	for i, c := range sr.GetClusters() {
		cc, err := translateCluster(c, d)
		if err != nil {
			return nil, inElem(err, "static_resources.clusters", i, "cluster", c.GetName())
		}
		s.Clusters = append(s.Clusters, cc)
	}
	dr := b.GetDynamicResources()
	dynamicClusters := dr.GetCdsConfig() != nil || dr.GetCdsResourcesLocator() != ""
	s.DynamicClusters = dynamicClusters
	if err := applyIstio(s); err != nil {
		return nil, err
	}
	if err := checkSnapshot(s, !dynamicClusters); err != nil {
		return nil, err
	}
	return s, nil
}

// staticSecrets indexes static_resources.secrets by name; TLS contexts
// name them in SdsSecretConfigs without sds_config.
func staticSecrets(secrets []*tlsv3.Secret) (map[string]*tlsv3.Secret, error) {
	out := map[string]*tlsv3.Secret{}
	for i, s := range secrets {
		if s.GetName() == "" {
			return nil, inIndex(errors.New("name is required"), "secrets", i)
		}
		if _, dup := out[s.GetName()]; dup {
			return nil, inIndex(fmt.Errorf("duplicate secret name %q", s.GetName()), "secrets", i)
		}
		out[s.GetName()] = s
	}
	return out, nil
}

func translateAdmin(a *bootstrapv3.Admin) (*config.Admin, error) {
	if err := adminFields.check(a); err != nil {
		return nil, err
	}
	out := &config.Admin{AccessLogPath: a.GetAccessLogPath()}
	if a.GetAddress() != nil {
		addr, err := hostPort(a.GetAddress())
		if err != nil {
			return nil, inField(err, "address")
		}
		out.Address = addr
	}
	logs, err := translateAccessLogs(a.GetAccessLog())
	if err != nil {
		return nil, err
	}
	switch {
	case len(logs) > 1 || (len(logs) == 1 && out.AccessLogPath != ""):
		// config.Admin has a single access log path.
		return nil, inField(fmt.Errorf("more than one admin access log: %w", ErrUnsupported), "access_log")
	case len(logs) == 1:
		out.AccessLogPath = logs[0].Path
	}
	return out, nil
}
