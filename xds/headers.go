package xds

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-proxy/sluice/engine/config"
)

var (
	headerValueOptionFields = knownFields(&corev3.HeaderValueOption{}, "header", "append", "append_action", "keep_empty_value")
	mutationsFields         = knownFields(&headermutationv3.Mutations{}, "request_mutations", "response_mutations")
	mutationFields          = knownFields(&mutationrulesv3.HeaderMutation{}, "remove", "append")
	filterConfigFields      = knownFields(&routev3.FilterConfig{}, "config", "is_optional", "disabled")
)

// headerSource lists the four header mutation fields of one message.
type headerSource struct {
	reqAdd, respAdd       []*corev3.HeaderValueOption
	reqRemove, respRemove []string
}

// headerMutations translates route-level header mutations (route table,
// virtual host, route, weighted cluster). Like Envoy, they may not touch
// pseudo-headers or Host.
func headerMutations(src headerSource) (config.HeaderMutations, error) {
	var out config.HeaderMutations
	var err error
	if out.RequestHeadersToAdd, err = headerValueOptions(src.reqAdd, true); err != nil {
		return out, inField(err, "request_headers_to_add")
	}
	if out.ResponseHeadersToAdd, err = headerValueOptions(src.respAdd, true); err != nil {
		return out, inField(err, "response_headers_to_add")
	}
	if out.RequestHeadersToRemove, err = headersToRemove(src.reqRemove); err != nil {
		return out, inField(err, "request_headers_to_remove")
	}
	if out.ResponseHeadersToRemove, err = headersToRemove(src.respRemove); err != nil {
		return out, inField(err, "response_headers_to_remove")
	}
	return out, nil
}

// modifiable reports whether route-level mutations may touch a header.
func modifiable(name string) bool {
	return !strings.HasPrefix(name, ":") && !strings.EqualFold(name, "host")
}

func headersToRemove(names []string) ([]string, error) {
	for i, n := range names {
		if !modifiable(n) {
			return nil, inIndex(fmt.Errorf("%q may not be removed", n), "", i)
		}
	}
	return slices.Clone(names), nil
}

func headerValueOptions(opts []*corev3.HeaderValueOption, routeLevel bool) ([]config.HeaderValueOption, error) {
	var out []config.HeaderValueOption
	for i, o := range opts {
		hv, keep, err := headerValueOption(o, routeLevel)
		if err != nil {
			return nil, inIndex(err, "", i)
		}
		if keep {
			out = append(out, hv)
		}
	}
	return out, nil
}

// headerValueOption translates one header to add. keep is false for a
// header with an empty value and keep_empty_value unset, which Envoy drops.
func headerValueOption(o *corev3.HeaderValueOption, routeLevel bool) (_ config.HeaderValueOption, keep bool, _ error) {
	var hv config.HeaderValueOption
	if err := headerValueOptionFields.check(o); err != nil {
		return hv, false, err
	}
	h := o.GetHeader()
	if h == nil {
		return hv, false, errors.New("header is required")
	}
	hv.Key = h.GetKey()
	hv.Value = h.GetValue()
	if len(h.GetRawValue()) > 0 {
		if hv.Value != "" {
			return hv, false, errors.New("header: only one of value and raw_value may be set")
		}
		hv.Value = string(h.GetRawValue())
	}
	if routeLevel && !modifiable(hv.Key) {
		return hv, false, fmt.Errorf("header %q may not be modified", hv.Key)
	}
	switch a := o.GetAppendAction(); a {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		hv.Action = config.AppendIfExistsOrAdd
	case corev3.HeaderValueOption_ADD_IF_ABSENT:
		hv.Action = config.AddIfAbsent
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		hv.Action = config.OverwriteIfExistsOrAdd
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		hv.Action = config.OverwriteIfExists
	default:
		return hv, false, unsupportedValue("append_action", a)
	}
	if ap := o.GetAppend(); ap != nil {
		if o.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			return hv, false, errors.New("only one of append and append_action may be set")
		}
		if !ap.GetValue() {
			hv.Action = config.OverwriteIfExistsOrAdd
		}
	}
	return hv, hv.Value != "" || o.GetKeepEmptyValue(), nil
}

// headerMutationFilter translates the header_mutation filter's mutations.
// Envoy applies them in order; config.HeaderMutations removes before it
// adds, so a removal that follows an addition of the same header cannot be
// represented and is rejected.
func headerMutationFilter(m *headermutationv3.Mutations) (*config.HeaderMutationConfig, error) {
	out := &config.HeaderMutationConfig{}
	if m == nil {
		return out, nil
	}
	if err := mutationsFields.check(m); err != nil {
		return nil, inField(err, "mutations")
	}
	var err error
	out.RequestHeadersToAdd, out.RequestHeadersToRemove, err = mutationList(m.GetRequestMutations())
	if err != nil {
		return nil, inField(inField(err, "request_mutations"), "mutations")
	}
	out.ResponseHeadersToAdd, out.ResponseHeadersToRemove, err = mutationList(m.GetResponseMutations())
	if err != nil {
		return nil, inField(inField(err, "response_mutations"), "mutations")
	}
	return out, nil
}

func mutationList(ms []*mutationrulesv3.HeaderMutation) (add []config.HeaderValueOption, remove []string, _ error) {
	added := map[string]bool{}
	for i, m := range ms {
		if err := mutationFields.check(m); err != nil {
			return nil, nil, inIndex(err, "", i)
		}
		switch a := m.GetAction().(type) {
		case *mutationrulesv3.HeaderMutation_Remove:
			if added[strings.ToLower(a.Remove)] {
				return nil, nil, inIndex(fmt.Errorf("removing %q after adding it: ordered mutations are %w", a.Remove, ErrUnsupported), "", i)
			}
			remove = append(remove, a.Remove)
		case *mutationrulesv3.HeaderMutation_Append:
			hv, keep, err := headerValueOption(a.Append, false)
			if err != nil {
				return nil, nil, inIndex(inField(err, "append"), "", i)
			}
			if keep {
				added[strings.ToLower(hv.Key)] = true
				add = append(add, hv)
			}
		default:
			return nil, nil, inIndex(errors.New("one of remove or append is required"), "", i)
		}
	}
	return add, remove, nil
}

// perFilterConfig translates typed_per_filter_config, keyed by HTTP filter
// name.
func perFilterConfig(m map[string]*anypb.Any) (map[string]*config.FilterOverride, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := make(map[string]*config.FilterOverride, len(m))
	for _, name := range slices.Sorted(maps.Keys(m)) {
		fo, err := filterOverride(m[name], false)
		if err != nil {
			return nil, inField(err, fmt.Sprintf("typed_per_filter_config[%s]", name))
		}
		if fo != nil {
			out[name] = fo
		}
	}
	return out, nil
}

// filterOverride translates one per-route filter config. It returns nil for
// an optional config of a type this build does not know (Envoy ignores it).
func filterOverride(a *anypb.Any, inFilterConfig bool) (*config.FilterOverride, error) {
	t, err := unpack(a)
	if err != nil {
		return nil, err
	}
	switch m := t.msg.(type) {
	case *routev3.FilterConfig:
		if inFilterConfig {
			return nil, errors.New("a FilterConfig may not wrap another FilterConfig")
		}
		if err := filterConfigFields.check(m); err != nil {
			return nil, err
		}
		if m.GetDisabled() {
			return &config.FilterOverride{Disabled: true}, nil
		}
		if m.GetConfig() == nil {
			// Enables, for this route, a filter disabled in the HCM.
			return &config.FilterOverride{}, nil
		}
		fo, err := filterOverride(m.GetConfig(), true)
		if err != nil {
			if errors.Is(err, errUnknownType) && m.GetIsOptional() {
				return nil, nil
			}
			return nil, inField(err, "config")
		}
		return fo, nil
	case *corsv3.CorsPolicy:
		if err := corsPolicy(m); err != nil {
			return nil, err
		}
	case *headermutationv3.HeaderMutationPerRoute:
		hm, err := headerMutationFilter(m.GetMutations())
		if err != nil {
			return nil, err
		}
		return &config.FilterOverride{TypeURL: t.url, Config: hm}, nil
	}
	return &config.FilterOverride{TypeURL: t.url, Config: t.msg}, nil
}
