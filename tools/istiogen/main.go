// Command istiogen runs istiod's discovery server in process (Istio's own
// test harness, istio.io/istio/pilot/test/xds.NewFakeDiscoveryServer, over
// the fake Kubernetes client) with a bookinfo-like mesh, connects to it
// over delta ADS as Envoy would with the node pilot-agent makes for
// productpage-v1's sidecar (or, with -gateway, for the ingress gateway in
// router mode: gateway.go), and writes every resource istiod sends, and
// the bootstrap pilot-agent writes for that proxy, to a directory. See
// README.md.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/pilot/pkg/config/kube/crd"
	xdsfake "istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/bootstrap"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/security"
	"istio.io/istio/pkg/test"
)

// The xDS types, in the order Envoy subscribes to them.
const (
	typeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeEndpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	typeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
	typeRoute    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	typeECDS     = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	typeSecret   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// files names the file each type's resources are written to.
var files = map[string]string{
	typeCluster:  "clusters.json",
	typeEndpoint: "endpoints.json",
	typeListener: "listeners.json",
	typeRoute:    "routes.json",
	typeECDS:     "extension_configs.json",
	typeSecret:   "secrets.json",
}

func main() {
	out := flag.String("out", "", "directory to write the resources to")
	gateway := flag.Bool("gateway", false, "generate for the ingress gateway (router mode; gateway.go) instead of productpage-v1's sidecar")
	tmpl := flag.String("bootstrap-template", "", "pilot-agent's bootstrap template (default: tools/packaging/common/envoy_bootstrap.json of the istio.io/istio module)")
	flag.Parse()
	if *out == "" {
		log.Fatal("-out is required")
	}
	if *tmpl == "" {
		dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio").Output()
		if err != nil {
			log.Fatalf("finding the istio.io/istio module: %v", err)
		}
		*tmpl = filepath.Join(strings.TrimSpace(string(dir)), "tools/packaging/common/envoy_bootstrap.json")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	err := test.Wrap(func(t test.Failer) { generate(t, *out, *tmpl, *gateway) })
	if err != nil {
		log.Fatal(err)
	}
}

// sidecarEnv is the environment the sidecar injector gives istio-proxy in
// productpage-v1's pod (the variables pilot-agent turns into node
// metadata).
func sidecarEnv() []string {
	return []string{
		"POD_NAME=" + productpagePod,
		"POD_NAMESPACE=default",
		"INSTANCE_IP=" + productpageIP,
		"SERVICE_ACCOUNT=bookinfo-productpage",
		"HOST_IP=192.168.49.2",
		"ISTIO_CPU_LIMIT=0",
		"PROXY_CONFIG={}",
		`ISTIO_META_POD_PORTS=[{"containerPort":9080,"protocol":"TCP"}]`,
		"ISTIO_META_APP_CONTAINERS=productpage",
		"GOMEMLIMIT=1073741824",
		"GOMAXPROCS=2",
		"ISTIO_META_CLUSTER_ID=Kubernetes",
		"ISTIO_META_NODE_NAME=node-1",
		"ISTIO_META_INTERCEPTION_MODE=REDIRECT",
		"ISTIO_META_WORKLOAD_NAME=productpage-v1",
		"ISTIO_META_OWNER=kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
		"ISTIO_META_MESH_ID=cluster.local",
		"TRUST_DOMAIN=cluster.local",
		// The version pilot-agent reports is its own build's; this
		// module's istio is master after the 1.31 branch point.
		"ISTIO_META_ISTIO_VERSION=1.31-dev",
		// The injector's downward-API labels file (/etc/istio/pod/labels)
		// is absent here: the pod's labels are passed the older way.
		`ISTIO_METAJSON_LABELS={"app":"productpage","version":"v1","security.istio.io/tlsMode":"istio","service.istio.io/canonical-name":"productpage","service.istio.io/canonical-revision":"v1"}`,
	}
}

func kubeObjects() string {
	var b strings.Builder
	for _, s := range services {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: default
  labels: {app: %[1]s, service: %[1]s}
spec:
  clusterIP: %[2]s
  selector: {app: %[1]s}
  ports:
  - name: http
    port: 9080
    targetPort: 9080
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %[1]s-abcde
  namespace: default
  labels: {kubernetes.io/service-name: %[1]s, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
addressType: IPv4
ports:
- name: http
  port: 9080
  protocol: TCP
endpoints:
`, s.name, s.clusterIP)
		for _, p := range pods {
			if p.app != s.name {
				continue
			}
			fmt.Fprintf(&b, `- addresses: [%s]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-1
  targetRef: {kind: Pod, name: %s, namespace: default}
`, p.ip, p.name)
		}
	}
	for _, p := range pods {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: default
  labels:
    app: %[3]s
    version: %[4]s
    security.istio.io/tlsMode: istio
    service.istio.io/canonical-name: %[3]s
    service.istio.io/canonical-revision: %[4]s
  annotations:
    sidecar.istio.io/status: '{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy","istio-data","istio-podinfo","istio-token","istiod-ca-cert"],"imagePullSecrets":null}'
spec:
  serviceAccountName: %[5]s
  nodeName: node-1
  containers:
  - name: %[3]s
    image: docker.io/istio/examples-bookinfo-%[3]s-%[4]s:1.20.2
    ports:
    - containerPort: 9080
      protocol: TCP
  - name: istio-proxy
    image: docker.io/istio/proxyv2:1.31.0
status:
  phase: Running
  podIP: %[2]s
  podIPs:
  - ip: %[2]s
  hostIP: 192.168.49.2
  conditions:
  - type: Ready
    status: "True"
`, p.name, p.ip, p.app, p.version, p.sa)
	}
	return b.String() + "\n"
}

func generate(t test.Failer, out, tmpl string, gateway bool) {
	// The proxy: productpage-v1's sidecar, or the ingress gateway (the
	// mesh then has its objects too).
	id, env, ip := productpageNode, sidecarEnv(), productpageIP
	cfg, kube := istioConfig, kubeObjects()
	if gateway {
		id, env, ip = gatewayNode, gatewayEnv(), gatewayIP
		cfg, kube = istioConfig+gatewayConfig, kube+gatewayKubeObjects()
	}
	// The node pilot-agent would make, and the bootstrap it would write.
	pc := mesh.DefaultProxyConfig()
	pc.DiscoveryAddress = "istiod.istio-system.svc:15012"
	node, err := bootstrap.GetNodeMetaData(bootstrap.MetadataOptions{
		ID:                  id,
		Envs:                env,
		InstanceIPs:         []string{ip},
		ProxyConfig:         pc,
		PilotSubjectAltName: []string{"istiod.istio-system.svc"},
		EnvoyStatusPort:     15021,
		EnvoyPrometheusPort: 15090,
		// pilot-agent's default (WORKLOAD_IDENTITY_SOCKET_FILE).
		WorkloadIdentitySocketFile: security.DefaultWorkloadIdentitySocketFile,
	})
	if err != nil {
		t.Fatalf("node metadata: %v", err)
	}
	var boot bytes.Buffer
	if err := bootstrap.New(bootstrap.Config{Node: node}).WriteTo(tmpl, &boot); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, boot.Bytes(), "", "  "); err != nil {
		t.Fatalf("the bootstrap is not JSON: %v", err)
	}
	pretty.WriteByte('\n')
	write(t, filepath.Join(out, "envoy-rev.json"), pretty.Bytes())

	// Envoy's node is the bootstrap's.
	var bs struct {
		Node json.RawMessage `json:"node"`
	}
	if err := json.Unmarshal(boot.Bytes(), &bs); err != nil {
		t.Fatal(err)
	}
	xdsNode := &corev3.Node{}
	if err := protojson.Unmarshal(bs.Node, xdsNode); err != nil {
		t.Fatalf("the bootstrap's node: %v", err)
	}
	xdsNode.UserAgentName = "envoy"

	// Istio's config, parsed as the harness would, with the Domain
	// istiod's Kubernetes config client gives every object (the harness
	// leaves it empty, and then the short host "reviews" would resolve to
	// "reviews.default", no service).
	configs, _, err := crd.ParseInputs(cfg)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	for i := range configs {
		configs[i].Domain = "cluster.local"
		configs[i].CreationTimestamp = time.Now()
	}
	// The mesh config of a Helm install with the demo profile (what
	// bookinfo's guide uses): prometheus metrics by default (the
	// istio-discovery chart's configmap.yaml), access logs to stdout.
	mc := mesh.DefaultMeshConfig()
	mc.DefaultProviders = &meshconfig.MeshConfig_DefaultProviders{Metrics: []string{"prometheus"}}
	mc.AccessLogFile = "/dev/stdout"
	s := xdsfake.NewFakeDiscoveryServer(t, xdsfake.FakeOptions{
		MeshConfig:             mc,
		Configs:                configs,
		KubernetesObjectString: kube,
		// The gateway's service account may read Secrets in its
		// namespace (the istio-ingress chart's Role); the fake client
		// answers no SubjectAccessReview otherwise.
		DisableSecretAuthorization: gateway,
	})
	if gateway {
		// istiod serves a gateway's credentials (SDS on the ADS stream)
		// only to a proxy whose identity it verified, in a cluster from
		// the client certificate on 15012. The harness connects in
		// plaintext: the identity is given as that certificate would.
		security.AuthPlaintext = true
		s.Discovery.Authenticators = []security.Authenticator{identity("spiffe://cluster.local/ns/istio-system/sa/" + gatewaySA)}
	}

	conn, err := grpc.NewClient("passthrough:///istiod",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return s.BufListener.Dial() }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}

	got := map[string]map[string]*discoveryv3.Resource{}
	subscribed := map[string][]string{}
	var order []string
	send := func(req *discoveryv3.DeltaDiscoveryRequest) {
		if len(order) == 0 {
			req.Node = xdsNode
		}
		if err := stream.Send(req); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	subscribe := func(typ string, names []string) {
		var add []string
		for _, n := range names {
			if !slices.Contains(subscribed[typ], n) {
				add = append(add, n)
				subscribed[typ] = append(subscribed[typ], n)
			}
		}
		if len(add) > 0 {
			send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesSubscribe: add})
		}
	}
	// Envoy: CDS and LDS are wildcard subscriptions.
	send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeCluster})
	order = append(order, typeCluster)
	send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeListener})
	order = append(order, typeListener)

	responses := make(chan *discoveryv3.DeltaDiscoveryResponse)
	errs := make(chan error, 1)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				errs <- err
				return
			}
			select {
			case responses <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	var trace []string
	for quiet := false; !quiet; {
		select {
		case r := <-responses:
			typ := r.GetTypeUrl()
			if got[typ] == nil {
				got[typ] = map[string]*discoveryv3.Resource{}
				if !slices.Contains(order, typ) {
					order = append(order, typ)
				}
			}
			for _, res := range r.GetResources() {
				got[typ][res.GetName()] = res
			}
			for _, n := range r.GetRemovedResources() {
				delete(got[typ], n)
			}
			trace = append(trace, fmt.Sprintf("%s: %d resources, %d removed", typ, len(r.GetResources()), len(r.GetRemovedResources())))
			send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: r.GetNonce()})
			switch typ {
			case typeCluster:
				subscribe(typeEndpoint, edsNames(t, got[typ]))
			case typeListener:
				rds, ecds := listenerDeps(t, got[typ])
				subscribe(typeRoute, rds)
				subscribe(typeECDS, ecds)
				// Envoy asks the ADS stream for the secrets a TLS
				// context names with an ads sds_config (a gateway's
				// credentialName).
				subscribe(typeSecret, adsSecrets(t, got[typ]))
			}
		case err := <-errs:
			t.Fatalf("ADS stream: %v", err)
		case <-time.After(3 * time.Second):
			quiet = true
		}
	}
	for _, l := range trace {
		fmt.Println(l)
	}

	var anyTypes []string
	for _, typ := range order {
		name, ok := files[typ]
		if !ok {
			name = strings.ReplaceAll(strings.TrimPrefix(typ, "type.googleapis.com/"), ".", "_") + ".json"
		}
		var names []string
		for n := range got[typ] {
			names = append(names, n)
		}
		sort.Strings(names)
		var items [][]byte
		for _, n := range names {
			m, err := got[typ][n].GetResource().UnmarshalNew()
			if err != nil {
				t.Fatalf("%s %s: %v", typ, n, err)
			}
			b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
			if err != nil {
				t.Fatalf("%s %s: %v", typ, n, err)
			}
			// protojson varies its spacing from build to build on purpose:
			// encoding/json's indentation keeps the files stable.
			var ind bytes.Buffer
			if err := json.Indent(&ind, b, "  ", "  "); err != nil {
				t.Fatal(err)
			}
			items = append(items, append([]byte("  "), ind.Bytes()...))
			anyTypes = append(anyTypes, typeURLs(m)...)
		}
		doc := append([]byte("[\n"), bytes.Join(items, []byte(",\n"))...)
		doc = append(doc, "\n]\n"...)
		write(t, filepath.Join(out, name), doc)
		fmt.Printf("%s: %d resources -> %s\n", typ, len(names), name)
	}
	write(t, filepath.Join(out, "descriptors.binpb"), descriptorSet(t, anyTypes))
}

func edsNames(t test.Failer, clusters map[string]*discoveryv3.Resource) []string {
	var names []string
	for _, r := range clusters {
		c := &clusterv3.Cluster{}
		if err := r.GetResource().UnmarshalTo(c); err != nil {
			t.Fatal(err)
		}
		if c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		n := c.GetEdsClusterConfig().GetServiceName()
		if n == "" {
			n = c.GetName()
		}
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func listenerDeps(t test.Failer, listeners map[string]*discoveryv3.Resource) (rds, ecds []string) {
	for _, r := range listeners {
		l := &listenerv3.Listener{}
		if err := r.GetResource().UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		chains := slices.Clone(l.GetFilterChains())
		if l.GetDefaultFilterChain() != nil {
			chains = append(chains, l.GetDefaultFilterChain())
		}
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				if f.GetConfigDiscovery() != nil {
					ecds = append(ecds, f.GetName())
				}
				if f.GetTypedConfig().MessageName() != "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" {
					continue
				}
				h := &hcmv3.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
					t.Fatal(err)
				}
				if n := h.GetRds().GetRouteConfigName(); n != "" {
					rds = append(rds, n)
				}
				for _, hf := range h.GetHttpFilters() {
					if hf.GetConfigDiscovery() != nil {
						ecds = append(ecds, hf.GetName())
					}
				}
			}
		}
	}
	sort.Strings(rds)
	sort.Strings(ecds)
	return slices.Compact(rds), slices.Compact(ecds)
}

var typeURLRe = regexp.MustCompile(`"@type":\s*"type\.googleapis\.com/([^"]+)"`)

// typeURLs lists the message types of every Any in m, at any depth.
func typeURLs(m proto.Message) []string {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range typeURLRe.FindAllSubmatch(b, -1) {
		out = append(out, string(s[1]))
	}
	return out
}

// descriptorSet is the FileDescriptorSet of the files declaring each of
// names and what they import: a reader that has not linked one of these
// types (Istio's own filter configs) can still decode the JSON.
func descriptorSet(t test.Failer, names []string) []byte {
	seen := map[string]bool{}
	set := &descriptorpb.FileDescriptorSet{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imps := fd.Imports()
		for i := 0; i < imps.Len(); i++ {
			add(imps.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	sort.Strings(names)
	for _, n := range slices.Compact(names) {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(n))
		if err != nil {
			t.Fatalf("type %s: %v", n, err)
		}
		add(mt.Descriptor().ParentFile())
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t test.Failer, path string, b []byte) {
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// adsSecrets lists the secrets the listeners' downstream TLS contexts ask
// of the ADS stream (sds_config ads), as Envoy would subscribe to them.
func adsSecrets(t test.Failer, listeners map[string]*discoveryv3.Resource) []string {
	var names []string
	for _, r := range listeners {
		l := &listenerv3.Listener{}
		if err := r.GetResource().UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		chains := slices.Clone(l.GetFilterChains())
		if l.GetDefaultFilterChain() != nil {
			chains = append(chains, l.GetDefaultFilterChain())
		}
		for _, fc := range chains {
			ts := fc.GetTransportSocket().GetTypedConfig()
			if ts == nil || ts.MessageName() != "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext" {
				continue
			}
			d := &tlsv3.DownstreamTlsContext{}
			if err := ts.UnmarshalTo(d); err != nil {
				t.Fatal(err)
			}
			c := d.GetCommonTlsContext()
			scs := slices.Clone(c.GetTlsCertificateSdsSecretConfigs())
			if v := c.GetValidationContextSdsSecretConfig(); v != nil {
				scs = append(scs, v)
			}
			if v := c.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); v != nil {
				scs = append(scs, v)
			}
			for _, sc := range scs {
				if sc.GetSdsConfig().GetAds() != nil {
					names = append(names, sc.GetName())
				}
			}
		}
	}
	sort.Strings(names)
	return slices.Compact(names)
}

// identity authenticates every connection as one SPIFFE identity.
type identity string

func (id identity) Authenticate(security.AuthContext) (*security.Caller, error) {
	return &security.Caller{AuthSource: security.AuthSourceClientCertificate, Identities: []string{string(id)}}, nil
}

func (identity) AuthenticatorType() string { return "istiogen" }
