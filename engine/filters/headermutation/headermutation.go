// Package headermutation is the native header mutation filter (Envoy's
// envoy.filters.http.header_mutation): it adds, overwrites and removes
// request and response headers, with a per-route override that replaces the
// chain-level mutations for one route. It is the smallest filter that
// exercises the whole filter contract and serves as its reference.
package headermutation

import (
	"fmt"
	"strings"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Compiler compiles *config.HeaderMutationConfig.
type Compiler struct{}

// TypeNames are the config type names this compiler serves.
var TypeNames = []string{config.TypeHeaderMutation, config.TypeHeaderMutationPerRoute, "sluice.header_mutation"}

type mutations struct {
	reqRemove  []string
	reqAdd     []config.HeaderValueOption
	respRemove []string
	respAdd    []config.HeaderValueOption
}

func compile(cfg any) (*mutations, error) {
	c, ok := cfg.(*config.HeaderMutationConfig)
	if !ok || c == nil {
		return nil, fmt.Errorf("headermutation: config is %T, want *config.HeaderMutationConfig", cfg)
	}
	m := &mutations{reqRemove: c.RequestHeadersToRemove, reqAdd: c.RequestHeadersToAdd, respRemove: c.ResponseHeadersToRemove, respAdd: c.ResponseHeadersToAdd}
	for _, lists := range [][]config.HeaderValueOption{m.reqAdd, m.respAdd} {
		for _, h := range lists {
			if err := checkName(h.Key); err != nil {
				return nil, err
			}
		}
	}
	for _, lists := range [][]string{m.reqRemove, m.respRemove} {
		for _, n := range lists {
			if err := checkName(n); err != nil {
				return nil, err
			}
			if strings.HasPrefix(n, ":") {
				return nil, fmt.Errorf("headermutation: cannot remove pseudo-header %q", n)
			}
		}
	}
	return m, nil
}

func checkName(n string) error {
	if n == "" {
		return fmt.Errorf("headermutation: empty header name")
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c <= ' ' || c >= 0x7f || c == ':' && i > 0 {
			return fmt.Errorf("headermutation: invalid header name %q", n)
		}
	}
	return nil
}

// Compile implements stream.Compiler.
func (Compiler) Compile(cfg any) (stream.Factory, error) {
	m, err := compile(cfg)
	if err != nil {
		return nil, err
	}
	return factory{m}, nil
}

// CompilePerRoute implements stream.Compiler.
func (Compiler) CompilePerRoute(cfg any) (any, error) { return compile(cfg) }

type factory struct{ m *mutations }

func (f factory) NewFilter(cb stream.Callbacks) stream.Filter {
	return &filter{m: f.m, cb: cb}
}

type filter struct {
	stream.PassThrough
	m  *mutations
	cb stream.Callbacks
}

func (f *filter) active() *mutations {
	if o, ok := f.cb.FilterOverride().(*mutations); ok {
		return o
	}
	return f.m
}

func (f *filter) OnRequestHeaders(h *header.Map, _ bool) stream.Status {
	m := f.active()
	Apply(h, m.reqRemove, m.reqAdd)
	return stream.Continue
}

func (f *filter) OnResponseHeaders(h *header.Map, _ bool) stream.Status {
	m := f.active()
	Apply(h, m.respRemove, m.respAdd)
	return stream.Continue
}

// Apply removes, then adds, with Envoy's append actions.
func Apply(h *header.Map, remove []string, add []config.HeaderValueOption) {
	for _, n := range remove {
		h.Del(n)
	}
	for _, a := range add {
		switch a.Action {
		case config.AppendIfExistsOrAdd:
			h.Add(a.Key, a.Value)
		case config.AddIfAbsent:
			h.SetIfAbsent(a.Key, a.Value)
		case config.OverwriteIfExistsOrAdd:
			h.Set(a.Key, a.Value)
		case config.OverwriteIfExists:
			if h.Has(a.Key) {
				h.Set(a.Key, a.Value)
			}
		}
	}
}
