package main

// The ingress gateway (-gateway): istio-ingressgateway as the demo
// profile installs it (manifests/charts/gateways/istio-ingress with
// manifests/helm-profiles/demo.yaml: Service ports 80->8080, 443->8443,
// ...), running pilot-agent in router mode, and bookinfo's Gateway and a
// VirtualService bound to it. These objects are added to the mesh only
// for -gateway: the sidecar's output stays what it was.

import (
	"encoding/base64"
	"fmt"
	"strings"
)

const (
	gatewayIP   = "10.1.1.9"
	gatewayPod  = "istio-ingressgateway-7c9d8b6f5-k2x4p"
	gatewayNode = "router~" + gatewayIP + "~" + gatewayPod + ".istio-system~istio-system.svc.cluster.local"
	gatewaySA   = "istio-ingressgateway-service-account"
)

// gatewayLabels are the pod's labels (the chart's template).
var gatewayLabels = [][2]string{
	{"app", "istio-ingressgateway"},
	{"istio", "ingressgateway"},
	{"heritage", "Tiller"},
	{"release", "istio"},
	{"chart", "gateways"},
	{"service.istio.io/canonical-name", "istio-ingressgateway"},
	{"service.istio.io/canonical-revision", "latest"},
	{"istio.io/rev", "default"},
	{"install.operator.istio.io/owning-resource", "unknown"},
	{"operator.istio.io/component", "IngressGateways"},
	{"sidecar.istio.io/inject", "false"},
	{"app.kubernetes.io/name", "istio-ingressgateway"},
	{"istio.io/dataplane-mode", "none"},
}

// gatewayEnv is the environment the istio-ingress chart's deployment gives
// istio-proxy (the variables pilot-agent turns into node metadata).
func gatewayEnv() []string {
	var labels []string
	for _, l := range gatewayLabels {
		labels = append(labels, fmt.Sprintf("%q:%q", l[0], l[1]))
	}
	return []string{
		"PILOT_CERT_PROVIDER=istiod",
		"CA_ADDR=istiod.istio-system.svc:15012",
		"NODE_NAME=node-1",
		"POD_NAME=" + gatewayPod,
		"POD_NAMESPACE=istio-system",
		"INSTANCE_IP=" + gatewayIP,
		"HOST_IP=192.168.49.2",
		"ISTIO_CPU_LIMIT=0",
		"SERVICE_ACCOUNT=" + gatewaySA,
		"ISTIO_META_WORKLOAD_NAME=istio-ingressgateway",
		"ISTIO_META_OWNER=kubernetes://apis/apps/v1/namespaces/istio-system/deployments/istio-ingressgateway",
		"ISTIO_META_MESH_ID=cluster.local",
		"TRUST_DOMAIN=cluster.local",
		"ISTIO_META_UNPRIVILEGED_POD=true",
		"ISTIO_META_CLUSTER_ID=Kubernetes",
		"ISTIO_META_NODE_NAME=node-1",
		// As for the sidecar: the version is this module's istio's, and
		// the labels come the older way (no downward-API labels file).
		"ISTIO_META_ISTIO_VERSION=1.31-dev",
		"ISTIO_METAJSON_LABELS={" + strings.Join(labels, ",") + "}",
	}
}

// gatewayKubeObjects are istio-ingressgateway's Service, EndpointSlice and
// Pod.
func gatewayKubeObjects() string {
	var labels strings.Builder
	for _, l := range gatewayLabels {
		fmt.Fprintf(&labels, "    %s: %q\n", l[0], l[1])
	}
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  labels: {app: istio-ingressgateway, istio: ingressgateway}
spec:
  type: LoadBalancer
  clusterIP: 10.96.1.10
  selector: {app: istio-ingressgateway, istio: ingressgateway}
  ports:
  - {name: status-port, port: 15021, targetPort: 15021, protocol: TCP}
  - {name: http2, port: 80, targetPort: 8080, protocol: TCP}
  - {name: https, port: 443, targetPort: 8443, protocol: TCP}
  - {name: tcp, port: 31400, targetPort: 31400, protocol: TCP}
  - {name: tls, port: 15443, targetPort: 15443, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istio-ingressgateway-abcde
  namespace: istio-system
  labels: {kubernetes.io/service-name: istio-ingressgateway, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
addressType: IPv4
ports:
- {name: status-port, port: 15021, protocol: TCP}
- {name: http2, port: 8080, protocol: TCP}
- {name: https, port: 8443, protocol: TCP}
- {name: tcp, port: 31400, protocol: TCP}
- {name: tls, port: 15443, protocol: TCP}
endpoints:
- addresses: [%[1]s]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-1
  targetRef: {kind: Pod, name: %[2]s, namespace: istio-system}
---
apiVersion: v1
kind: Pod
metadata:
  name: %[2]s
  namespace: istio-system
  labels:
%[3]s
spec:
  serviceAccountName: %[4]s
  nodeName: node-1
  containers:
  - name: istio-proxy
    image: docker.io/istio/proxyv2:1.31.0
    args: [proxy, router, --domain, $(POD_NAMESPACE).svc.cluster.local]
    ports:
    - {containerPort: 15021, protocol: TCP}
    - {containerPort: 8080, protocol: TCP}
    - {containerPort: 8443, protocol: TCP}
    - {containerPort: 31400, protocol: TCP}
    - {containerPort: 15443, protocol: TCP}
    - {containerPort: 15090, protocol: TCP, name: http-envoy-prom}
status:
  phase: Running
  podIP: %[1]s
  podIPs:
  - ip: %[1]s
  hostIP: 192.168.49.2
  conditions:
  - type: Ready
    status: "True"
`, gatewayIP, gatewayPod, strings.TrimSuffix(labels.String(), "\n"), gatewaySA) + credentialSecret()
}

// gatewayConfig is bookinfo's Gateway (bookinfo-gateway.yaml, with a host
// and an HTTPS server whose certificate is the Secret bookinfo-credential
// in the gateway's namespace) and a VirtualService bound to it.
const gatewayConfig = `
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
  namespace: default
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - bookinfo.example.com
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: bookinfo-credential
    hosts:
    - bookinfo.example.com
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
  namespace: default
spec:
  hosts:
  - bookinfo.example.com
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        prefix: /productpage
    route:
    - destination:
        host: productpage
        port:
          number: 9080
  - match:
    - uri:
        prefix: /reviews
      headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - match:
    - uri:
        prefix: /reviews
    route:
    - destination:
        host: reviews
        subset: v1
`

// The Secret bookinfo-credential (istio-system, the gateway's namespace,
// where credentialName looks): a self-signed certificate for
// bookinfo.example.com made once with openssl for this mesh, valid until
// 2126, and its key. A test key, nothing else.
const (
	credentialCert = `-----BEGIN CERTIFICATE-----
MIIB+jCCAaCgAwIBAgIUfv71GWmNlyuZ2d8q8WnYvhMeMRUwCgYIKoZIzj0EAwIw
NzEWMBQGA1UECgwNYm9va2luZm8gdGVzdDEdMBsGA1UEAwwUYm9va2luZm8uZXhh
bXBsZS5jb20wIBcNMjYxMjA2MTcwOTUxWhgPMjEyNjExMTIxNzA5NTFaMDcxFjAU
BgNVBAoMDWJvb2tpbmZvIHRlc3QxHTAbBgNVBAMMFGJvb2tpbmZvLmV4YW1wbGUu
Y29tMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEkbBNCD7xYPzoV5M/6JEiJkM2
kcH1bnCY3Law5Br7QSHkLvGLZdxiCUpa8SkdkhrzDwf6oddCx8+4ScnDQkr/6aOB
hzCBhDAdBgNVHQ4EFgQUCDAhfCYMpJ5JDCl1p/pjUDxV8BIwHwYDVR0jBBgwFoAU
CDAhfCYMpJ5JDCl1p/pjUDxV8BIwHwYDVR0RBBgwFoIUYm9va2luZm8uZXhhbXBs
ZS5jb20wDAYDVR0TAQH/BAIwADATBgNVHSUEDDAKBggrBgEFBQcDATAKBggqhkjO
PQQDAgNIADBFAiEA7RJ/7sHERZkaU0y0IRCdDFrHv9yy/zSz8zT1Wq4drwkCIHvn
1OwlGUqWjiuXI1oeZTVeMPbi55EcdRhTA+8eHzV/
-----END CERTIFICATE-----
`
	credentialKey = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+Z/wkyF4mArOZDTE
nvi0Y9lQ215v7cff3BigZy8Bob2hRANCAASRsE0IPvFg/OhXkz/okSImQzaRwfVu
cJjctrDkGvtBIeQu8Ytl3GIJSlrxKR2SGvMPB/qh10LHz7hJycNCSv/p
-----END PRIVATE KEY-----
`
)

func credentialSecret() string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Secret
metadata:
  name: bookinfo-credential
  namespace: istio-system
type: kubernetes.io/tls
data:
  tls.crt: %s
  tls.key: %s
`, base64.StdEncoding.EncodeToString([]byte(credentialCert)), base64.StdEncoding.EncodeToString([]byte(credentialKey)))
}
