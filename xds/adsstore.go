package xds

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// rtype is an xDS resource type. The order is the order of Snapshot.Version
// and of a stream's first requests: clusters before listeners, each before
// what it names, as Envoy asks.
type rtype uint8

const (
	tCluster rtype = iota
	tEndpoint
	tListener
	tRoute
	tSecret
	tExtensionConfig
	numTypes
)

var typeInfo = [numTypes]struct {
	url   string
	short string // in Snapshot.Version and logs
	kind  string // in errors: kind "name"
	// wildcard types are subscribed as a whole (LDS, CDS); the others by
	// the names that listeners and clusters refer to.
	wildcard bool
	msg      proto.Message
}{
	tCluster:         {url: "type.googleapis.com/envoy.config.cluster.v3.Cluster", short: "cds", kind: "cluster", wildcard: true, msg: &clusterv3.Cluster{}},
	tEndpoint:        {url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", short: "eds", kind: "cluster_load_assignment", msg: &endpointv3.ClusterLoadAssignment{}},
	tListener:        {url: "type.googleapis.com/envoy.config.listener.v3.Listener", short: "lds", kind: "listener", wildcard: true, msg: &listenerv3.Listener{}},
	tRoute:           {url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", short: "rds", kind: "route_config", msg: &routev3.RouteConfiguration{}},
	tSecret:          {url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", short: "sds", kind: "secret", msg: &tlsv3.Secret{}},
	tExtensionConfig: {url: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", short: "ecds", kind: "extension_config", msg: &corev3.TypedExtensionConfig{}},
}

func (t rtype) String() string { return typeInfo[t].short }

// typeOf finds a resource type by type URL, whatever its prefix.
func typeOf(url string) (rtype, bool) {
	name := (&anypb.Any{TypeUrl: url}).MessageName()
	for t := range numTypes {
		if typeInfo[t].msg.ProtoReflect().Descriptor().FullName() == name {
			return t, true
		}
	}
	return 0, false
}

// entry is one accepted resource. It is never changed once stored.
type entry struct {
	name    string
	version string // delta: the resource's version; SotW: the response's
	msg     proto.Message
	raw     []byte // the serialized resource, to tell a resend from an update
}

// store is the last accepted resources of each type. A store is never
// changed in place: an update makes a new one that shares the maps of the
// types it does not touch, so rolling back after a NACK is dropping the
// candidate.
type store struct {
	res [numTypes]map[string]*entry
	// version identifies each type's accepted state: a SotW response's
	// version_info; for delta the system_version_info, or a hash of the
	// resources' versions when the server sends none.
	version  [numTypes]string
	received [numTypes]bool
}

func (s *store) get(t rtype, name string) *entry { return s.res[t][name] }

// names returns the sorted names of a type's resources.
func (s *store) names(t rtype) []string { return slices.Sorted(maps.Keys(s.res[t])) }

// update is one response's effect on one type, whichever protocol variant
// it came in.
type update struct {
	typ rtype
	// full: the response holds every resource of the type (SotW LDS and
	// CDS), so those it lacks are removed.
	full    bool
	set     []*entry
	removed []string
	// version is the type's version after the update; "" for delta
	// without system_version_info.
	version string
}

// apply returns the store after u and whether any resource changed. For
// non-wildcard types, resources that are not subscribed are ignored:
// a server may answer a request the client has since superseded.
func (s *store) apply(u update, subscribed map[string]bool) (*store, bool) {
	next := *s
	old := s.res[u.typ]
	m := make(map[string]*entry, len(old)+len(u.set))
	if !u.full {
		maps.Copy(m, old)
	}
	for _, name := range u.removed {
		delete(m, name)
	}
	for _, e := range u.set {
		if !typeInfo[u.typ].wildcard && !subscribed[e.name] {
			continue
		}
		m[e.name] = e
	}
	changed := len(m) != len(old)
	for name, e := range m {
		if o, ok := old[name]; !ok || !bytes.Equal(o.raw, e.raw) {
			changed = true
			break
		}
	}
	next.res[u.typ] = m
	next.received[u.typ] = true
	next.version[u.typ] = u.version
	if u.version == "" {
		next.version[u.typ] = versionHash(m)
	}
	return &next, changed
}

// revert returns the store with resource r as it is in old: its previous
// version, or absent if old has none. The other resources are shared.
func (s *store) revert(r resourceRef, old *store) *store {
	next := *s
	m := maps.Clone(s.res[r.typ])
	if e := old.get(r.typ, r.name); e != nil {
		m[r.name] = e
	} else {
		delete(m, r.name)
	}
	next.res[r.typ] = m
	return &next
}

// sameResources reports whether s holds exactly the entries of o.
func (s *store) sameResources(o *store) bool {
	for t := range numTypes {
		if len(s.res[t]) != len(o.res[t]) {
			return false
		}
		for name, e := range s.res[t] {
			if o.res[t][name] != e {
				return false
			}
		}
	}
	return true
}

// prune drops the resources of non-wildcard types that are no longer
// subscribed.
func (s *store) prune(subs *[numTypes]map[string]bool) *store {
	next := *s
	pruned := false
	for t := range numTypes {
		if typeInfo[t].wildcard {
			continue
		}
		cloned := false
		for name := range s.res[t] {
			if subs[t][name] {
				continue
			}
			if !cloned {
				next.res[t], cloned, pruned = maps.Clone(s.res[t]), true, true
			}
			delete(next.res[t], name)
		}
	}
	if !pruned {
		return s
	}
	return &next
}

// versionHash identifies a set of delta resources by their versions.
func versionHash(m map[string]*entry) string {
	h := sha256.New()
	for _, name := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(h, "%s\x00%s\x00", name, m[name].version)
	}
	return hex.EncodeToString(h.Sum(nil)[:6])
}

// decodeResource decodes one resource of type t from a response: a
// resource of that type, or an envoy.service.discovery.v3.Resource
// wrapping one (what servers send with TTLs). A nil entry with no error is
// a TTL heartbeat, which carries no resource. The resource's validation
// rules are checked here, once, rather than at each assembly.
func decodeResource(t rtype, a *anypb.Any, version string) (*entry, error) {
	if a.MessageName() == "envoy.service.discovery.v3.Resource" {
		r := &discoveryv3.Resource{}
		if err := a.UnmarshalTo(r); err != nil {
			return nil, fmt.Errorf("decoding %s: %w", a.GetTypeUrl(), err)
		}
		if r.GetResource() == nil {
			return nil, nil
		}
		a = r.GetResource()
	}
	want := typeInfo[t].msg.ProtoReflect().Descriptor().FullName()
	if a.MessageName() != want {
		return nil, fmt.Errorf("type %q in a response of type %s", a.GetTypeUrl(), want)
	}
	m := typeInfo[t].msg.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", want, err)
	}
	name := resourceName(t, m)
	if name == "" {
		return nil, errors.New(typeInfo[t].kind + " without a name")
	}
	if err := validateMsg(m); err != nil {
		return nil, inNamed(err, typeInfo[t].kind, name)
	}
	return &entry{name: name, version: version, msg: m, raw: a.GetValue()}, nil
}

// resourceName is the name a resource is subscribed by.
func resourceName(t rtype, m proto.Message) string {
	field := protoreflect.Name("name")
	if t == tEndpoint {
		field = "cluster_name"
	}
	r := m.ProtoReflect()
	return r.Get(r.Descriptor().Fields().ByName(field)).String()
}
