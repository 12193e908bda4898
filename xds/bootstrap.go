package xds

import (
	"errors"
	"fmt"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-proxy/sluice/engine/config"
)

var (
	// Bootstrap: admin and static_resources are translated;
	// dynamic_resources and node are read by the xDS client (node by
	// Istio's filters too). bootstrap_extensions and cluster_manager are
	// checked below. The other known fields are process settings Sluice
	// has no use for and ignores: stats tags, matchers, sinks and
	// flushing (Sluice keeps every stat, with its own names); tracing
	// (Sluice does not trace); layered_runtime (there is no runtime:
	// Istio's static layer only sets Envoy's overload and reloadable
	// feature flags); overload_manager, watchdogs, fatal_actions, worker
	// and allocator tuning; the DNS resolver and the regex engine (Go's
	// resolver; RE2 always); inline_headers, node_context_params,
	// application logging, the default socket interface and the listener
	// manager implementation; xds delegate and config tracker extensions
	// (observability of the xDS client). Any other field is rejected:
	// hds_config (health discovery), config_sources and
	// default_config_source (xdstp), certificate_provider_instances,
	// header_prefix, flags_path.
	bootstrapFields = knownFields(&bootstrapv3.Bootstrap{},
		"node", "static_resources", "dynamic_resources", "admin", "bootstrap_extensions", "cluster_manager",
		"node_context_params", "stats_sinks", "deferred_stat_options", "stats_config", "stats_flush_interval",
		"stats_flush_on_admin", "stats_eviction_interval", "watchdog", "watchdogs", "tracing", "layered_runtime",
		"overload_manager", "enable_dispatcher_stats", "stats_server_version_override", "use_tcp_for_dns_lookups",
		"dns_resolution_config", "typed_dns_resolver_config", "fatal_actions", "default_socket_interface",
		"inline_headers", "perf_tracing_file_path", "default_regex_engine", "xds_delegate_extension",
		"xds_config_tracker_extension", "listener_manager", "application_log_config",
		"grpc_async_client_manager_config", "memory_allocator_manager", "enable_worker_cpu_affinity")
	// cluster_manager: the outlier detection event log is ignored (no
	// outlier detection); local_cluster_name only feeds zone aware
	// balancing, which is not implemented.
	clusterManagerFields = knownFields(&bootstrapv3.ClusterManager{}, "outlier_detection", "local_cluster_name")
	// bootstrapExtensionTypes are the bootstrap extensions accepted, and
	// why they change nothing: Envoy's internal listeners (Istio's
	// template always adds it, for ambient's waypoints and HBONE; Sluice
	// has none, so a config using them fails where it does) and Istio's
	// workload metadata discovery (the peer metadata filter's
	// "workload_discovery" method, which Sluice does not implement).
	bootstrapExtensionTypes = map[string]bool{
		"envoy.extensions.bootstrap.internal_listener.v3.InternalListener": true,
		"istio.workload.BootstrapExtension":                                true,
	}
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
	if err := checkBootstrap(b); err != nil {
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

// checkBootstrap checks the bootstrap fields outside admin and the
// resources (see bootstrapFields).
func checkBootstrap(b *bootstrapv3.Bootstrap) error {
	if err := bootstrapFields.check(b); err != nil {
		return err
	}
	if cm := b.GetClusterManager(); cm != nil {
		if err := clusterManagerFields.check(cm); err != nil {
			return inField(err, "cluster_manager")
		}
	}
	for i, ext := range b.GetBootstrapExtensions() {
		url := ext.GetTypedConfig().GetTypeUrl()
		if ts, ok := typedStructURL(ext.GetTypedConfig()); ok {
			url = ts
		}
		name := string((&anypb.Any{TypeUrl: url}).MessageName())
		if !bootstrapExtensionTypes[name] {
			return inIndex(fmt.Errorf("extension %q (%s): %w", ext.GetName(), url, ErrUnsupported), "bootstrap_extensions", i)
		}
	}
	return nil
}
