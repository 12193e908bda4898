package xds

import (
	"context"
	"maps"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// One ADS stream: a goroutine dials and receives, Run's goroutine sends.
// What was sent on a stream (names subscribed, nonces, delayed NACKs) dies
// with it; a new stream starts again from the client's accepted state.

// event is what a stream's goroutine hands to Run.
type event struct {
	gen    int
	opened bool
	sotw   *discoveryv3.DiscoveryResponse
	delta  *discoveryv3.DeltaDiscoveryResponse
	err    error
	// sds is set for the events of an SDS stream (adssds.go): sdsConn
	// tells its connections apart, sdsSt is the stream opened.
	sds     *sdsStream
	sdsConn int
	sdsSt   grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
}

// session is one ADS stream and what was sent on it.
type session struct {
	gen    int
	cancel context.CancelFunc
	sotw   grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	delta  grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]
	opened bool
	// sent are the names subscribed on this stream, by type (nil: the
	// type was never requested; empty: wildcard, or unsubscribed).
	sent  [numTypes]map[string]bool
	nonce [numTypes]string
	// nacks wait for their delay (see rejected); nothing else is sent for
	// their type meanwhile.
	nacks     [numTypes]*pendingNack
	nodeSent  bool
	responded bool
	broken    error
}

type pendingNack struct {
	due    time.Time
	detail *statuspb.Status
}

func (s *session) ready() bool { return s != nil && s.opened && s.broken == nil }

func (s *session) nextNack() time.Time {
	var next time.Time
	if s == nil {
		return next
	}
	for _, n := range s.nacks {
		if n != nil && (next.IsZero() || n.due.Before(next)) {
			next = n.due
		}
	}
	return next
}

// open starts a stream: a goroutine dials, opens it, then receives,
// handing everything to Run through events.
func (c *Client) open(ctx context.Context, gen int, events chan<- event, wg *sync.WaitGroup) *session {
	sctx, cancel := context.WithCancel(ctx)
	s := &session{gen: gen, cancel: cancel}
	post := func(ev event) bool {
		ev.gen = gen
		select {
		case events <- ev:
			return true
		case <-sctx.Done():
			return false
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer cancel()
		err := func() error {
			cc, err := grpc.NewClient(c.cp.target, c.cp.opts...)
			if err != nil {
				return err
			}
			defer cc.Close()
			sctx := sctx
			if len(c.cp.md) > 0 {
				sctx = metadata.NewOutgoingContext(sctx, c.cp.md)
			}
			ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
			if c.delta {
				st, err := ads.DeltaAggregatedResources(sctx)
				if err != nil {
					return err
				}
				s.delta = st
			} else {
				st, err := ads.StreamAggregatedResources(sctx)
				if err != nil {
					return err
				}
				s.sotw = st
			}
			if !post(event{opened: true}) {
				return nil
			}
			for {
				var ev event
				if c.delta {
					ev.delta, err = s.delta.Recv()
				} else {
					ev.sotw, err = s.sotw.Recv()
				}
				if err != nil {
					return err
				}
				if !post(ev) {
					return nil
				}
			}
		}()
		if err != nil {
			post(event{err: err})
		}
	}()
	return s
}

// sync brings the stream's subscriptions in line with the last assembly:
// the first request of each type, then changes of the names subscribed.
func (c *Client) sync(s *session) {
	for t := range numTypes {
		if s.broken != nil {
			return
		}
		if s.nacks[t] != nil {
			continue
		}
		want := c.wanted(t)
		if want == nil || (s.sent[t] == nil && len(want) == 0 && !typeInfo[t].wildcard) {
			// A first request without names would be a legacy wildcard.
			continue
		}
		if s.sent[t] != nil && maps.Equal(s.sent[t], want) {
			continue
		}
		if c.delta {
			c.deltaSubscribe(s, t, want)
		} else {
			c.sotwRequest(s, t, nil)
		}
	}
}

// wanted returns the names to subscribe to for type t: empty for a
// wildcard type the bootstrap asks for, nil for a type not to request.
func (c *Client) wanted(t rtype) map[string]bool {
	if typeInfo[t].wildcard {
		if !c.subscribe[t] {
			return nil
		}
		return map[string]bool{}
	}
	want := c.last.subs[t]
	if want == nil {
		want = map[string]bool{}
	}
	if t == tSecret && len(c.last.secretSource) > 0 {
		// Those come from their own SDS servers (adssds.go).
		want = maps.Clone(want)
		for name := range c.last.secretSource {
			delete(want, name)
		}
	}
	return want
}

// reject NACKs a response of type t now or, when the error repeats, after
// a delay.
func (c *Client) reject(s *session, t rtype, err error, send func(*statuspb.Status)) {
	delay := c.rejected(t, err)
	if delay == 0 {
		s.nacks[t] = nil
		send(errorDetail(err))
		return
	}
	s.nacks[t] = &pendingNack{due: time.Now().Add(delay), detail: errorDetail(err)}
}

// sendDueNacks sends the delayed NACKs whose time has come.
func (c *Client) sendDueNacks(s *session, now time.Time) {
	for t, n := range s.nacks {
		if n == nil || n.due.After(now) {
			continue
		}
		s.nacks[t] = nil
		if c.delta {
			c.deltaAck(s, rtype(t), n.detail)
		} else {
			c.sotwRequest(s, rtype(t), n.detail)
		}
	}
}

// node returns the node for a request: on every request, or on the first
// only with set_node_on_first_message_only.
func (c *Client) nodeFor(s *session) *corev3.Node {
	if c.nodeOnce && s.nodeSent {
		return nil
	}
	s.nodeSent = true
	return c.node
}
