package main

import (
	"bufio"
	"context"
	ctls "crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
	"github.com/sluice-proxy/sluice/xds"
)

// istioGenDir holds the xDS that istiod's own code generated for
// productpage-v1's sidecar in a bookinfo mesh, and the bootstrap
// pilot-agent's code wrote for it (tools/istiogen; README.md there).
const istioGenDir = "../../xds/testdata/istio-generated"

// istioGenNode is the node the resources were generated for (the
// bootstrap's).
const istioGenNode = "sidecar~10.1.1.1~productpage-v1-5d9b4c9f6b-x7k2p.default~default.svc.cluster.local"

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

func newIstioGenResolver(t *testing.T, dir string) istioGenResolver {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "descriptors.binpb"))
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
	return loadIstioGeneratedDir(t, istioGenDir)
}

// loadIstioGeneratedDir is loadIstioGenerated for the resources in dir
// (the sidecar's, or the gateway's).
func loadIstioGeneratedDir(t *testing.T, dir string) map[resourcev3.Type][]types.Resource {
	t.Helper()
	r := newIstioGenResolver(t, dir)
	out := map[resourcev3.Type][]types.Resource{}
	decode := func(file string, typ resourcev3.Type, mk func() proto.Message) {
		b, err := os.ReadFile(filepath.Join(dir, file))
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
	decode("secrets.json", resourcev3.SecretType, func() proto.Message { return &tlsv3.Secret{} })
	return out
}

// Each generated resource (the sidecar's and the ingress gateway's),
// translated on its own: what Sluice refuses, by resource and field.
func TestIstioGeneratedTranslate(t *testing.T) {
	for _, dir := range []string{istioGenDir, istioGatewayGenDir} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			res := loadIstioGeneratedDir(t, dir)
			// Alone, a resource cannot have its SDS secrets (they come from
			// the xDS client, the end-to-end tests): that error is expected
			// of each one with Istio's mTLS, and only that one.
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
			if _, err := xds.LoadBootstrapFile(filepath.Join(dir, "envoy-rev.json")); err != nil {
				t.Errorf("bootstrap: %v", err)
			}
		})
	}
}

// xdsRequests records what the proxy sent on its delta ADS stream: per
// type, the ACKs (a response nonce, no error) and the NACKs (error_detail).
type xdsRequests struct {
	mu    sync.Mutex
	acks  map[string]int
	nacks []string
}

func (x *xdsRequests) record(req interface {
	GetResponseNonce() string
	GetTypeUrl() string
	GetErrorDetail() *status.Status
}) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if req.GetResponseNonce() == "" {
		return
	}
	if d := req.GetErrorDetail(); d != nil {
		x.nacks = append(x.nacks, fmt.Sprintf("%s: %s", req.GetTypeUrl(), d.GetMessage()))
		return
	}
	x.acks[req.GetTypeUrl()]++
}

func (x *xdsRequests) state() (map[string]int, []string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return maps.Clone(x.acks), slices.Clone(x.nacks)
}

// serveRecording is serveGRPC, recording the proxy's requests (delta ADS,
// or state-of-the-world SDS).
func serveRecording(t *testing.T, path string, cache cachev3.SnapshotCache, sds bool) *xdsRequests {
	t.Helper()
	rec := &xdsRequests{acks: map[string]int{}}
	serveGRPC(t, path, cache, sds, serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			rec.record(req)
			return nil
		},
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			rec.record(req)
			return nil
		},
	})
	return rec
}

// meshBackend is one reviews pod as its sidecar presents it to another:
// mTLS with the workload certificate of reviews' service account, asking
// for the caller's. It answers its name, and records what the caller's
// sidecar sent: SNI, the client certificate's SPIFFE ID, hits per path.
type meshBackend struct {
	name string
	port int
	mu   sync.Mutex
	sni  map[string]int
	peer map[string]int
	hits map[string]int
	hdrs map[string]http.Header // the last request's, per path
}

func newMeshBackend(t *testing.T, name string, ca *tlstest.CA, leaf *tlstest.Leaf) *meshBackend {
	t.Helper()
	b := &meshBackend{name: name, sni: map[string]int{}, peer: map[string]int{}, hits: map[string]int{}, hdrs: map[string]http.Header{}}
	cfg := &ctls.Config{
		Certificates: []ctls.Certificate{leaf.TLSCertificate(t)},
		ClientAuth:   ctls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
		// No ALPN: Istio's protocols (istio-http/1.1, istio-peer-exchange)
		// are for the peer's sidecar; without an answer the connection
		// is HTTP/1.1, which is what the app behind it speaks.
		GetConfigForClient: func(hello *ctls.ClientHelloInfo) (*ctls.Config, error) {
			b.mu.Lock()
			b.sni[hello.ServerName]++
			b.mu.Unlock()
			return nil, nil
		},
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.port = tcp.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.hits[r.URL.Path]++
		b.hdrs[r.URL.Path] = r.Header.Clone()
		n := b.hits[r.URL.Path]
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			for _, u := range r.TLS.PeerCertificates[0].URIs {
				b.peer[u.String()]++
			}
		}
		b.mu.Unlock()
		switch {
		case r.URL.Path == "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		case strings.HasPrefix(r.URL.Path, "/flaky/") && n == 1:
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, name)
	})}
	go srv.Serve(ctls.NewListener(tcp, cfg))
	t.Cleanup(func() { srv.Close() })
	return b
}

// header is the last request's to path.
func (b *meshBackend) header(path string) http.Header {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hdrs[path]
}

func (b *meshBackend) count(m map[string]int, k string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return m[k]
}

// TestIstioGeneratedEndToEnd runs Sluice as productpage-v1's sidecar on the
// bootstrap pilot-agent's code wrote and the xDS istiod's code generated
// (xds/testdata/istio-generated), served unchanged but for what the test
// machine needs: the bootstrap's sockets and ports are this test's; the
// virtualOutbound and virtualInbound listeners bind free loopback ports
// instead of 15001 and 15006; and every endpoint's pod IP (10.1.x.x) is
// rewritten to a loopback server standing in for that pod (reviews v1, v2,
// v3; the others to a port where nothing listens). Sluice must ACK every
// response. Then traffic takes Istio's outbound path: a connection to
// virtualOutbound is handed to 0.0.0.0_9080 by its original destination
// (the reviews service's, given by a test hook in place of iptables), and
// the VirtualService's header match and weighted subsets, its retry and
// timeout, and ISTIO_MUTUAL (the workload certificate from an SDS server
// standing in for pilot-agent's) must work as istiod configured them.
func TestIstioGeneratedEndToEnd(t *testing.T) {
	dir := shortTempDir(t)
	ca := tlstest.NewCA(t, "cluster.local")
	reviewsLeaf := ca.Issue(t, "reviews.default.svc.cluster.local", "spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
	productpageLeaf := ca.Issue(t, "productpage.default.svc.cluster.local", "spiffe://cluster.local/ns/default/sa/bookinfo-productpage")
	backends := map[string]*meshBackend{}
	for _, v := range []string{"v1", "v2", "v3"} {
		backends[v] = newMeshBackend(t, "reviews-"+v, ca, reviewsLeaf)
	}
	podPorts := map[string]int{ // tools/istiogen/mesh.go's pods
		"10.1.4.1": backends["v1"].port,
		"10.1.4.2": backends["v2"].port,
		"10.1.4.3": backends["v3"].port,
	}
	nowhere := freePort(t)

	res := loadIstioGenerated(t)
	outbound, inbound := freePort(t), freePort(t)
	for _, r := range res[resourcev3.ListenerType] {
		l := r.(*listenerv3.Listener)
		sa := l.GetAddress().GetSocketAddress()
		switch l.GetName() {
		case "virtualOutbound":
			sa.Address, sa.PortSpecifier = "127.0.0.1", &corev3.SocketAddress_PortValue{PortValue: uint32(outbound)}
		case "virtualInbound":
			sa.Address, sa.PortSpecifier = "127.0.0.1", &corev3.SocketAddress_PortValue{PortValue: uint32(inbound)}
		}
	}
	rewriteEndpoints(t, res, podPorts, nowhere)

	ads := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	setSnapshot(t, ads, istioGenNode, "1", res)
	rec := serveRecording(t, filepath.Join(dir, "xds.sock"), ads, false)
	sds := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	setSnapshot(t, sds, istioGenNode, "1", workloadSecrets(productpageLeaf, ca))
	sdsRec := serveRecording(t, filepath.Join(dir, "sds.sock"), sds, true)

	// The redirect iptables would do: a connection to virtualOutbound
	// from 127.0.0.2 was for the reviews service. Its address here is on
	// loopback, where nothing listens on 9080: a connection not handed to
	// 0.0.0.0_9080 would be refused, never leave the machine.
	// A connection to virtualInbound was for productpage's app on 9080:
	// its pod address here is a loopback one (the inbound cluster is
	// ORIGINAL_DST and dials it), where the test's app listens.
	reviewsVIP := netip.MustParseAddrPort("127.255.0.13:9080")
	appAddr := netip.MustParseAddrPort("127.10.1.1:9080")
	app := make(chan *http.Request, 1)
	if ln, err := net.Listen("tcp", appAddr.String()); err == nil {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case app <- r:
			default:
			}
			io.WriteString(w, "productpage")
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	} else {
		appAddr = netip.AddrPort{} // the inbound subtest is skipped
	}
	restore := server.SetOriginalDstLookup(func(c net.Conn) (netip.AddrPort, error) {
		local, remote := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
		switch {
		case local.Port == outbound && remote.IP.Equal(net.IPv4(127, 0, 0, 2)):
			return reviewsVIP, nil
		case local.Port == inbound && appAddr.IsValid():
			return appAddr, nil
		}
		return local.AddrPort(), nil
	})
	t.Cleanup(restore)

	admin, agent, prom, health := freePort(t), freePort(t), freePort(t), freePort(t)
	_, stderr, done := runIstioSidecar(t, filepath.Join(istioGenDir, "envoy-rev.json"), dir, admin, agent, prom, health, "warning")

	// (a) Every type istiod sent is ACKed, none NACKed; so are the
	// secrets (SDS), which the listeners and clusters take in only when
	// they arrive.
	want := []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.EndpointType}
	nacked := func() string {
		_, nacks := rec.state()
		_, sdsNACKs := sdsRec.state()
		return strings.Join(append(nacks, sdsNACKs...), "\n")
	}
	noNACKs := func() {
		t.Helper()
		if n := nacked(); n != "" {
			t.Fatalf("Sluice NACKed istiod's resources:\n%s", n)
		}
	}
	t.Cleanup(func() { // nor later, while traffic ran
		if n := nacked(); n != "" {
			t.Errorf("Sluice NACKed istiod's resources:\n%s", n)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		noNACKs()
		acks, _ := rec.state()
		sdsACKs, _ := sdsRec.state()
		if !slices.ContainsFunc(want, func(typ string) bool { return acks[typ] == 0 }) && sdsACKs[resourcev3.SecretType] > 0 {
			break
		}
		select {
		case <-done:
			t.Fatalf("sluice exited:\n%s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ACKs after 30 s: %v, SDS %v (want each of %v, and SDS)", acks, sdsACKs, want)
		}
		time.Sleep(20 * time.Millisecond)
	}

	mesh := func() *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", outbound))
			},
		}}
	}()
	get := func(path string, jason bool) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://reviews:9080"+path, nil)
		if jason {
			req.Header.Set("End-User", "jason")
		}
		resp, err := mesh.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}

	// Ready once the listeners, clusters, endpoints and secrets are
	// applied: jason reaches v2 over mTLS.
	deadline = time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("GET", "http://reviews:9080/ready", nil)
		req.Header.Set("End-User", "jason")
		req.Close = true
		resp, err := mesh.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && string(body) == "reviews-v2" {
				break
			}
			err = fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("reviews never answered through the generated config: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	t.Run("end-user jason to v2", func(t *testing.T) {
		for i := 0; i < 20; i++ {
			if code, body := get("/reviews/jason", true); code != 200 || body != "reviews-v2" {
				t.Fatalf("jason: %d %q, want 200 reviews-v2", code, body)
			}
		}
		if n := backends["v1"].count(backends["v1"].hits, "/reviews/jason") + backends["v3"].count(backends["v3"].hits, "/reviews/jason"); n != 0 {
			t.Fatalf("%d of jason's requests reached v1 or v3", n)
		}
	})

	t.Run("others 50/50 to v1 and v3", func(t *testing.T) {
		seen := map[string]int{}
		for i := 0; i < 100; i++ {
			code, body := get("/reviews/other", false)
			if code != 200 || (body != "reviews-v1" && body != "reviews-v3") {
				t.Fatalf("request %d: %d %q, want 200 from v1 or v3", i, code, body)
			}
			seen[body]++
		}
		// 50/50 over 100 requests: fewer than 20 of either is a 1e-9 chance.
		if seen["reviews-v1"] < 20 || seen["reviews-v3"] < 20 {
			t.Fatalf("saw %v, want about 50/50", seen)
		}
		if n := backends["v2"].count(backends["v2"].hits, "/reviews/other"); n != 0 {
			t.Fatalf("%d requests without end-user reached v2", n)
		}
	})

	t.Run("ISTIO_MUTUAL", func(t *testing.T) {
		// Each subset's connections carry Istio's SNI for the subset and
		// productpage's workload certificate (from SDS "default"); the
		// backends' certificate was checked against the DestinationRule's
		// SAN (reviews' service account) and ROOTCA, or nothing would
		// have answered.
		for _, v := range []string{"v1", "v2", "v3"} {
			b := backends[v]
			sni := "outbound_.9080_." + v + "_.reviews.default.svc.cluster.local"
			if b.count(b.sni, sni) == 0 {
				b.mu.Lock()
				t.Errorf("%s: no handshake with SNI %s: %v", v, sni, b.sni)
				b.mu.Unlock()
			}
			if b.count(b.peer, "spiffe://cluster.local/ns/default/sa/bookinfo-productpage") == 0 {
				t.Errorf("%s: productpage's SPIFFE ID never seen", v)
			}
		}
	})

	t.Run("retry on 503", func(t *testing.T) {
		// Each /flaky/ path fails once on whichever pod gets it first;
		// the route retries gateway errors (3 attempts).
		for i := 0; i < 10; i++ {
			path := fmt.Sprintf("/flaky/%d", i)
			code, body := get(path, false)
			if code != 200 || (body != "reviews-v1" && body != "reviews-v3") {
				t.Fatalf("%s: %d %q, want 200 after a retry", path, code, body)
			}
			if n := backends["v1"].count(backends["v1"].hits, path) + backends["v3"].count(backends["v3"].hits, path); n < 2 {
				t.Fatalf("%s: %d attempts, want the 503 retried", path, n)
			}
		}
	})

	t.Run("inbound mTLS and the peer's trust domain", func(t *testing.T) {
		if !appAddr.IsValid() {
			t.Skip("127.10.1.1:9080 is taken")
		}
		// A peer sidecar's connection to productpage: STRICT mTLS, Istio's
		// ALPN, a certificate of the mesh's trust domain.
		peer := func(leaf *tlstest.Leaf) (int, string, error) {
			conn, err := ctls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", inbound), &ctls.Config{
				Certificates: []ctls.Certificate{leaf.TLSCertificate(t)},
				ServerName:   "outbound_.9080_._.productpage.default.svc.cluster.local",
				NextProtos:   []string{"istio-http/1.1", "istio", "http/1.1"},
				// Istio checks the server's SPIFFE ID, not a host name.
				InsecureSkipVerify: true,
			})
			if err != nil {
				return 0, "", err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if u := conn.ConnectionState().PeerCertificates[0].URIs; len(u) != 1 || u[0].String() != "spiffe://cluster.local/ns/default/sa/bookinfo-productpage" {
				t.Fatalf("the sidecar presented %v", u)
			}
			if _, err := io.WriteString(conn, "GET /productpage HTTP/1.1\r\nHost: productpage:9080\r\nConnection: close\r\n\r\n"); err != nil {
				return 0, "", err
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				return 0, "", err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(body), nil
		}
		ratings := ca.Issue(t, "ratings.default.svc.cluster.local", "spiffe://cluster.local/ns/default/sa/bookinfo-ratings")
		code, body, err := peer(ratings)
		if err != nil || code != 200 || body != "productpage" {
			t.Fatalf("from ratings' sidecar: %d %q %v", code, body, err)
		}
		select {
		case r := <-app:
			// forward_client_cert_details: the peer's identity; from
			// 127.0.0.6 (upstream_bind_config).
			if x := r.Header.Get("X-Forwarded-Client-Cert"); !strings.Contains(x, "URI=spiffe://cluster.local/ns/default/sa/bookinfo-ratings") {
				t.Fatalf("x-forwarded-client-cert at the app: %q", x)
			}
			if h, _, _ := net.SplitHostPort(r.RemoteAddr); h != "127.0.0.6" {
				t.Fatalf("the app saw a connection from %s, want 127.0.0.6", h)
			}
		default:
			t.Fatal("the app saw no request")
		}
		// The same CA, another trust domain: refused by the inbound
		// listener's match_subject_alt_names (prefix spiffe://cluster.local/).
		foreign := ca.Issue(t, "ratings.default.svc.other.local", "spiffe://other.local/ns/default/sa/bookinfo-ratings")
		if code, body, err := peer(foreign); err == nil {
			t.Fatalf("a certificate of trust domain other.local was accepted: %d %q", code, body)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		// 3 s route timeout, 1 s per try: 504 well before the backend's 10 s.
		start := time.Now()
		code, body := get("/slow", true)
		if code != 504 {
			t.Fatalf("/slow: %d %q, want 504", code, body)
		}
		if d := time.Since(start); d > 6*time.Second {
			t.Fatalf("/slow answered after %v, want about 3 s", d)
		}
		if n := backends["v2"].count(backends["v2"].hits, "/slow"); n < 2 {
			t.Fatalf("/slow tried %d times, want the per-try timeout retried", n)
		}
	})
}
