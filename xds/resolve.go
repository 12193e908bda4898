package xds

import (
	"errors"
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-proxy/sluice/engine/config"
)

// Listeners and clusters name other resources that arrive on their own:
// route tables (RDS), load assignments (EDS), secrets (SDS) and HTTP filter
// configs (ECDS). The translator asks a *deps for them while it walks a
// resource, so the error of a bad secret or filter config names the
// listener or cluster that uses it, and so the xDS client learns, from the
// same walk, what to subscribe to and what a resource still waits for
// (Envoy's warming). A nil *deps, or one without a view, is static
// translation: only static_resources.secrets resolve, and everything that
// needs a control plane is reported as such.

// defaultInitialFetchTimeout is Envoy's initial_fetch_timeout default.
const defaultInitialFetchTimeout = 15 * time.Second

var (
	// resource_api_version is checked below; initial_fetch_timeout is
	// honoured. Only ads is accepted as the source itself.
	configSourceFields    = knownFields(&corev3.ConfigSource{}, "ads", "initial_fetch_timeout", "resource_api_version")
	sdsSecretConfigFields = knownFields(&tlsv3.SdsSecretConfig{}, "name", "sds_config")
	extensionSourceFields = knownFields(&corev3.ExtensionConfigSource{}, "config_source", "default_config",
		"apply_default_config_without_warming", "type_urls")
	// Secrets: session ticket keys and generic secrets have no user in
	// Sluice; a TLS context that names such a secret gets an error saying
	// which part it lacks.
	secretFields = knownFields(&tlsv3.Secret{}, "name", "tls_certificate", "validation_context")
)

// view is what dynamic translation reads: the resources received so far,
// when each name was first subscribed, and the time now (for initial fetch
// timeouts).
type view struct {
	st    *store
	since func(t rtype, name string) time.Time
	now   time.Time
}

// deps resolves the named resources of one listener or cluster. See the
// comment at the top of the file.
type deps struct {
	view    *view
	statics map[string]*tlsv3.Secret
	// node is the bootstrap's node, for Istio's filters (nil: unknown).
	node *config.Node

	// refs are the names the resource refers to, by type.
	refs [numTypes]map[string]bool
	// sdsSources are the SDS servers (not the ADS stream) its secrets come
	// from, by key (see sdsSourceKey); secretSource maps such a secret's
	// name to its server's key.
	sdsSources   map[string]*sdsSource
	secretSource map[string]string
	// missing are the resources it waits for ("route_config \"r\"").
	missing []string
	// deadline is the earliest initial fetch timeout among missing
	// resources that the resource may do without once it passes.
	deadline time.Time
}

func (d *deps) dynamic() bool { return d != nil && d.view != nil }

func (d *deps) ref(t rtype, name string) {
	if d.refs[t] == nil {
		d.refs[t] = map[string]bool{}
	}
	d.refs[t][name] = true
}

// await records that a resource has not arrived. When optional (the
// resource can do without it once its initial fetch timeout has passed, as
// Envoy's warming does) and the timeout has passed, it reports true and
// records nothing. A zero timeout waits forever.
func (d *deps) await(t rtype, name string, timeout time.Duration, optional bool) (gaveUp bool) {
	if timeout > 0 {
		end := d.view.since(t, name).Add(timeout)
		switch {
		case !d.view.now.Before(end):
			if optional {
				return true
			}
		case optional && (d.deadline.IsZero() || end.Before(d.deadline)):
			d.deadline = end
		}
	}
	d.missing = append(d.missing, fmt.Sprintf("%s %q", typeInfo[t].kind, name))
	return false
}

func (d *deps) get(t rtype, name string) *entry {
	if !d.dynamic() {
		return nil
	}
	return d.view.st.get(t, name)
}

// adsSource checks that a config source is the ADS stream and returns its
// initial fetch timeout.
func adsSource(cs *corev3.ConfigSource) (time.Duration, error) {
	if cs == nil {
		return 0, errors.New("a config source is required")
	}
	switch cs.GetConfigSourceSpecifier().(type) {
	case *corev3.ConfigSource_Ads:
	case nil:
		return 0, errors.New("ads is required (the only config source Sluice supports)")
	default:
		r := cs.ProtoReflect()
		fd := r.WhichOneof(r.Descriptor().Oneofs().ByName("config_source_specifier"))
		return 0, inField(fmt.Errorf("only ads config sources are supported: %w", ErrUnsupported), string(fd.Name()))
	}
	if err := configSourceFields.check(cs); err != nil {
		return 0, err
	}
	if v := cs.GetResourceApiVersion(); v != corev3.ApiVersion_AUTO && v != corev3.ApiVersion_V3 {
		return 0, unsupportedValue("resource_api_version", v)
	}
	return durationField(cs.GetInitialFetchTimeout(), defaultInitialFetchTimeout, "initial_fetch_timeout")
}

// routeConfig records an HCM's RDS route table. Static translation keeps
// only the name, as before the xDS client existed.
func (d *deps) routeConfig(name string, cs *corev3.ConfigSource) error {
	if !d.dynamic() {
		return nil
	}
	timeout, err := adsSource(cs)
	if err != nil {
		return inField(err, "config_source")
	}
	d.ref(tRoute, name)
	if d.get(tRoute, name) == nil {
		// After the timeout the listener serves an empty table (404s).
		d.await(tRoute, name, timeout, true)
	}
	return nil
}

// loadAssignment returns an EDS cluster's ClusterLoadAssignment, nil while
// it has not arrived (and after the initial fetch timeout: the cluster then
// has no endpoints).
func (d *deps) loadAssignment(name string, cs *corev3.ConfigSource) (*endpointv3.ClusterLoadAssignment, error) {
	timeout, err := adsSource(cs)
	if err != nil {
		return nil, err
	}
	d.ref(tEndpoint, name)
	if e := d.get(tEndpoint, name); e != nil {
		return e.msg.(*endpointv3.ClusterLoadAssignment), nil
	}
	d.await(tEndpoint, name, timeout, true)
	return nil, nil
}

// secret returns the secret an SdsSecretConfig names: a static one
// (without sds_config) or one from SDS over ADS. A secret that has not
// arrived is nil and the resource waits for it without a timeout: a TLS
// context without its certificate or CA cannot serve.
func (d *deps) secret(sc *tlsv3.SdsSecretConfig) (*tlsv3.Secret, error) {
	if err := sdsSecretConfigFields.check(sc); err != nil {
		return nil, err
	}
	name := sc.GetName()
	if name == "" {
		return nil, inField(errors.New("a secret name is required"), "name")
	}
	if sc.GetSdsConfig() == nil {
		if d != nil {
			if s, ok := d.statics[name]; ok {
				return s, nil
			}
		}
		return nil, fmt.Errorf("unknown secret %q: no sds_config and not in static_resources.secrets", name)
	}
	if !d.dynamic() {
		return nil, inField(fmt.Errorf("secret %q from SDS needs the xDS client (dynamic_resources.ads_config): %w",
			name, ErrUnsupported), "sds_config")
	}
	cs := sc.GetSdsConfig()
	var timeout time.Duration
	var err error
	if cs.GetApiConfigSource() != nil {
		// Its own SDS server, as Istio's sds-grpc (pilot-agent).
		var src *sdsSource
		if src, timeout, err = sdsServer(cs); err != nil {
			return nil, inField(err, "sds_config")
		}
		if d.sdsSources == nil {
			d.sdsSources, d.secretSource = map[string]*sdsSource{}, map[string]string{}
		}
		if other, ok := d.secretSource[name]; ok && other != src.key {
			return nil, inField(fmt.Errorf("secret %q is asked of two SDS servers (%s and %s): %w", name, other, src.key, ErrUnsupported), "sds_config")
		}
		d.sdsSources[src.key] = src
		d.secretSource[name] = src.key
	} else if timeout, err = adsSource(cs); err != nil {
		return nil, inField(err, "sds_config")
	}
	d.ref(tSecret, name)
	if e := d.get(tSecret, name); e != nil {
		return e.msg.(*tlsv3.Secret), nil
	}
	d.await(tSecret, name, timeout, false)
	return nil, nil
}

// extensionConfig returns the config of an HTTP filter with
// config_discovery: the ECDS resource named like the filter, else
// default_config when the filter may do without the resource (with
// apply_default_config_without_warming at once, otherwise after the
// initial fetch timeout), else nil: the listener waits. within locates
// errors in the returned config.
func (d *deps) extensionConfig(name string, ecs *corev3.ExtensionConfigSource) (_ *anypb.Any, within func(error) error, _ error) {
	if err := extensionSourceFields.check(ecs); err != nil {
		return nil, nil, err
	}
	if !d.dynamic() {
		return nil, nil, fmt.Errorf("filter config %q from ECDS needs the xDS client (dynamic_resources.ads_config): %w",
			name, ErrUnsupported)
	}
	timeout, err := adsSource(ecs.GetConfigSource())
	if err != nil {
		return nil, nil, inField(err, "config_source")
	}
	d.ref(tExtensionConfig, name)
	if e := d.get(tExtensionConfig, name); e != nil {
		return e.msg.(*corev3.TypedExtensionConfig).GetTypedConfig(), func(err error) error {
			return blame(inNamed(inField(err, "typed_config"), typeInfo[tExtensionConfig].kind, name), tExtensionConfig, name)
		}, nil
	}
	def := ecs.GetDefaultConfig()
	if def != nil && (ecs.GetApplyDefaultConfigWithoutWarming() || d.await(tExtensionConfig, name, timeout, true)) {
		return def, func(err error) error { return inField(err, "default_config") }, nil
	}
	if def == nil {
		d.await(tExtensionConfig, name, timeout, false)
	}
	return nil, nil, nil
}

var (
	// initial_fetch_timeout is honoured; resource_api_version is checked.
	sdsConfigSourceFields = knownFields(&corev3.ConfigSource{}, "api_config_source", "initial_fetch_timeout", "resource_api_version")
	// Ignored as for the ADS stream (see apiConfigSourceFields).
	sdsAPIConfigFields = knownFields(&corev3.ApiConfigSource{}, "api_type", "transport_api_version", "grpc_services",
		"set_node_on_first_message_only", "rate_limit_settings", "request_timeout")
)

// sdsSource is an SDS server other than the ADS stream: the xDS client
// keeps a state-of-the-world SecretDiscoveryService stream to it.
type sdsSource struct {
	key      string // "sds-grpc" for envoy_grpc, else the gRPC target
	service  *corev3.GrpcService
	nodeOnce bool
}

// sdsServer checks an SDS config source of api_config_source kind: gRPC
// state of the world (what Envoy and Istio's pilot-agent speak for SDS)
// with one gRPC service.
func sdsServer(cs *corev3.ConfigSource) (*sdsSource, time.Duration, error) {
	if err := sdsConfigSourceFields.check(cs); err != nil {
		return nil, 0, err
	}
	if v := cs.GetResourceApiVersion(); v != corev3.ApiVersion_AUTO && v != corev3.ApiVersion_V3 {
		return nil, 0, unsupportedValue("resource_api_version", v)
	}
	acs := cs.GetApiConfigSource()
	err := func() error {
		if err := sdsAPIConfigFields.check(acs); err != nil {
			return err
		}
		if t := acs.GetApiType(); t != corev3.ApiConfigSource_GRPC {
			return unsupportedValue("api_type", t)
		}
		if v := acs.GetTransportApiVersion(); v != corev3.ApiVersion_AUTO && v != corev3.ApiVersion_V3 {
			return unsupportedValue("transport_api_version", v)
		}
		if n := len(acs.GetGrpcServices()); n != 1 {
			return fmt.Errorf("exactly one grpc_services is required, not %d", n)
		}
		return nil
	}()
	if err != nil {
		return nil, 0, inField(err, "api_config_source")
	}
	gs := acs.GetGrpcServices()[0]
	key := gs.GetEnvoyGrpc().GetClusterName()
	if key == "" {
		key = gs.GetGoogleGrpc().GetTargetUri()
	}
	if key == "" {
		return nil, 0, inField(inIndex(errors.New("envoy_grpc or google_grpc is required"), "grpc_services", 0), "api_config_source")
	}
	timeout, err := durationField(cs.GetInitialFetchTimeout(), defaultInitialFetchTimeout, "initial_fetch_timeout")
	if err != nil {
		return nil, 0, err
	}
	return &sdsSource{key: key, service: gs, nodeOnce: acs.GetSetNodeOnFirstMessageOnly()}, timeout, nil
}
