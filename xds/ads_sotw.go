package xds

import (
	"fmt"
	"maps"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
)

// State of the world (StreamAggregatedResources): every request of a type
// carries the whole list of names wanted (none for a wildcard type), the
// version last accepted and the nonce of the last response, so an ACK, a
// NACK and a change of subscription are the same message. A response of
// a wildcard type holds all of its resources; one of another type holds
// those it updates, and the others go away only when unsubscribed.

// sotwRequest sends the request of type t: an ACK, a subscription change,
// or a NACK when detail is set.
func (c *Client) sotwRequest(s *session, t rtype, detail *statuspb.Status) {
	want := c.wanted(t)
	req := &discoveryv3.DiscoveryRequest{
		Node:          c.nodeFor(s),
		TypeUrl:       typeInfo[t].url,
		VersionInfo:   c.st.version[t],
		ResponseNonce: s.nonce[t],
		ErrorDetail:   detail,
	}
	if !typeInfo[t].wildcard {
		req.ResourceNames = slices.Sorted(maps.Keys(want))
	}
	s.sent[t] = want
	if err := s.sotw.Send(req); err != nil {
		s.broken = err
	}
}

func (c *Client) onSotwResponse(s *session, r *discoveryv3.DiscoveryResponse) {
	t, ok := typeOf(r.GetTypeUrl())
	if !ok {
		// Nothing Sluice asked for; tell the server so rather than
		// ignoring it.
		err := s.sotw.Send(&discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce(),
			ErrorDetail: errorDetail(fmt.Errorf("xds: resource type %q is not supported", r.GetTypeUrl()))})
		if err != nil {
			s.broken = err
		}
		return
	}
	s.nonce[t] = r.GetNonce()
	u, err := sotwUpdate(t, r)
	if err == nil {
		err = c.handle(u)
	}
	if err != nil {
		c.reject(s, t, err, func(d *statuspb.Status) { c.sotwRequest(s, t, d) })
		if _, partial := err.(*partialError); partial {
			// What was applied may have changed the subscriptions.
			c.sync(s)
		}
		return
	}
	c.accepted(t)
	s.nacks[t] = nil
	c.sotwRequest(s, t, nil)
	c.sync(s)
}

// sotwUpdate decodes a state-of-the-world response.
func sotwUpdate(t rtype, r *discoveryv3.DiscoveryResponse) (update, error) {
	u := update{typ: t, full: typeInfo[t].wildcard, version: r.GetVersionInfo()}
	seen := map[string]bool{}
	for i, a := range r.GetResources() {
		e, err := decodeResource(t, a, r.GetVersionInfo())
		if err != nil {
			return u, prefixed(inIndex(err, "resources", i))
		}
		if e == nil {
			// A TTL heartbeat: the resource stays as it is.
			if u.full {
				return u, prefixed(inIndex(fmt.Errorf("a heartbeat in a %s response, which must hold every resource", t), "resources", i))
			}
			continue
		}
		if seen[e.name] {
			return u, prefixed(inIndex(fmt.Errorf("%s %q is in the response twice", typeInfo[t].kind, e.name), "resources", i))
		}
		seen[e.name] = true
		u.set = append(u.set, e)
	}
	return u, nil
}
