package xds

import (
	"fmt"
	"maps"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
)

// Delta (DeltaAggregatedResources, Istio's default): subscriptions change
// by difference, responses carry only what changed and name what was
// removed, each resource has its own version, and an ACK or NACK is just
// the response's nonce. On a new stream the first request of each type
// lists the versions the client already has, so the server sends only
// what changed while it was away.

// deltaSubscribe sends type t's first request on the stream, or the
// difference between the names wanted and those subscribed.
func (c *Client) deltaSubscribe(s *session, t rtype, want map[string]bool) {
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeInfo[t].url}
	if s.sent[t] == nil {
		req.Node = c.nodeFor(s)
		req.ResourceNamesSubscribe = slices.Sorted(maps.Keys(want))
		if len(c.st.res[t]) > 0 {
			req.InitialResourceVersions = map[string]string{}
			for name, e := range c.st.res[t] {
				req.InitialResourceVersions[name] = e.version
			}
		}
	} else {
		for _, name := range slices.Sorted(maps.Keys(want)) {
			if !s.sent[t][name] {
				req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, name)
			}
		}
		for _, name := range slices.Sorted(maps.Keys(s.sent[t])) {
			if !want[name] {
				req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, name)
			}
		}
	}
	s.sent[t] = maps.Clone(want)
	if err := s.delta.Send(req); err != nil {
		s.broken = err
	}
}

// deltaAck ACKs the last response of type t, or NACKs it with detail.
func (c *Client) deltaAck(s *session, t rtype, detail *statuspb.Status) {
	err := s.delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: c.nodeFor(s), TypeUrl: typeInfo[t].url,
		ResponseNonce: s.nonce[t], ErrorDetail: detail})
	if err != nil {
		s.broken = err
	}
}

func (c *Client) onDeltaResponse(s *session, r *discoveryv3.DeltaDiscoveryResponse) {
	t, ok := typeOf(r.GetTypeUrl())
	if !ok {
		err := s.delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce(),
			ErrorDetail: errorDetail(fmt.Errorf("xds: resource type %q is not supported", r.GetTypeUrl()))})
		if err != nil {
			s.broken = err
		}
		return
	}
	s.nonce[t] = r.GetNonce()
	u, err := deltaUpdate(t, r)
	if err == nil {
		err = c.handle(u)
	}
	if err != nil {
		c.reject(s, t, err, func(d *statuspb.Status) { c.deltaAck(s, t, d) })
		if _, partial := err.(*partialError); partial {
			// What was applied may have changed the subscriptions.
			c.sync(s)
		}
		return
	}
	c.accepted(t)
	s.nacks[t] = nil
	c.deltaAck(s, t, nil)
	c.sync(s)
}

// deltaUpdate decodes a delta response.
func deltaUpdate(t rtype, r *discoveryv3.DeltaDiscoveryResponse) (update, error) {
	u := update{typ: t, version: r.GetSystemVersionInfo(), removed: r.GetRemovedResources()}
	seen := map[string]bool{}
	for i, res := range r.GetResources() {
		if res.GetResource() == nil {
			// A TTL heartbeat.
			continue
		}
		e, err := decodeResource(t, res.GetResource(), res.GetVersion())
		if err != nil {
			return u, prefixed(inIndex(err, "resources", i))
		}
		if e == nil {
			continue
		}
		if res.GetName() != "" && res.GetName() != e.name {
			return u, prefixed(inIndex(fmt.Errorf("resource named %q holds %s %q", res.GetName(), typeInfo[t].kind, e.name), "resources", i))
		}
		if seen[e.name] {
			return u, prefixed(inIndex(fmt.Errorf("%s %q is in the response twice", typeInfo[t].kind, e.name), "resources", i))
		}
		seen[e.name] = true
		u.set = append(u.set, e)
	}
	return u, nil
}
