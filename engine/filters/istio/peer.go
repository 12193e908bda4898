package istio

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// The HTTP metadata exchange headers (istio/proxy's peer_metadata filter).
const (
	headerPeerMetadata   = "x-envoy-peer-metadata"
	headerPeerMetadataID = "x-envoy-peer-metadata-id"
)

// Filter state keys (namespace "") under which the peer filter leaves the
// Workload of the downstream and upstream peers, for the stats filter.
const (
	StateDownstreamPeer = "downstream_peer"
	StateUpstreamPeer   = "upstream_peer"
)

// PeerMetadata compiles io.istio.http.peer_metadata.Config, Istio's HTTP
// istio.metadata_exchange filter, for its "istio_headers" methods:
//
//   - downstream discovery reads the client sidecar's identity from the
//     request's x-envoy-peer-metadata(-id) headers, and removes them;
//   - upstream propagation adds this proxy's identity (from its node
//     metadata) to requests, except to clusters Istio marks external when
//     skip_external_clusters is set, or marked disable_mx;
//   - upstream discovery reads the server sidecar's identity from the
//     response, and removes the headers;
//   - downstream propagation answers a request that carried the headers
//     with this proxy's identity.
//
// The "workload_discovery" method (ambient's workload xDS, looked up by
// address) is not implemented: it finds nothing, as in an Envoy without
// the bootstrap extension. Peers found are left in the filter state
// (StateDownstreamPeer, StateUpstreamPeer) for Stats.
type PeerMetadata struct{}

// CompilePerRoute implements stream.Compiler: the filter has no per-route
// config.
func (PeerMetadata) CompilePerRoute(any) (any, error) {
	return nil, fmt.Errorf("istio: %s takes no per-route config", config.TypeIstioPeerMetadata)
}

type peerConfig struct {
	downHeaders, upHeaders     bool // discovery with istio_headers
	downPropagate, upPropagate bool
	skipExternal               bool
	local                      Workload
	value                      string // local, encoded
	clusters                   map[string]map[string]map[string]any
}

// Compile implements stream.Compiler.
func (PeerMetadata) Compile(cfg any) (stream.Factory, error) {
	u, err := undecoded(cfg, config.TypeIstioPeerMetadata)
	if err != nil {
		return nil, err
	}
	pc := &peerConfig{local: localWorkload(u.Node), clusters: u.ClusterMetadata}
	if err := pc.parse(u); err != nil {
		return nil, fmt.Errorf("istio: peer metadata: %w", err)
	}
	if pc.value, err = pc.local.encode(); err != nil {
		return nil, fmt.Errorf("istio: peer metadata: %w", err)
	}
	return stream.FactoryFunc(func(cb stream.Callbacks) stream.Filter { return &peerFilter{c: pc, cb: cb} }), nil
}

// method numbers of DiscoveryMethod (baggage 1, workload_discovery 2,
// istio_headers 3) and PropagationMethod (istio_headers 1).
func (pc *peerConfig) parse(u *config.UndecodedConfig) error {
	if u.Fields != nil {
		// istioHeaders reports whether the list field name has an
		// istio_headers method; a propagation's may skip external clusters.
		istioHeaders := func(name string, propagation bool) (bool, error) {
			l, err := listField(u.Fields, name)
			if err != nil {
				return false, err
			}
			found := false
			for i, e := range l {
				m, ok := e.(map[string]any)
				if !ok {
					return false, fmt.Errorf("%s[%d]: not an object", name, i)
				}
				ih, ok := config.StructField(m, "istio_headers")
				if !ok {
					continue
				}
				found = true
				if ihm, ok := ih.(map[string]any); ok && propagation {
					skip, err := boolField(ihm, "skip_external_clusters")
					if err != nil {
						return false, fmt.Errorf("%s[%d].istio_headers: %w", name, i, err)
					}
					pc.skipExternal = pc.skipExternal || skip
				}
			}
			return found, nil
		}
		var err error
		if pc.downHeaders, err = istioHeaders("downstream_discovery", false); err != nil {
			return err
		}
		if pc.upHeaders, err = istioHeaders("upstream_discovery", false); err != nil {
			return err
		}
		if pc.downPropagate, err = istioHeaders("downstream_propagation", true); err != nil {
			return err
		}
		pc.upPropagate, err = istioHeaders("upstream_propagation", true)
		return err
	}
	return walk(u.Value, func(num protowire.Number, _ uint64, b []byte, isBytes bool) error {
		if !isBytes {
			return nil
		}
		switch num {
		case 1, 2: // downstream_discovery, upstream_discovery
			return walk(b, func(m protowire.Number, _ uint64, _ []byte, _ bool) error {
				if m == 3 {
					if num == 1 {
						pc.downHeaders = true
					} else {
						pc.upHeaders = true
					}
				}
				return nil
			})
		case 3, 4: // downstream_propagation, upstream_propagation
			return walk(b, func(m protowire.Number, _ uint64, ih []byte, _ bool) error {
				if m != 1 {
					return nil
				}
				if num == 3 {
					pc.downPropagate = true
				} else {
					pc.upPropagate = true
				}
				return walk(ih, func(f protowire.Number, v uint64, _ []byte, isBytes bool) error {
					if f == 1 && !isBytes && v != 0 {
						pc.skipExternal = true
					}
					return nil
				})
			})
		}
		return nil
	})
}

type peerFilter struct {
	stream.PassThrough
	c  *peerConfig
	cb stream.Callbacks
	// requestHadPeer: the request carried the headers, so the response
	// answers with ours (istio/proxy answers only peers that ask).
	requestHadID, requestHadPeer bool
}

func (f *peerFilter) OnRequestHeaders(h *header.Map, _ bool) stream.Status {
	if f.c.downHeaders {
		id, v := h.Value(headerPeerMetadataID), h.Value(headerPeerMetadata)
		f.requestHadID, f.requestHadPeer = id != "", v != ""
		if v != "" {
			if w, err := decodeWorkload(v); err == nil {
				w.ID = id
				f.cb.FilterState().Set("", StateDownstreamPeer, w)
			}
		}
		h.Del(headerPeerMetadataID)
		h.Del(headerPeerMetadata)
	}
	if f.c.upPropagate && !f.skip() {
		h.Set(headerPeerMetadataID, f.c.local.ID)
		h.Set(headerPeerMetadata, f.c.value)
	}
	return stream.Continue
}

// skip reports whether the request's cluster must not learn about this
// proxy: PassthroughCluster or one marked external, with
// skip_external_clusters; one marked disable_mx, always.
func (f *peerFilter) skip() bool {
	name := f.cb.ClusterName()
	istio := f.c.clusters[name]["istio"]
	if v, _ := istio["disable_mx"].(bool); v {
		return true
	}
	if !f.c.skipExternal {
		return false
	}
	if name == "PassthroughCluster" {
		return true
	}
	v, _ := istio["external"].(bool)
	return v
}

func (f *peerFilter) OnResponseHeaders(h *header.Map, _ bool) stream.Status {
	if f.c.upHeaders {
		if v := h.Value(headerPeerMetadata); v != "" {
			if w, err := decodeWorkload(v); err == nil {
				w.ID = h.Value(headerPeerMetadataID)
				f.cb.FilterState().Set("", StateUpstreamPeer, w)
			}
		}
		h.Del(headerPeerMetadataID)
		h.Del(headerPeerMetadata)
	}
	if f.c.downPropagate {
		if f.requestHadID {
			h.Set(headerPeerMetadataID, f.c.local.ID)
		}
		if f.requestHadPeer {
			h.Set(headerPeerMetadata, f.c.value)
		}
	}
	return stream.Continue
}
