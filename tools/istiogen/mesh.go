package main

// The bookinfo-like mesh istiod is given: Kubernetes objects (Services,
// Pods, EndpointSlices, as the API server would hold them) and Istio
// configuration (DestinationRule, VirtualService, PeerAuthentication).

const (
	// The sidecar the xDS is generated for: productpage-v1's pod.
	productpageIP   = "10.1.1.1"
	productpagePod  = "productpage-v1-5d9b4c9f6b-x7k2p"
	productpageNode = "sidecar~" + productpageIP + "~" + productpagePod + ".default~default.svc.cluster.local"
)

// pod is one bookinfo pod and the service it backs.
type pod struct {
	name, ip, app, version, sa string
}

var pods = []pod{
	{productpagePod, productpageIP, "productpage", "v1", "bookinfo-productpage"},
	{"details-v1-65cfcf56f9-4drsk", "10.1.2.1", "details", "v1", "bookinfo-details"},
	{"ratings-v1-7c9bd4b87f-9q6ck", "10.1.3.1", "ratings", "v1", "bookinfo-ratings"},
	{"reviews-v1-5f8bd5b6d7-2lz9m", "10.1.4.1", "reviews", "v1", "bookinfo-reviews"},
	{"reviews-v2-6b6f7c9c8c-fd5hh", "10.1.4.2", "reviews", "v2", "bookinfo-reviews"},
	{"reviews-v3-7d99fd7978-sb8ss", "10.1.4.3", "reviews", "v3", "bookinfo-reviews"},
}

var services = []struct {
	name, clusterIP string
}{
	{"productpage", "10.96.0.10"},
	{"details", "10.96.0.11"},
	{"ratings", "10.96.0.12"},
	{"reviews", "10.96.0.13"},
}

// istioConfig is what `kubectl apply` would have put in the cluster from
// bookinfo's destination-rule-reviews / virtual-service-reviews samples,
// with a retry and a timeout, and mesh-wide strict mTLS.
const istioConfig = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
    timeout: 3s
    retries:
      attempts: 2
      perTryTimeout: 1s
      retryOn: 5xx,connect-failure
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
    - destination:
        host: reviews
        subset: v3
      weight: 50
    timeout: 3s
    retries:
      attempts: 3
      perTryTimeout: 1s
      retryOn: gateway-error,connect-failure,refused-stream
`
