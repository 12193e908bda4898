package xds

import (
	"errors"
	"fmt"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-proxy/sluice/engine/config"
)

// rulesSource recognises a Sluice rules filter sent over xDS: a TypedStruct
// (xds.type.v3 or udpa.type.v1) whose type_url is config.TypeRulesSource
// and whose value holds the rule-language source. It has no protobuf
// message of its own, so it cannot go through unpack. ok is false for any
// other config.
func rulesSource(a *anypb.Any) (_ *config.RulesSource, ok bool, _ error) {
	var url string
	var value *structpb.Struct
	switch {
	case a.MessageIs(&xdstypev3.TypedStruct{}):
		ts := &xdstypev3.TypedStruct{}
		if err := a.UnmarshalTo(ts); err != nil {
			return nil, false, nil // unpack reports it
		}
		url, value = ts.GetTypeUrl(), ts.GetValue()
	case a.MessageIs(&udpatypev1.TypedStruct{}):
		ts := &udpatypev1.TypedStruct{}
		if err := a.UnmarshalTo(ts); err != nil {
			return nil, false, nil
		}
		url, value = ts.GetTypeUrl(), ts.GetValue()
	default:
		return nil, false, nil
	}
	if url != config.TypeRulesSource {
		return nil, false, nil
	}
	rs := &config.RulesSource{}
	for k, v := range value.GetFields() {
		s, isString := v.GetKind().(*structpb.Value_StringValue)
		switch {
		case k != "source" && k != "name":
			return nil, true, inField(fmt.Errorf("unknown field %q (want source, name)", k), "value")
		case !isString:
			return nil, true, inField(fmt.Errorf("%s: want a string", k), "value")
		case k == "source":
			rs.Source = s.StringValue
		default:
			rs.Name = s.StringValue
		}
	}
	if rs.Source == "" {
		return nil, true, inField(errors.New("source is required"), "value")
	}
	return rs, true, nil
}
