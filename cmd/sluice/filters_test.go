package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// probe is a test filter whose behaviour its config picks.
type probe struct {
	stream.PassThrough
	name string
	cb   stream.Callbacks
}

type probeCompiler struct{}

func (probeCompiler) Compile(cfg any) (stream.Factory, error) {
	name, ok := cfg.(string)
	if !ok {
		return nil, fmt.Errorf("probe: want a string config")
	}
	return stream.FactoryFunc(func(cb stream.Callbacks) stream.Filter { return &probe{name: name, cb: cb} }), nil
}

func (probeCompiler) CompilePerRoute(cfg any) (any, error) { return cfg, nil }

const probeType = "sluice.test.probe"

func (p *probe) OnRequestHeaders(h *header.Map, end bool) stream.Status {
	h.Set("x-order", strings.Trim(h.Value("x-order")+","+p.name, ","))
	switch {
	case h.Value("x-panic") == p.name:
		panic("probe " + p.name + " panicked")
	case h.Value("x-deny") == p.name:
		p.cb.SendLocalReply(403, "denied by "+p.name+"\n", []header.Field{{Name: "x-denied-by", Value: p.name}}, "")
		return stream.LocalReply
	case h.Value("x-buffer") == p.name:
		return stream.StopAndBuffer
	case h.Value("x-wait") == p.name:
		go func() {
			time.Sleep(20 * time.Millisecond)
			h.Set("x-waited", p.name) // the stream is paused: safe to touch
			p.cb.Resume()
		}()
		return stream.StopAndWait
	case h.Value("x-async-deny") == p.name:
		go func() {
			time.Sleep(10 * time.Millisecond)
			p.cb.SendLocalReply(429, "slow down\n", nil, "")
		}()
		return stream.StopAndWait
	}
	if o, ok := p.cb.FilterOverride().(string); ok {
		h.Set("x-override-"+p.name, o)
	}
	return stream.Continue
}

func (p *probe) OnRequestBody(b *stream.Buffer, end bool) stream.Status {
	if p.cb.RequestHeaders().Value("x-buffer") == p.name {
		if !end {
			return stream.StopAndBuffer
		}
		b.Set(bytes.ToUpper(b.Bytes()))
	}
	return stream.Continue
}

func (p *probe) OnResponseHeaders(h *header.Map, end bool) stream.Status {
	h.Set("x-order", strings.Trim(h.Value("x-order")+","+p.name, ","))
	if p.cb.RequestHeaders().Value("x-rewrite-response") == p.name {
		return stream.StopAndBuffer
	}
	return stream.Continue
}

func (p *probe) OnResponseBody(b *stream.Buffer, end bool) stream.Status {
	if p.cb.RequestHeaders().Value("x-rewrite-response") == p.name && end {
		b.Set([]byte("rewritten by " + p.name + ": " + string(b.Bytes())))
	}
	return stream.Continue
}

func registerProbe(r *stream.Registry) { r.RegisterFilter(probeCompiler{}, probeType) }

func TestFilterContract(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Up-Order", r.Header.Get("X-Order"))
		w.Header().Set("X-Up-Waited", r.Header.Get("X-Waited"))
		w.Header().Set("X-Up-Override", r.Header.Get("X-Override-B"))
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	m := hcm(
		&config.Route{Name: "off", Match: config.RouteMatch{Prefix: "/off"}, Action: &config.RouteAction{Cluster: "up"},
			TypedPerFilterConfig: map[string]*config.FilterOverride{"A": {Disabled: true}, "B": {Config: "per-route"}}},
		prefixRoute("all", "/", "up"),
	)
	m.HTTPFilters = []*config.HTTPFilter{{Name: "A", TypeURL: probeType, Config: "A"}, {Name: "B", TypeURL: probeType, Config: "B"}}
	srv := startServer(t, snapshot(m, cluster("up", up.addr())), registerProbe)

	do := func(path, body string, hdr ...string) (*http.Response, string) {
		req, _ := http.NewRequest("POST", proxyURL(srv)+path, strings.NewReader(body))
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}

	t.Run("order", func(t *testing.T) {
		resp, _ := do("/", "x")
		if got := resp.Header.Get("X-Up-Order"); got != "A,B" {
			t.Errorf("request order %q, want A,B", got)
		}
		if got := resp.Header.Get("X-Order"); got != "B,A" {
			t.Errorf("response order %q, want B,A", got)
		}
	})
	t.Run("stop and buffer", func(t *testing.T) {
		resp, body := do("/", "hello body", "X-Buffer", "B")
		if resp.StatusCode != 200 || body != "HELLO BODY" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("stop and buffer large chunked body", func(t *testing.T) {
		big := strings.Repeat("abc", 100000)
		req, _ := http.NewRequest("POST", proxyURL(srv)+"/", io.MultiReader(strings.NewReader(big)))
		req.Header.Set("X-Buffer", "A")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != strings.ToUpper(big) {
			t.Errorf("got %d bytes, want %d upper-cased", len(b), len(big))
		}
	})
	t.Run("stop and wait then resume", func(t *testing.T) {
		resp, _ := do("/", "", "X-Wait", "A")
		if resp.StatusCode != 200 || resp.Header.Get("X-Up-Waited") != "A" || resp.Header.Get("X-Up-Order") != "A,B" {
			t.Errorf("got %d waited=%q order=%q", resp.StatusCode, resp.Header.Get("X-Up-Waited"), resp.Header.Get("X-Up-Order"))
		}
	})
	t.Run("async local reply", func(t *testing.T) {
		resp, body := do("/", "", "X-Async-Deny", "B")
		if resp.StatusCode != 429 || body != "slow down\n" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("local reply", func(t *testing.T) {
		before := up.hits.Load()
		resp, body := do("/", "", "X-Deny", "B")
		if resp.StatusCode != 403 || body != "denied by B\n" || resp.Header.Get("X-Denied-By") != "B" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
		// The reply passes back through A only (B sent it).
		if got := resp.Header.Get("X-Order"); got != "A" {
			t.Errorf("local reply went through %q, want A", got)
		}
		if up.hits.Load() != before {
			t.Error("upstream was called")
		}
	})
	t.Run("panic fails only that request", func(t *testing.T) {
		resp, _ := do("/", "", "X-Panic", "A")
		if resp.StatusCode != 500 {
			t.Errorf("got %d, want 500", resp.StatusCode)
		}
		resp, _ = do("/", "")
		if resp.StatusCode != 200 {
			t.Errorf("next request got %d", resp.StatusCode)
		}
	})
	t.Run("response body rewrite", func(t *testing.T) {
		resp, body := do("/", "data", "X-Rewrite-Response", "A")
		if body != "rewritten by A: data" || resp.ContentLength != int64(len(body)) {
			t.Errorf("got %q (content-length %d)", body, resp.ContentLength)
		}
	})
	t.Run("per-route disable and override", func(t *testing.T) {
		resp, _ := do("/off", "")
		if got := resp.Header.Get("X-Up-Order"); got != "B" {
			t.Errorf("order %q, want B (A disabled on this route)", got)
		}
		if got := resp.Header.Get("X-Up-Override"); got != "per-route" {
			t.Errorf("override %q", got)
		}
	})
}

func TestHeaderMutationFilter(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen", r.Header.Get("X-Added"))
		w.Header().Set("X-Secret", "leak")
	})
	m := hcm(
		&config.Route{Name: "quiet", Match: config.RouteMatch{Prefix: "/quiet"}, Action: &config.RouteAction{Cluster: "up"},
			TypedPerFilterConfig: map[string]*config.FilterOverride{"mut": {Disabled: true}}},
		prefixRoute("all", "/", "up"),
	)
	m.HTTPFilters = []*config.HTTPFilter{{Name: "mut", TypeURL: config.TypeHeaderMutation, Config: &config.HeaderMutationConfig{HeaderMutations: config.HeaderMutations{
		RequestHeadersToAdd:     []config.HeaderValueOption{{Key: "x-added", Value: "yes", Action: config.OverwriteIfExistsOrAdd}},
		ResponseHeadersToRemove: []string{"x-secret"},
	}}}}
	srv := startServer(t, snapshot(m, cluster("up", up.addr())))
	for _, tc := range []struct{ path, seen, secret string }{{"/", "yes", ""}, {"/quiet", "", "leak"}} {
		resp, err := http.Get(proxyURL(srv) + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("X-Seen") != tc.seen || resp.Header.Get("X-Secret") != tc.secret {
			t.Errorf("%s: seen=%q secret=%q", tc.path, resp.Header.Get("X-Seen"), resp.Header.Get("X-Secret"))
		}
	}
}
