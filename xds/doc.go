// Package xds turns Envoy v3 configuration into Sluice's single internal
// model, engine/config.
//
// LoadBootstrap and LoadBootstrapFile read an Envoy bootstrap (YAML or JSON),
// decode it strictly with protojson (unknown fields and unknown Any types are
// errors), run the protoc-gen-validate rules that go-control-plane generates,
// and translate static_resources and admin into a *config.Snapshot.
// Translate, TranslateListener, TranslateCluster and
// TranslateRouteConfiguration do the same for already decoded resources; the
// xDS client reuses them for resources received from a control plane.
//
// TLS transport sockets (DownstreamTlsContext on filter chains,
// UpstreamTlsContext on clusters) become the model's DownstreamTLS and
// UpstreamTLS. Their certificates, keys and CAs stay file names (the engine
// reads them when it compiles a snapshot, so a reload picks up renewed
// files) or inline bytes; environment variables are not supported. A TLS
// context may name secrets: static_resources.secrets, or SDS secrets that
// only the xDS client resolves.
//
// Client is the xDS client (ADS, state of the world or delta, as the
// bootstrap's dynamic_resources.ads_config says): it subscribes to
// listeners and clusters, and to the route tables, load assignments,
// secrets and HTTP filter configs (ECDS) they name; after each response it
// assembles a whole snapshot from the static and dynamic resources, with
// the same translation functions, and hands it to the engine, ACKing or
// NACKing the response by the result; as Envoy, the good resources of a
// partly bad response are applied and the bad ones set aside (Client.handle).
// See ads.go and adsassemble.go.
//
// The translator never drops configuration silently: every field of a
// translated message is either applied, deliberately ignored because it only
// tunes observability or performance (each such field is listed next to the
// code that translates its message), or rejected with an error that wraps
// ErrUnsupported and names the field. Every error names where it is, for
// example:
//
//	xds: listener "public": filter_chains[0].filters[0] (envoy.filters.network.http_connection_manager): virtual_host "local": route "r1": unknown cluster "nope"
package xds
