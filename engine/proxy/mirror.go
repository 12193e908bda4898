package proxy

import (
	"io"
	"math/rand/v2"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/upstream"
)

// mirrorTimeout bounds a shadow exchange when the route sets no timeout.
const mirrorTimeout = 5 * time.Second

// mirror shadows the request to the route's mirror clusters, fire and
// forget, like Envoy's request_mirror_policies: the authority gets a
// "-shadow" suffix and the response is discarded. Only a request whose
// whole body is at hand (none, or buffered by a filter) is mirrored; a
// streamed body is not kept for a second reader.
func (s *activeStream) mirror(ra *config.RouteAction, p *phase) {
	if len(ra.MirrorPolicy) == 0 {
		return
	}
	if !p.end && p.body == nil {
		s.cm.stats.mirrorSkipped.Inc()
		return
	}
	for i := range ra.MirrorPolicy {
		m := &ra.MirrorPolicy[i]
		if m.Percent < 100 && rand.Float64()*100 >= m.Percent {
			continue
		}
		cl := s.cm.clusters.Get(m.Cluster)
		if cl == nil {
			continue
		}
		var host *upstream.Host // nil: the cluster's load balancer picks
		if cl.OriginalDst() {
			// As the request's own upstream: the downstream connection's
			// original destination, resolved here, where the stream is.
			var err error
			if host, err = s.originalDstHost(cl); err != nil {
				s.cm.log.Debug("mirror: original destination refused", "err", err, "stream", s.id)
				continue
			}
		}
		h := s.req.Clone()
		h.Set(":authority", shadowHost(h.Value(":authority")))
		var body []byte
		if p.body != nil {
			body = append([]byte(nil), p.body.Bytes()...)
		}
		timeout := ra.Timeout
		if timeout <= 0 {
			timeout = mirrorTimeout
		}
		s.cm.stats.mirrored.Inc()
		go shadow(cl, host, &h, body, !p.end, timeout)
	}
}

// shadowHost appends "-shadow" to the host part of an authority.
func shadowHost(authority string) string {
	host, port := authority, ""
	for i := len(authority) - 1; i >= 0; i-- {
		if authority[i] == ':' {
			host, port = authority[:i], authority[i:]
			break
		}
		if authority[i] == ']' {
			break
		}
	}
	return host + "-shadow" + port
}

func shadow(cl *upstream.Cluster, host *upstream.Host, h *header.Map, body []byte, hasBody bool, timeout time.Duration) {
	done, ok := cl.TryStartRequest()
	if !ok {
		return
	}
	defer done()
	if host == nil {
		if host = cl.Pick(&upstream.LBContext{}); host == nil {
			return
		}
	}
	deadline := time.Now().Add(timeout)
	conn, err := host.AcquireFor(deadline, false)
	if err != nil {
		return
	}
	reusable := false
	defer func() { conn.Release(reusable) }()
	conn.ClientConn().SetDeadline(deadline)
	cl.Stats.RqTotal.Inc()
	cc := conn.ClientConn()
	if cc.WriteRequestHeaders(h, !hasBody) != nil {
		return
	}
	if hasBody && cc.WriteRequestBody(body, true) != nil {
		return
	}
	if cc.Flush() != nil {
		return
	}
	var resp header.Map
	for {
		resp.Reset()
		if cc.ReadResponseHeaders(&resp) != nil {
			return
		}
		if code := statusOf(&resp); code >= 200 {
			cl.RecordResponse(code, -1)
			break
		}
	}
	if _, err := io.Copy(io.Discard, cc.ResponseBody()); err == nil {
		reusable = cc.Reusable()
	}
}
