package route

import (
	"fmt"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

// mutations is one level's compiled header mutations (Envoy's HeaderParser).
type mutations struct {
	remove []string
	add    []headerAdd
}

type headerAdd struct {
	key, value string
	action     config.AppendAction
}

// compileMutations compiles the request and response halves of one level;
// an empty half is nil.
func compileMutations(hm *config.HeaderMutations) (req, resp *mutations, err error) {
	if req, err = compileMutationList(hm.RequestHeadersToAdd, hm.RequestHeadersToRemove); err != nil {
		return nil, nil, fmt.Errorf("request headers: %w", err)
	}
	if resp, err = compileMutationList(hm.ResponseHeadersToAdd, hm.ResponseHeadersToRemove); err != nil {
		return nil, nil, fmt.Errorf("response headers: %w", err)
	}
	return req, resp, nil
}

// compileMutationList validates like Envoy's HeaderParser::configure:
// pseudo-headers and Host may be neither added nor removed. Keys are
// lower-cased (they go out on HTTP/2 as well). Values are literal: Envoy's
// %COMMAND% formatters (%REQ(x)%, %DOWNSTREAM_REMOTE_ADDRESS%, "%%", ...)
// are not interpreted. Entries with an empty value are dropped, as Envoy
// does without keep_empty_value.
func compileMutationList(add []config.HeaderValueOption, remove []string) (*mutations, error) {
	if len(add) == 0 && len(remove) == 0 {
		return nil, nil
	}
	m := &mutations{}
	for _, n := range remove {
		if err := checkModifiable(n); err != nil {
			return nil, err
		}
		m.remove = append(m.remove, asciiLower(n))
	}
	for _, a := range add {
		if err := checkModifiable(a.Key); err != nil {
			return nil, err
		}
		if !validValue(a.Value) {
			return nil, fmt.Errorf("invalid value for header %q", a.Key)
		}
		switch a.Action {
		case config.AppendIfExistsOrAdd, config.AddIfAbsent, config.OverwriteIfExistsOrAdd, config.OverwriteIfExists:
		default:
			return nil, fmt.Errorf("header %q: unknown append action %d", a.Key, a.Action)
		}
		if a.Value == "" {
			continue
		}
		m.add = append(m.add, headerAdd{key: asciiLower(a.Key), value: a.Value, action: a.Action})
	}
	if len(m.add) == 0 && len(m.remove) == 0 {
		return nil, nil
	}
	return m, nil
}

func checkModifiable(n string) error {
	if n == "" {
		return fmt.Errorf("empty header name")
	}
	if n[0] == ':' || header.EqualFold(n, "host") {
		return fmt.Errorf("header %q: pseudo-headers and host may not be modified", n)
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return fmt.Errorf("invalid header name %q", n)
		}
	}
	return nil
}

// validValue rejects what would split or truncate a header line.
func validValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == '\r' || c == '\n' || c == 0 {
			return false
		}
	}
	return true
}

func chain(levels ...*mutations) []*mutations {
	var out []*mutations
	for _, l := range levels {
		if l != nil {
			out = append(out, l)
		}
	}
	return out
}

// apply is Envoy's HeaderParser::evaluateHeaders: removes first; then every
// add decides against the headers as they are after the removes (so
// ADD_IF_ABSENT and OVERWRITE_IF_EXISTS do not see this level's own adds);
// then the overwrites are applied, then the appends, each in config order.
func (m *mutations) apply(h *header.Map) {
	for _, n := range m.remove {
		h.Del(n)
	}
	if len(m.add) == 0 {
		return
	}
	var stack [4]uint64
	take := stack[:]
	if len(m.add) > 64*len(stack) {
		take = make([]uint64, (len(m.add)+63)/64)
	}
	for i := range m.add {
		a := &m.add[i]
		ok := true
		switch a.action {
		case config.AddIfAbsent:
			ok = !h.Has(a.key)
		case config.OverwriteIfExists:
			ok = h.Has(a.key)
		}
		if ok {
			take[i/64] |= 1 << (i % 64)
		}
	}
	for i := range m.add {
		a := &m.add[i]
		if take[i/64]&(1<<(i%64)) != 0 && (a.action == config.OverwriteIfExistsOrAdd || a.action == config.OverwriteIfExists) {
			h.Set(a.key, a.value)
		}
	}
	for i := range m.add {
		a := &m.add[i]
		if take[i/64]&(1<<(i%64)) != 0 && (a.action == config.AppendIfExistsOrAdd || a.action == config.AddIfAbsent) {
			h.Add(a.key, a.value)
		}
	}
}

// ApplyRequestMutations applies the request header mutations for this route
// and the weighted cluster wc (nil, or a branch returned by PickCluster or
// ClusterFor for this route).
//
// Order, like Envoy with its default most_specific_header_mutations_wins =
// false: the weighted cluster first, then the route, the virtual host and the
// route table. Each level removes, then adds; a later level sees (and may
// overwrite or remove) what an earlier one did, so on conflicts the LEAST
// specific level wins: a route table OVERWRITE beats a route's, and a virtual
// host's headers_to_remove drops a header the route just added. Appends
// accumulate in that order. Sluice has no most_specific_header_mutations_wins
// knob yet.
func (r *Route) ApplyRequestMutations(h *header.Map, wc *config.WeightedCluster) {
	if wc != nil {
		if w := r.weightedFor(wc); w != nil && w.req != nil {
			w.req.apply(h)
		}
	}
	for _, m := range r.reqChain {
		m.apply(h)
	}
}

// ApplyResponseMutations applies the response header mutations, in the same
// order as ApplyRequestMutations.
func (r *Route) ApplyResponseMutations(h *header.Map, wc *config.WeightedCluster) {
	if wc != nil {
		if w := r.weightedFor(wc); w != nil && w.resp != nil {
			w.resp.apply(h)
		}
	}
	for _, m := range r.respChain {
		m.apply(h)
	}
}

func (r *Route) weightedFor(wc *config.WeightedCluster) *weightedCluster {
	for i := range r.weighted {
		if r.weighted[i].cfg == wc {
			return &r.weighted[i]
		}
	}
	return nil
}
