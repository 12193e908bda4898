package main

import (
	"context"
	ctls "crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
)

// istioGatewayGenDir holds the xDS that istiod's own code generated for
// the ingress gateway (istio-ingressgateway, router mode) with bookinfo's
// Gateway and a VirtualService bound to it, and the gateway's bootstrap
// (tools/istiogen -gateway; README.md there).
const istioGatewayGenDir = "../../xds/testdata/istio-generated/gateway"

// istioGatewayGenNode is the node the resources were generated for.
const istioGatewayGenNode = "router~10.1.1.9~istio-ingressgateway-7c9d8b6f5-k2x4p.istio-system~istio-system.svc.cluster.local"

// The HTTPS server's certificate: Gateway credentialName
// bookinfo-credential, which istiod names for the listener as
// kubernetes://bookinfo-credential, from SDS over ADS (istiod itself
// serves a gateway's credentials, through pilot-agent's XDS proxy; not
// pilot-agent's sds-grpc, which serves the workload certificate and
// roots). The generator recorded istiod's answer (secrets.json: the
// Kubernetes Secret's self-signed test certificate and key).
const istioGatewayCredential = "kubernetes://bookinfo-credential"

// TestIstioGatewayGeneratedEndToEnd runs Sluice as Istio's ingress gateway
// (pilot-agent's bootstrap in router mode, and the xDS istiod's code
// generated for it: xds/testdata/istio-generated/gateway), served over
// delta ADS unchanged but for what the test machine needs: the
// bootstrap's sockets and ports are this test's; the two listeners
// istiod made from the Gateway's servers, 0.0.0.0_8080 (port 80, the
// Service's targetPort 8080) and 0.0.0.0_8443 (port 443 -> 8443), bind
// free loopback ports instead; and every endpoint's pod IP (10.1.x.x) is
// rewritten to a loopback server standing in for that pod (productpage,
// reviews v1, v2, v3; the others to a port where nothing listens). The
// HTTPS server's certificate (credentialName) comes over ADS like the
// rest, as istiod would send it; the gateway's workload certificate and
// the mesh's roots from an SDS server standing in for pilot-agent's.
// Sluice must ACK every response; then the Gateway's hosts and the
// VirtualService's routes must work as istiod configured them, over
// ISTIO_MUTUAL to the pods (Istio's SNI, the gateway's SPIFFE ID, and a
// pod of another service account refused after an EDS update), with the
// edge connection manager's headers (x-forwarded-*, XFCC sanitized,
// server: istio-envoy, normalized paths).
func TestIstioGatewayGeneratedEndToEnd(t *testing.T) {
	dir := shortTempDir(t)
	ca := tlstest.NewCA(t, "cluster.local")
	gatewayLeaf := ca.Issue(t, "istio-ingressgateway.istio-system.svc.cluster.local", "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account")
	reviewsLeaf := ca.Issue(t, "reviews.default.svc.cluster.local", "spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
	productpageLeaf := ca.Issue(t, "productpage.default.svc.cluster.local", "spiffe://cluster.local/ns/default/sa/bookinfo-productpage")

	productpage := newMeshBackend(t, "productpage", ca, productpageLeaf)
	backends := map[string]*meshBackend{}
	for _, v := range []string{"v1", "v2", "v3"} {
		backends[v] = newMeshBackend(t, "reviews-"+v, ca, reviewsLeaf)
	}
	podPorts := map[string]int{ // tools/istiogen/mesh.go's pods
		"10.1.1.1": productpage.port,
		"10.1.4.1": backends["v1"].port,
		"10.1.4.2": backends["v2"].port,
		"10.1.4.3": backends["v3"].port,
	}
	nowhere := freePort(t)

	res := loadIstioGeneratedDir(t, istioGatewayGenDir)
	httpPort, httpsPort := freePort(t), freePort(t)
	var names []string
	for _, r := range res[resourcev3.ListenerType] {
		l := r.(*listenerv3.Listener)
		names = append(names, l.GetName())
		sa := l.GetAddress().GetSocketAddress()
		switch l.GetName() {
		case "0.0.0.0_8080":
			sa.Address, sa.PortSpecifier = "127.0.0.1", &corev3.SocketAddress_PortValue{PortValue: uint32(httpPort)}
		case "0.0.0.0_8443":
			sa.Address, sa.PortSpecifier = "127.0.0.1", &corev3.SocketAddress_PortValue{PortValue: uint32(httpsPort)}
		default:
			t.Fatalf("unexpected listener %s", l.GetName())
		}
	}
	if !slices.Equal(names, []string{"0.0.0.0_8080", "0.0.0.0_8443"}) {
		t.Fatalf("listeners %v, want 0.0.0.0_8080 and 0.0.0.0_8443", names)
	}
	rewriteEndpoints(t, res, podPorts, nowhere)
	// The credential goes on the ADS stream with the rest (the
	// listener's sds_config is ads), as istiod sent it. Its certificate
	// (self-signed) is what HTTPS clients trust.
	if n := len(res[resourcev3.SecretType]); n != 1 {
		t.Fatalf("%d secrets generated, want the credential", n)
	}
	cred := res[resourcev3.SecretType][0].(*tlsv3.Secret)
	if cred.GetName() != istioGatewayCredential {
		t.Fatalf("the generated secret is %q, want %q", cred.GetName(), istioGatewayCredential)
	}
	block, _ := pem.Decode(cred.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if block == nil {
		t.Fatal("the credential has no PEM certificate")
	}
	credCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	publicRoots := x509.NewCertPool()
	publicRoots.AddCert(credCert)

	ads := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	setSnapshot(t, ads, istioGatewayGenNode, "1", res)
	rec := serveRecording(t, filepath.Join(dir, "xds.sock"), ads, false)
	sds := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	setSnapshot(t, sds, istioGatewayGenNode, "1", workloadSecrets(gatewayLeaf, ca))
	sdsRec := serveRecording(t, filepath.Join(dir, "sds.sock"), sds, true)

	admin, agent, prom, health := freePort(t), freePort(t), freePort(t), freePort(t)
	_, stderr, done := runIstioSidecar(t, filepath.Join(istioGatewayGenDir, "envoy-rev.json"), dir, admin, agent, prom, health, "warning")

	// Every type istiod sent is ACKed, none NACKed, the credential (a
	// Secret on ADS) too; and the SDS server's secrets.
	want := []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.EndpointType, resourcev3.SecretType}
	nacked := func() string {
		_, nacks := rec.state()
		_, sdsNACKs := sdsRec.state()
		return strings.Join(append(nacks, sdsNACKs...), "\n")
	}
	t.Cleanup(func() { // nor later, while traffic ran
		if n := nacked(); n != "" {
			t.Errorf("Sluice NACKed istiod's resources:\n%s", n)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n := nacked(); n != "" {
			t.Fatalf("Sluice NACKed istiod's resources:\n%s", n)
		}
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

	// Clients of the gateway: plain HTTP to the 8080 listener, HTTPS to
	// the 8443 one (SNI and Host bookinfo.example.com, trusting only the
	// credential's CA), over HTTP/1.1 or, offered h2, over HTTP/2.
	to := func(port int) func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := &net.Dialer{Timeout: 5 * time.Second}
		return func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		}
	}
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: to(httpPort)}}
	tlsConfig := &ctls.Config{ServerName: "bookinfo.example.com", RootCAs: publicRoots}
	secure := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: to(httpsPort), TLSClientConfig: tlsConfig}}
	secureH2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: to(httpsPort), TLSClientConfig: tlsConfig.Clone(), ForceAttemptHTTP2: true}}
	do := func(c *http.Client, url string, hdr ...string) (*http.Response, string, error) {
		req, err := http.NewRequest("GET", url, nil)
		if err != nil {
			return nil, "", err
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			if hdr[i] == "Host" {
				req.Host = hdr[i+1]
				continue
			}
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, "", err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body), nil
	}
	get := func(c *http.Client, url string, hdr ...string) (int, string) {
		t.Helper()
		resp, body, err := do(c, url, hdr...)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		return resp.StatusCode, body
	}

	// Ready once the listeners, clusters, endpoints and secrets are
	// applied: productpage answers through both listeners.
	deadline = time.Now().Add(30 * time.Second)
	for _, c := range []*http.Client{plain, secure} {
		scheme := "http"
		if c == secure {
			scheme = "https"
		}
		for {
			resp, body, err := do(c, scheme+"://bookinfo.example.com/productpage/ready")
			if err == nil {
				if resp.StatusCode == 200 && body == "productpage" {
					break
				}
				err = fmt.Errorf("%d %q", resp.StatusCode, body)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: productpage never answered through the generated config: %v", scheme, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	t.Run("HTTP on the 80 server to productpage", func(t *testing.T) {
		if code, body := get(plain, "http://bookinfo.example.com/productpage"); code != 200 || body != "productpage" {
			t.Fatalf("%d %q, want 200 productpage", code, body)
		}
		// The Gateway's port, as a client of the Service would send it.
		if code, body := get(plain, "http://bookinfo.example.com:80/productpage"); code != 200 || body != "productpage" {
			t.Fatalf("Host with :80: %d %q, want 200 productpage", code, body)
		}
		if n := productpage.count(productpage.hits, "/productpage"); n != 2 {
			t.Fatalf("productpage saw /productpage %d times, want 2", n)
		}
	})

	t.Run("HTTPS with the credential's certificate", func(t *testing.T) {
		resp, body, err := do(secure, "https://bookinfo.example.com/productpage/tls")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || body != "productpage" {
			t.Fatalf("%d %q, want 200 productpage", resp.StatusCode, body)
		}
		if c := resp.TLS.PeerCertificates[0]; !c.Equal(credCert) {
			t.Fatalf("the gateway presented %v %v, want bookinfo-credential's certificate", c.Subject, c.DNSNames)
		}
		resp, body, err = do(secureH2, "https://bookinfo.example.com/productpage/h2")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || body != "productpage" || resp.ProtoMajor != 2 {
			t.Fatalf("offered h2: %s %d %q, want HTTP/2 200 productpage", resp.Proto, resp.StatusCode, body)
		}
		// The 443 server has only bookinfo.example.com's filter chain: a
		// handshake for another name finds none.
		conn, err := ctls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpsPort), &ctls.Config{ServerName: "other.example.com", InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
			t.Fatal("a handshake with SNI other.example.com succeeded")
		}
	})

	t.Run("unknown host 404", func(t *testing.T) {
		if code, body := get(plain, "http://other.example.com/productpage"); code != 404 {
			t.Fatalf("HTTP: %d %q, want 404", code, body)
		}
		// Through the HTTPS server's chain: SNI bookinfo.example.com,
		// Host another.
		resp, body, err := do(secure, "https://bookinfo.example.com/productpage", "Host", "other.example.com")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 404 {
			t.Fatalf("HTTPS: %d %q, want 404", resp.StatusCode, body)
		}
		// No route of the VirtualService matches.
		if code, body := get(plain, "http://bookinfo.example.com/details"); code != 404 {
			t.Fatalf("/details: %d %q, want 404", code, body)
		}
	})

	t.Run("reviews: end-user jason to v2, others v1", func(t *testing.T) {
		for _, c := range []*http.Client{plain, secure} {
			scheme := map[*http.Client]string{plain: "http", secure: "https"}[c]
			for i := 0; i < 10; i++ {
				if code, body := get(c, scheme+"://bookinfo.example.com/reviews/0", "End-User", "jason"); code != 200 || body != "reviews-v2" {
					t.Fatalf("%s jason: %d %q, want 200 reviews-v2", scheme, code, body)
				}
				if code, body := get(c, scheme+"://bookinfo.example.com/reviews/0"); code != 200 || body != "reviews-v1" {
					t.Fatalf("%s without end-user: %d %q, want 200 reviews-v1", scheme, code, body)
				}
				if code, body := get(c, scheme+"://bookinfo.example.com/reviews/0", "End-User", "someone"); code != 200 || body != "reviews-v1" {
					t.Fatalf("%s end-user someone: %d %q, want 200 reviews-v1", scheme, code, body)
				}
			}
		}
		if n := backends["v3"].count(backends["v3"].hits, "/reviews/0"); n != 0 {
			t.Fatalf("v3 got %d requests", n)
		}
	})

	t.Run("the edge's HCM", func(t *testing.T) {
		// What istiod sets on a gateway's connection manager, unlike a
		// sidecar's: use_remote_address (the client's address appended to
		// x-forwarded-for, x-forwarded-proto from the connection; Sluice
		// joins with ", " where Envoy writes ","),
		// forward_client_cert_details
		// SANITIZE_SET (a client's XFCC is dropped: it presented no
		// certificate), server_name istio-envoy, normalize_path.
		for _, c := range []struct {
			client *http.Client
			scheme string
		}{{plain, "http"}, {secure, "https"}} {
			path := "/productpage/edge-" + c.scheme
			resp, body, err := do(c.client, c.scheme+"://bookinfo.example.com"+path,
				"X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "gopher",
				"X-Forwarded-Client-Cert", "By=spiffe://cluster.local/ns/default/sa/forged;URI=spiffe://cluster.local/ns/default/sa/forged")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 || body != "productpage" {
				t.Fatalf("%s: %d %q", path, resp.StatusCode, body)
			}
			if s := resp.Header.Get("Server"); s != "istio-envoy" {
				t.Errorf("%s: server %q, want istio-envoy", c.scheme, s)
			}
			h := productpage.header(path)
			if x := strings.ReplaceAll(h.Get("X-Forwarded-For"), " ", ""); x != "203.0.113.7,127.0.0.1" {
				t.Errorf("%s: x-forwarded-for %q, want 203.0.113.7 then 127.0.0.1", c.scheme, x)
			}
			if x := h.Get("X-Forwarded-Proto"); x != c.scheme {
				t.Errorf("x-forwarded-proto %q, want %s", x, c.scheme)
			}
			if x := h.Values("X-Forwarded-Client-Cert"); len(x) != 0 {
				t.Errorf("%s: the client's x-forwarded-client-cert reached productpage: %q", c.scheme, x)
			}
		}
		// normalize_path: /productpage/../reviews/x is /reviews/x, routed
		// to reviews (v1), not productpage.
		if code, body := get(plain, "http://bookinfo.example.com/productpage/../reviews/normalized"); code != 200 || body != "reviews-v1" {
			t.Fatalf("/productpage/../reviews/normalized: %d %q, want 200 reviews-v1", code, body)
		}
	})

	t.Run("ISTIO_MUTUAL upstream with Istio's SNI", func(t *testing.T) {
		// The gateway's connections to the pods carry Istio's SNI for
		// the cluster and the gateway's workload certificate (SDS
		// "default"); the pods' certificates were checked against
		// ROOTCA and the service account SANs istiod put in the
		// clusters, or nothing would have answered.
		for _, c := range []struct {
			b   *meshBackend
			sni string
		}{
			{productpage, "outbound_.9080_._.productpage.default.svc.cluster.local"},
			{backends["v1"], "outbound_.9080_.v1_.reviews.default.svc.cluster.local"},
			{backends["v2"], "outbound_.9080_.v2_.reviews.default.svc.cluster.local"},
		} {
			if c.b.count(c.b.sni, c.sni) == 0 {
				c.b.mu.Lock()
				t.Errorf("%s: no handshake with SNI %s: %v", c.b.name, c.sni, c.b.sni)
				c.b.mu.Unlock()
			}
			if c.b.count(c.b.peer, "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account") == 0 {
				t.Errorf("%s: the gateway's SPIFFE ID never seen", c.b.name)
			}
		}
		if t.Failed() {
			return
		}

		// The cluster checks the pod's identity: an EDS update (the same
		// generated resources, version 2) moves productpage's endpoint to
		// a pod with a certificate of the mesh's CA but another service
		// account, which the gateway must refuse (the cluster's SAN
		// spiffe://cluster.local/ns/default/sa/bookinfo-productpage).
		impostorLeaf := ca.Issue(t, "ratings.default.svc.cluster.local", "spiffe://cluster.local/ns/default/sa/bookinfo-ratings")
		impostor := newMeshBackend(t, "impostor", ca, impostorLeaf)
		for _, r := range res[resourcev3.EndpointType] {
			cla := r.(*endpointv3.ClusterLoadAssignment)
			if cla.GetClusterName() != "outbound|9080||productpage.default.svc.cluster.local" {
				continue
			}
			for _, le := range cla.GetEndpoints() {
				for _, e := range le.GetLbEndpoints() {
					e.GetEndpoint().GetAddress().GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(impostor.port)}
				}
			}
		}
		setSnapshot(t, ads, istioGatewayGenNode, "2", res)
		deadline := time.Now().Add(20 * time.Second)
		for impostor.count(impostor.sni, "outbound_.9080_._.productpage.default.svc.cluster.local") == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the gateway never tried the new productpage endpoint")
			}
			do(plain, "http://bookinfo.example.com/productpage/moved")
			time.Sleep(50 * time.Millisecond)
		}
		code, body := get(plain, "http://bookinfo.example.com/productpage/impostor")
		if code != 503 {
			t.Fatalf("with productpage's endpoint serving another identity: %d %q, want 503", code, body)
		}
		impostor.mu.Lock()
		n := len(impostor.hits)
		impostor.mu.Unlock()
		if n != 0 {
			t.Fatalf("a pod of another service account got %d requests", n)
		}
	})

	t.Run("no NACK", func(t *testing.T) {
		if n := nacked(); n != "" {
			t.Fatalf("Sluice NACKed:\n%s", n)
		}
	})
}
