package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sluice-proxy/sluice/xds"
)

// istioGenDir holds the xDS that istiod's own code generated for
// productpage-v1's sidecar in a bookinfo mesh, and the bootstrap
// pilot-agent's code wrote for it (tools/istiogen; README.md there).
const istioGenDir = "../../xds/testdata/istio-generated"

// istioGenResolver resolves the types of the Anys in the generated JSON:
// those this binary links from go-control-plane, and the others (Istio's
// own filter configs, Envoy extensions nothing here imports) from the
// descriptors the generator saved beside the resources, as dynamic
// messages. Either way an Any ends up holding the bytes istiod sent.
type istioGenResolver struct{ local *protoregistry.Types }

func (r istioGenResolver) FindMessageByName(n protoreflect.FullName) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(n); err == nil {
		return mt, nil
	}
	return r.local.FindMessageByName(n)
}

func (r istioGenResolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByURL(url); err == nil {
		return mt, nil
	}
	return r.local.FindMessageByURL(url)
}

func (r istioGenResolver) FindExtensionByName(f protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(f)
}

func (r istioGenResolver) FindExtensionByNumber(m protoreflect.FullName, f protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(m, f)
}

// fileResolver finds a .proto file linked into this binary, or else one
// of the saved descriptors built so far.
type fileResolver struct{ local *protoregistry.Files }

func (r fileResolver) FindFileByPath(p string) (protoreflect.FileDescriptor, error) {
	if fd, err := protoregistry.GlobalFiles.FindFileByPath(p); err == nil {
		return fd, nil
	}
	return r.local.FindFileByPath(p)
}

func (r fileResolver) FindDescriptorByName(n protoreflect.FullName) (protoreflect.Descriptor, error) {
	if d, err := protoregistry.GlobalFiles.FindDescriptorByName(n); err == nil {
		return d, nil
	}
	return r.local.FindDescriptorByName(n)
}

func newIstioGenResolver(t *testing.T) istioGenResolver {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(istioGenDir, "descriptors.binpb"))
	if err != nil {
		t.Fatal(err)
	}
	set := &descriptorpb.FileDescriptorSet{}
	if err := proto.Unmarshal(b, set); err != nil {
		t.Fatal(err)
	}
	files := new(protoregistry.Files)
	r := istioGenResolver{local: new(protoregistry.Types)}
	var register func(ms protoreflect.MessageDescriptors)
	register = func(ms protoreflect.MessageDescriptors) {
		for i := 0; i < ms.Len(); i++ {
			md := ms.Get(i)
			if err := r.local.RegisterMessage(dynamicpb.NewMessageType(md)); err != nil {
				t.Fatal(err)
			}
			register(md.Messages())
		}
	}
	// Dependencies come first in the set.
	for _, fdp := range set.GetFile() {
		if _, err := protoregistry.GlobalFiles.FindFileByPath(fdp.GetName()); err == nil {
			continue
		}
		fd, err := protodesc.NewFile(fdp, fileResolver{files})
		if err != nil {
			t.Fatalf("descriptor %s: %v", fdp.GetName(), err)
		}
		if err := files.RegisterFile(fd); err != nil {
			t.Fatal(err)
		}
		register(fd.Messages())
	}
	return r
}

// loadIstioGenerated decodes the generated resources into go-control-plane
// types, in the control plane snapshot's shape.
func loadIstioGenerated(t *testing.T) map[resourcev3.Type][]types.Resource {
	t.Helper()
	r := newIstioGenResolver(t)
	out := map[resourcev3.Type][]types.Resource{}
	decode := func(file string, typ resourcev3.Type, mk func() proto.Message) {
		b, err := os.ReadFile(filepath.Join(istioGenDir, file))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		var list []json.RawMessage
		if err := json.Unmarshal(b, &list); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for i, raw := range list {
			m := mk()
			if err := (protojson.UnmarshalOptions{Resolver: r}).Unmarshal(raw, m); err != nil {
				t.Fatalf("%s[%d]: %v", file, i, err)
			}
			out[typ] = append(out[typ], m)
		}
	}
	decode("listeners.json", resourcev3.ListenerType, func() proto.Message { return &listenerv3.Listener{} })
	decode("clusters.json", resourcev3.ClusterType, func() proto.Message { return &clusterv3.Cluster{} })
	decode("routes.json", resourcev3.RouteType, func() proto.Message { return &routev3.RouteConfiguration{} })
	decode("endpoints.json", resourcev3.EndpointType, func() proto.Message { return &endpointv3.ClusterLoadAssignment{} })
	return out
}

// Each generated resource, translated on its own: what Sluice refuses,
// by resource and field.
func TestIstioGeneratedTranslate(t *testing.T) {
	res := loadIstioGenerated(t)
	// Alone, a resource cannot have its SDS secrets (they come from the
	// xDS client, TestIstioGeneratedEndToEnd): that error is expected of
	// each one with Istio's mTLS, and only that one.
	check := func(what string, err error) {
		t.Helper()
		if err != nil && !strings.Contains(err.Error(), `from SDS needs the xDS client`) {
			t.Errorf("%s: %v", what, err)
		}
	}
	for _, r := range res[resourcev3.ListenerType] {
		l := r.(*listenerv3.Listener)
		_, err := xds.TranslateListener(l)
		check("listener "+l.GetName(), err)
	}
	for _, r := range res[resourcev3.ClusterType] {
		c := r.(*clusterv3.Cluster)
		_, err := xds.TranslateCluster(c)
		check("cluster "+c.GetName(), err)
	}
	for _, r := range res[resourcev3.RouteType] {
		rc := r.(*routev3.RouteConfiguration)
		if _, err := xds.TranslateRouteConfiguration(rc); err != nil {
			t.Errorf("route %s: %v", rc.GetName(), err)
		}
	}
	if _, err := xds.LoadBootstrapFile(filepath.Join(istioGenDir, "envoy-rev.json")); err != nil {
		t.Errorf("bootstrap: %v", err)
	}
}
