package xds

import (
	"fmt"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DumpResource is one resource an xDS client accepted, for /config_dump.
type DumpResource struct {
	Name     string
	Version  string
	Resource proto.Message
	Updated  time.Time
}

// DynamicDump is what the xDS client holds, by resource kind.
type DynamicDump struct {
	Listeners, Clusters, RouteConfigs, Secrets, Endpoints []DumpResource
}

// ConfigDump renders /config_dump in Envoy's shape (envoy.admin.v3.ConfigDump:
// bootstrap, clusters, listeners, routes, secrets, in Envoy's order), so
// tools written for Envoy — istioctl proxy-config among them — read it;
// field names are the proto names (snake_case), as Envoy prints them.
// Static resources come from the bootstrap (route tables inline in HTTP
// connection managers count as static route configs, as in Envoy); dynamic
// ones, when dyn is not nil, from the xDS client. Secrets' key material is
// redacted, as Envoy does.
func ConfigDump(b *bootstrapv3.Bootstrap, loaded time.Time, dyn *DynamicDump) ([]byte, error) {
	ts := timestamppb.New(loaded)
	bd := &adminv3.BootstrapConfigDump{Bootstrap: b, LastUpdated: ts}
	cd := &adminv3.ClustersConfigDump{}
	ld := &adminv3.ListenersConfigDump{}
	rd := &adminv3.RoutesConfigDump{}
	sd := &adminv3.SecretsConfigDump{}
	sr := b.GetStaticResources()
	for _, c := range sr.GetClusters() {
		a, err := anypb.New(c)
		if err != nil {
			return nil, fmt.Errorf("xds: config dump: cluster %q: %w", c.GetName(), err)
		}
		cd.StaticClusters = append(cd.StaticClusters, &adminv3.ClustersConfigDump_StaticCluster{Cluster: a, LastUpdated: ts})
	}
	for _, l := range sr.GetListeners() {
		a, err := anypb.New(l)
		if err != nil {
			return nil, fmt.Errorf("xds: config dump: listener %q: %w", l.GetName(), err)
		}
		ld.StaticListeners = append(ld.StaticListeners, &adminv3.ListenersConfigDump_StaticListener{Listener: a, LastUpdated: ts})
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				m := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().MessageIs(m) && f.GetTypedConfig().UnmarshalTo(m) == nil && m.GetRouteConfig() != nil {
					if a, err := anypb.New(m.GetRouteConfig()); err == nil {
						rd.StaticRouteConfigs = append(rd.StaticRouteConfigs, &adminv3.RoutesConfigDump_StaticRouteConfig{RouteConfig: a, LastUpdated: ts})
					}
				}
			}
		}
	}
	for _, s := range sr.GetSecrets() {
		a, err := anypb.New(redactSecret(s))
		if err != nil {
			return nil, fmt.Errorf("xds: config dump: secret %q: %w", s.GetName(), err)
		}
		sd.StaticSecrets = append(sd.StaticSecrets, &adminv3.SecretsConfigDump_StaticSecret{Name: s.GetName(), Secret: a, LastUpdated: ts})
	}
	if dyn != nil {
		for _, r := range dyn.Clusters {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("xds: config dump: cluster %q: %w", r.Name, err)
			}
			cd.DynamicActiveClusters = append(cd.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{
				VersionInfo: r.Version, Cluster: a, LastUpdated: timestamppb.New(r.Updated)})
		}
		for _, r := range dyn.Listeners {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("xds: config dump: listener %q: %w", r.Name, err)
			}
			ld.DynamicListeners = append(ld.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
				Name: r.Name, ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{
					VersionInfo: r.Version, Listener: a, LastUpdated: timestamppb.New(r.Updated)}})
		}
		for _, r := range dyn.RouteConfigs {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("xds: config dump: route config %q: %w", r.Name, err)
			}
			rd.DynamicRouteConfigs = append(rd.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{
				VersionInfo: r.Version, RouteConfig: a, LastUpdated: timestamppb.New(r.Updated)})
		}
		for _, r := range dyn.Secrets {
			m := r.Resource
			if sec, ok := m.(*tlsv3.Secret); ok {
				m = redactSecret(sec)
			}
			a, err := anypb.New(m)
			if err != nil {
				return nil, fmt.Errorf("xds: config dump: secret %q: %w", r.Name, err)
			}
			sd.DynamicActiveSecrets = append(sd.DynamicActiveSecrets, &adminv3.SecretsConfigDump_DynamicSecret{
				Name: r.Name, VersionInfo: r.Version, Secret: a, LastUpdated: timestamppb.New(r.Updated)})
		}
	}
	dump := &adminv3.ConfigDump{}
	for _, m := range []proto.Message{bd, cd, ld, rd, sd} {
		a, err := anypb.New(m)
		if err != nil {
			return nil, fmt.Errorf("xds: config dump: %w", err)
		}
		dump.Configs = append(dump.Configs, a)
	}
	if dyn != nil && len(dyn.Endpoints) > 0 {
		ed := &adminv3.EndpointsConfigDump{}
		for _, r := range dyn.Endpoints {
			a, err := anypb.New(r.Resource)
			if err != nil {
				return nil, fmt.Errorf("xds: config dump: endpoints %q: %w", r.Name, err)
			}
			ed.DynamicEndpointConfigs = append(ed.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{
				VersionInfo: r.Version, EndpointConfig: a, LastUpdated: timestamppb.New(r.Updated)})
		}
		a, err := anypb.New(ed)
		if err != nil {
			return nil, fmt.Errorf("xds: config dump: %w", err)
		}
		dump.Configs = append(dump.Configs, a)
	}
	return protojson.MarshalOptions{Indent: "  ", UseProtoNames: true, Resolver: dumpResolver{}}.Marshal(dump)
}

// redactSecret hides key material as Envoy's config dump does: private
// keys, passwords and generic secrets become "[redacted]".
func redactSecret(s *tlsv3.Secret) *tlsv3.Secret {
	out := proto.Clone(s).(*tlsv3.Secret)
	redacted := &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "[redacted]"}}
	hide := func(ds *corev3.DataSource) *corev3.DataSource {
		if ds == nil {
			return nil
		}
		switch ds.GetSpecifier().(type) {
		case *corev3.DataSource_InlineBytes, *corev3.DataSource_InlineString:
			return redacted
		}
		return ds
	}
	if c := out.GetTlsCertificate(); c != nil {
		c.PrivateKey = hide(c.PrivateKey)
		c.Password = hide(c.Password)
	}
	if g := out.GetGenericSecret(); g != nil {
		g.Secret = hide(g.Secret)
	}
	if k := out.GetSessionTicketKeys(); k != nil {
		for i := range k.Keys {
			k.Keys[i] = hide(k.Keys[i])
		}
	}
	return out
}

// dumpResolver resolves the types of Anys for /config_dump, as the linked
// ones do, and Istio's own filter configs (not linked: see istio.go),
// which show as their type URL alone ({"@type": ...}), where a dump
// would otherwise fail.
type dumpResolver struct{}

func (dumpResolver) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	return protoregistry.GlobalTypes.FindMessageByName(name)
}

func (r dumpResolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if err != nil && istioTypes[typePrefix+string((&anypb.Any{TypeUrl: url}).MessageName())] {
		return (&emptypb.Empty{}).ProtoReflect().Type(), nil
	}
	return mt, err
}

func (dumpResolver) FindExtensionByName(field protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(field)
}

func (dumpResolver) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}
