// Package istio holds native versions of the filters Istio's proxy build
// adds to Envoy (istio/proxy), so that the configs istiod sends run on
// Sluice, and of the connection manager features Istio turns on that
// Sluice implements as filters:
//
//   - istio.metadata_exchange, HTTP (io.istio.http.peer_metadata.Config):
//     the x-envoy-peer-metadata and x-envoy-peer-metadata-id headers that
//     tell two sidecars who the other is (PeerMetadata);
//   - istio.metadata_exchange, network
//     (envoy.tcp.metadataexchange.config.MetadataExchange): the same in
//     band at the start of an mTLS TCP connection whose ALPN protocol is
//     "istio-peer-exchange" (MetadataExchange), server side;
//   - istio.stats, HTTP (stats.PluginConfig): Istio's standard request
//     metrics, istio_requests_total and
//     istio_request_duration_milliseconds, in /stats/prometheus (Stats);
//   - normalize_path and merge_slashes (NormalizePath) and
//     forward_client_cert_details (ForwardClientCert).
//
// Their protobuf types are not linked into Sluice: configs arrive as
// *config.UndecodedConfig (an Any's bytes or a TypedStruct's fields) and
// are read here with protowire or from the fields. istio.alpn is applied
// by the xDS translator to upstream TLS and has no filter.
// samples/istio/README.md lists what is emulated and what is not.
package istio

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-proxy/sluice/engine/config"
)

// undecoded checks a config's type.
func undecoded(cfg any, typeURL string) (*config.UndecodedConfig, error) {
	u, ok := cfg.(*config.UndecodedConfig)
	if !ok || u == nil {
		return nil, fmt.Errorf("istio: config is %T, want *config.UndecodedConfig", cfg)
	}
	if u.TypeURL != typeURL {
		return nil, fmt.Errorf("istio: config of type %q, want %q", u.TypeURL, typeURL)
	}
	return u, nil
}

func boolField(m map[string]any, name string) (bool, error) {
	v, ok := config.StructField(m, name)
	if !ok || v == nil {
		return false, nil
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("%s: not a bool", name)
	}
	return b, nil
}

func listField(m map[string]any, name string) ([]any, error) {
	v, ok := config.StructField(m, name)
	if !ok || v == nil {
		return nil, nil
	}
	l, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: not a list", name)
	}
	return l, nil
}

// walk calls fn for each field of a serialized message: varints as their
// value in n, length-delimited fields as b. Other wire types are skipped.
func walk(msg []byte, fn func(num protowire.Number, n uint64, b []byte, isBytes bool) error) error {
	for len(msg) > 0 {
		num, typ, k := protowire.ConsumeTag(msg)
		if k < 0 {
			return fmt.Errorf("decoding: %w", protowire.ParseError(k))
		}
		msg = msg[k:]
		switch typ {
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(msg)
			if m < 0 {
				return fmt.Errorf("decoding: %w", protowire.ParseError(m))
			}
			if err := fn(num, v, nil, false); err != nil {
				return err
			}
			k = m
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return fmt.Errorf("decoding: %w", protowire.ParseError(m))
			}
			if err := fn(num, 0, v, true); err != nil {
				return err
			}
			k = m
		default:
			k = protowire.ConsumeFieldValue(num, typ, msg)
			if k < 0 {
				return fmt.Errorf("decoding: %w", protowire.ParseError(k))
			}
		}
		msg = msg[k:]
	}
	return nil
}

// Workload is what Istio's proxies tell each other about themselves
// (istio/proxy's WorkloadMetadataObject), read from node metadata or from
// a peer's x-envoy-peer-metadata.
type Workload struct {
	Name              string // the pod
	Namespace         string
	WorkloadName      string // the deployment
	Cluster           string
	CanonicalName     string
	CanonicalRevision string
	App, Version      string
	Owner             string
	ID                string // the proxy's node ID (x-envoy-peer-metadata-id)
}

// Keys of the metadata struct, Istio's node metadata names.
const (
	keyName      = "NAME"
	keyNamespace = "NAMESPACE"
	keyWorkload  = "WORKLOAD_NAME"
	keyCluster   = "CLUSTER_ID"
	keyLabels    = "LABELS"
	keyOwner     = "OWNER"

	labelCanonicalName     = "service.istio.io/canonical-name"
	labelCanonicalRevision = "service.istio.io/canonical-revision"
	labelApp               = "app"
	labelVersion           = "version"
)

// workloadOf reads a Workload from a metadata map (node metadata, or a
// peer's struct as Go values).
func workloadOf(md map[string]any) Workload {
	str := func(m map[string]any, k string) string {
		s, _ := m[k].(string)
		return s
	}
	w := Workload{Name: str(md, keyName), Namespace: str(md, keyNamespace), WorkloadName: str(md, keyWorkload),
		Cluster: str(md, keyCluster), Owner: str(md, keyOwner)}
	if labels, ok := md[keyLabels].(map[string]any); ok {
		w.CanonicalName, w.CanonicalRevision = str(labels, labelCanonicalName), str(labels, labelCanonicalRevision)
		w.App, w.Version = str(labels, labelApp), str(labels, labelVersion)
	}
	return w
}

// localWorkload is the proxy's own workload, from its node.
func localWorkload(n *config.Node) Workload {
	if n == nil {
		return Workload{}
	}
	w := workloadOf(n.Metadata)
	w.ID = n.ID
	return w
}

// encode serializes w as Istio does for x-envoy-peer-metadata: the
// deterministic protobuf encoding of a google.protobuf.Struct, in
// standard base64.
func (w Workload) encode() (string, error) {
	b, err := w.marshal()
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// marshal is the deterministic protobuf encoding of w's Struct.
func (w Workload) marshal() ([]byte, error) {
	m := map[string]any{}
	set := func(dst map[string]any, k, v string) {
		if v != "" {
			dst[k] = v
		}
	}
	set(m, keyName, w.Name)
	set(m, keyNamespace, w.Namespace)
	set(m, keyWorkload, w.WorkloadName)
	set(m, keyCluster, w.Cluster)
	set(m, keyOwner, w.Owner)
	labels := map[string]any{}
	set(labels, labelCanonicalName, w.CanonicalName)
	set(labels, labelCanonicalRevision, w.CanonicalRevision)
	set(labels, labelApp, w.App)
	set(labels, labelVersion, w.Version)
	m[keyLabels] = labels
	st, err := structpb.NewStruct(m)
	if err != nil {
		return nil, err
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(st)
}

// decodeWorkload reads a peer's x-envoy-peer-metadata value.
func decodeWorkload(v string) (Workload, error) {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		if b, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(v, "=")); err != nil {
			return Workload{}, errors.New("istio: peer metadata: not base64")
		}
	}
	st := &structpb.Struct{}
	if err := proto.Unmarshal(b, st); err != nil {
		return Workload{}, fmt.Errorf("istio: peer metadata: %w", err)
	}
	return workloadOf(st.AsMap()), nil
}
