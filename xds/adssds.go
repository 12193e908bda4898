package xds

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// SDS servers other than the ADS stream. A TLS context may name its
// secrets with an sds_config of api_config_source kind: Istio's name the
// sds-grpc cluster, pilot-agent's SDS server on a unix socket, which
// serves the workload certificate ("default") and the mesh's roots
// ("ROOTCA"). For each such server the client keeps a state-of-the-world
// SecretDiscoveryService stream, subscribed to the secrets the last
// assembly asks of it. What arrives is applied like an SDS response on
// the ADS stream: one snapshot, ACK or NACK on that stream. A stream's
// goroutine dials, receives and reconnects with backoff; Run's goroutine
// sends, as for the ADS stream.

// sdsStream is the stream to one SDS server.
type sdsStream struct {
	src    *sdsSource
	cp     *controlPlane
	cancel context.CancelFunc

	// Owned by Run's goroutine.
	st       grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	conn     int             // the goroutine's connection st belongs to
	sent     map[string]bool // names subscribed on st; nil: no request yet
	version  string          // last accepted on this server
	nonce    string
	nodeSent bool
	// The last rejection, how often in a row, and a NACK held back: as on
	// the ADS stream, a repeated rejection is NACKed after a doubling
	// delay, or a server that answers a NACK by resending (go-control-
	// plane's state-of-the-world cache does) and this client would loop
	// as fast as they can.
	nackRepeats
	nack *pendingNack
}

// syncSDS starts and stops SDS streams as the last assembly's secrets
// need them, and brings each open stream's subscription up to date.
func (c *Client) syncSDS(ctx context.Context, events chan<- event, wg *sync.WaitGroup) {
	want := c.last.sdsSources
	for key, s := range c.sds {
		if want[key] == nil {
			s.cancel()
			delete(c.sds, key)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(want)) {
		s := c.sds[key]
		if s == nil {
			src := want[key]
			cp, err := controlPlaneOf(src.service, c.staticClusters)
			if err != nil {
				// The secrets it would serve wait; say why once per change.
				if c.sdsErrors[key] != err.Error() {
					c.sdsErrors[key] = err.Error()
					c.log.Error("xds: SDS server", "server", key, "err", err)
				}
				continue
			}
			delete(c.sdsErrors, key)
			cp.opts = append(cp.opts, c.opts.DialOptions...)
			sctx, cancel := context.WithCancel(ctx)
			s = &sdsStream{src: src, cp: cp, cancel: cancel}
			c.sds[key] = s
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.runSDS(sctx, s, events)
			}()
			continue
		}
		if s.st == nil {
			continue
		}
		names := c.sdsNames(key)
		if s.sent == nil || !maps.Equal(s.sent, names) {
			c.sdsRequest(s, names, nil)
		}
	}
}

// sdsNames are the secrets the last assembly asks of server key.
func (c *Client) sdsNames(key string) map[string]bool {
	out := map[string]bool{}
	for name, k := range c.last.secretSource {
		if k == key {
			out[name] = true
		}
	}
	return out
}

// sdsRequest sends a request on s's stream: the names subscribed, the
// version last accepted and the last nonce (an ACK), or a NACK with detail.
func (c *Client) sdsRequest(s *sdsStream, names map[string]bool, detail *statuspb.Status) {
	req := &discoveryv3.DiscoveryRequest{
		TypeUrl:       typeInfo[tSecret].url,
		VersionInfo:   s.version,
		ResponseNonce: s.nonce,
		ResourceNames: slices.Sorted(maps.Keys(names)),
		ErrorDetail:   detail,
	}
	if !s.src.nodeOnce || !s.nodeSent {
		req.Node, s.nodeSent = c.node, true
	}
	s.sent = names
	if err := s.st.Send(req); err != nil {
		// The receiving goroutine sees the stream end and reconnects.
		s.st, s.sent = nil, nil
	}
}

// onSDSEvent handles what an SDS stream's goroutine reports.
func (c *Client) onSDSEvent(ev event) {
	s := ev.sds
	if c.sds[s.src.key] != s {
		return // stopped meanwhile
	}
	switch {
	case ev.err != nil:
		if ev.sdsConn == s.conn {
			s.st, s.sent = nil, nil
		}
		c.log.Warn("xds: SDS stream ended", "server", s.src.key, "target", s.cp.target, "err", ev.err)
	case ev.opened:
		s.st, s.conn, s.sent, s.nonce, s.nodeSent, s.nack = ev.sdsSt, ev.sdsConn, nil, "", false, nil
		c.log.Info("xds: connected to an SDS server", "server", s.src.key, "target", s.cp.target)
		c.sdsRequest(s, c.sdsNames(s.src.key), nil)
	case ev.sotw != nil:
		if ev.sdsConn != s.conn || s.st == nil {
			return
		}
		r := ev.sotw
		s.nonce = r.GetNonce()
		if t, ok := typeOf(r.GetTypeUrl()); !ok || t != tSecret {
			c.sdsRequest(s, s.sent, errorDetail(fmt.Errorf("xds: resource type %q is not a secret", r.GetTypeUrl())))
			return
		}
		u, err := sotwUpdate(tSecret, r)
		// The store's SDS version is that of the ADS stream; this
		// server's is kept on the stream.
		u.version = ""
		if err == nil {
			err = c.handle(u)
		}
		if err != nil {
			delay, fresh := s.rejected(err)
			if fresh {
				c.log.Warn("xds: rejected an SDS update", "server", s.src.key, "err", err)
			}
			if delay == 0 {
				s.nack = nil
				c.sdsRequest(s, s.sent, errorDetail(err))
			} else {
				s.nack = &pendingNack{due: time.Now().Add(delay), detail: errorDetail(err)}
			}
			return
		}
		s.nackRepeats, s.nack = nackRepeats{}, nil
		s.version = r.GetVersionInfo()
		c.sdsRequest(s, c.sdsNames(s.src.key), nil)
	}
}

// runSDS dials an SDS server and receives until ctx is done, reconnecting
// with backoff.
func (c *Client) runSDS(ctx context.Context, s *sdsStream, events chan<- event) {
	post := func(ev event) bool {
		ev.sds = s
		select {
		case events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	backoff := c.minBackoff
	for conn := 1; ; conn++ {
		received := false
		err := func() error {
			cc, err := grpc.NewClient(s.cp.target, s.cp.opts...)
			if err != nil {
				return err
			}
			defer cc.Close()
			sctx := ctx
			if len(s.cp.md) > 0 {
				sctx = metadata.NewOutgoingContext(ctx, s.cp.md)
			}
			st, err := secretv3.NewSecretDiscoveryServiceClient(cc).StreamSecrets(sctx)
			if err != nil {
				return err
			}
			if !post(event{opened: true, sdsSt: st, sdsConn: conn}) {
				return nil
			}
			for {
				r, err := st.Recv()
				if err != nil {
					return err
				}
				received = true
				if !post(event{sotw: r, sdsConn: conn}) {
					return nil
				}
			}
		}()
		if ctx.Err() != nil {
			return
		}
		post(event{err: err, sdsConn: conn})
		if received {
			backoff = c.minBackoff
		}
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, c.maxBackoff)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// stopSDS ends every SDS stream.
func (c *Client) stopSDS() {
	for key, s := range c.sds {
		s.cancel()
		delete(c.sds, key)
	}
}

// nextSDSNack is when the earliest held-back SDS NACK is due (zero: none).
func (c *Client) nextSDSNack(next time.Time) time.Time {
	for _, s := range c.sds {
		if s.nack != nil && (next.IsZero() || s.nack.due.Before(next)) {
			next = s.nack.due
		}
	}
	return next
}

// sendDueSDSNacks sends the held-back SDS NACKs whose time has come.
func (c *Client) sendDueSDSNacks(now time.Time) {
	for _, s := range c.sds {
		if s.nack == nil || s.nack.due.After(now) {
			continue
		}
		n := s.nack
		s.nack = nil
		if s.st != nil {
			c.sdsRequest(s, s.sent, n.detail)
		}
	}
}
