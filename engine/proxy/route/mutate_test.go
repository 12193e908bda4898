package route

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

func add(key, value string, a config.AppendAction) config.HeaderValueOption {
	return config.HeaderValueOption{Key: key, Value: value, Action: a}
}

// levels builds a table whose four levels each add the given request and
// response mutations.
func levels(t *testing.T, table, vhost, route, wc config.HeaderMutations) (*Route, *config.WeightedCluster) {
	t.Helper()
	w := &config.WeightedCluster{Name: "w", Weight: 1, HeaderMutations: wc}
	other := &config.WeightedCluster{Name: "other", Weight: 1}
	tb := mustCompile(t, &config.RouteConfiguration{
		HeaderMutations: table,
		VirtualHosts: []*config.VirtualHost{{
			Name: "vh", Domains: []string{"*"}, HeaderMutations: vhost,
			Routes: []*config.Route{{
				HeaderMutations: route,
				Action:          &config.RouteAction{WeightedClusters: []*config.WeightedCluster{w, other}},
			}},
		}},
	})
	return tb.vhosts[0].Routes[0], w
}

func TestMutationOrder(t *testing.T) {
	mk := func(v string) config.HeaderMutations {
		return config.HeaderMutations{
			RequestHeadersToAdd:  []config.HeaderValueOption{add("x-order", v, config.AppendIfExistsOrAdd), add("X-Winner", v, config.OverwriteIfExistsOrAdd)},
			ResponseHeadersToAdd: []config.HeaderValueOption{add("x-order", v, config.AppendIfExistsOrAdd), add("x-winner", v, config.OverwriteIfExistsOrAdd)},
		}
	}
	r, w := levels(t, mk("table"), mk("vhost"), mk("route"), mk("wc"))

	// Innermost first: appends accumulate wc, route, vhost, table; the last
	// overwrite (the least specific level) wins.
	want := []string{"x-winner=table", "x-order=wc", "x-order=route", "x-order=vhost", "x-order=table"}
	h := &header.Map{}
	r.ApplyRequestMutations(h, w)
	if got := fields(h); !reflect.DeepEqual(got, want) {
		t.Errorf("request: %v, want %v", got, want)
	}
	h = &header.Map{}
	r.ApplyResponseMutations(h, w)
	if got := fields(h); !reflect.DeepEqual(got, want) {
		t.Errorf("response: %v, want %v", got, want)
	}

	// Without a weighted cluster (or with one of another route) the wc
	// level is skipped.
	for _, wc := range []*config.WeightedCluster{nil, {Name: "w", Weight: 1}} {
		h = &header.Map{}
		r.ApplyRequestMutations(h, wc)
		want := []string{"x-winner=table", "x-order=route", "x-order=vhost", "x-order=table"}
		if got := fields(h); !reflect.DeepEqual(got, want) {
			t.Errorf("wc %v: %v, want %v", wc, got, want)
		}
	}
}

func TestMutationRemoveAfterAdd(t *testing.T) {
	// The virtual host removes what the route added: removes run per level,
	// and the less specific level runs later.
	r, _ := levels(t,
		config.HeaderMutations{},
		config.HeaderMutations{RequestHeadersToRemove: []string{"X-Route"}},
		config.HeaderMutations{RequestHeadersToAdd: []config.HeaderValueOption{add("x-route", "1", config.AppendIfExistsOrAdd)}},
		config.HeaderMutations{})
	h := req("h", "/")
	r.ApplyRequestMutations(h, nil)
	if h.Has("x-route") {
		t.Fatalf("x-route survived: %v", fields(h))
	}
}

func TestMutationAppendActions(t *testing.T) {
	tests := []struct {
		name   string
		remove []string
		add    []config.HeaderValueOption
		in     []string
		want   []string
	}{
		{"append adds", nil, []config.HeaderValueOption{add("x-a", "2", config.AppendIfExistsOrAdd)},
			[]string{"x-a", "1"}, []string{"x-a=1", "x-a=2"}},
		{"append to absent", nil, []config.HeaderValueOption{add("x-a", "2", config.AppendIfExistsOrAdd)},
			nil, []string{"x-a=2"}},
		{"add if absent, present", nil, []config.HeaderValueOption{add("x-a", "2", config.AddIfAbsent)},
			[]string{"X-A", "1"}, []string{"X-A=1"}},
		{"add if absent, absent", nil, []config.HeaderValueOption{add("x-a", "2", config.AddIfAbsent)},
			nil, []string{"x-a=2"}},
		// Conditions look at the headers before this level's adds.
		{"add if absent twice in one level", nil, []config.HeaderValueOption{add("x-a", "1", config.AddIfAbsent), add("x-a", "2", config.AddIfAbsent)},
			nil, []string{"x-a=1", "x-a=2"}},
		{"overwrite replaces all", nil, []config.HeaderValueOption{add("x-a", "new", config.OverwriteIfExistsOrAdd)},
			[]string{"x-a", "1", "x-b", "b", "x-a", "2"}, []string{"x-a=new", "x-b=b"}},
		{"overwrite adds", nil, []config.HeaderValueOption{add("x-a", "new", config.OverwriteIfExistsOrAdd)},
			nil, []string{"x-a=new"}},
		{"overwrite if exists, present", nil, []config.HeaderValueOption{add("x-a", "new", config.OverwriteIfExists)},
			[]string{"x-a", "1"}, []string{"x-a=new"}},
		{"overwrite if exists, absent", nil, []config.HeaderValueOption{add("x-a", "new", config.OverwriteIfExists)},
			nil, nil},
		{"overwrite if exists does not see same-level add", nil, []config.HeaderValueOption{add("x-a", "1", config.AppendIfExistsOrAdd), add("x-a", "2", config.OverwriteIfExists)},
			nil, []string{"x-a=1"}},
		// Overwrites go first, then appends, whatever the config order.
		{"overwrites before appends", nil, []config.HeaderValueOption{add("x-a", "1", config.AppendIfExistsOrAdd), add("x-a", "2", config.OverwriteIfExistsOrAdd)},
			[]string{"x-a", "0"}, []string{"x-a=2", "x-a=1"}},
		{"removes before adds", []string{"x-a"}, []config.HeaderValueOption{add("x-a", "new", config.AppendIfExistsOrAdd)},
			[]string{"x-a", "old", "x-a", "older"}, []string{"x-a=new"}},
		{"remove then add if absent", []string{"x-a"}, []config.HeaderValueOption{add("x-a", "new", config.AddIfAbsent)},
			[]string{"x-a", "old"}, []string{"x-a=new"}},
		{"remove is case-insensitive", []string{"X-Gone"}, nil,
			[]string{"x-gone", "1", "x-kept", "2"}, []string{"x-kept=2"}},
		{"empty value is skipped", nil, []config.HeaderValueOption{add("x-a", "", config.OverwriteIfExistsOrAdd)},
			[]string{"x-a", "1"}, []string{"x-a=1"}},
		{"key lower-cased", nil, []config.HeaderValueOption{add("X-Mixed-Case", "v", config.AppendIfExistsOrAdd)},
			nil, []string{"x-mixed-case=v"}},
		{"formatters are literal", nil, []config.HeaderValueOption{add("x-f", "%REQ(:path)%", config.AppendIfExistsOrAdd)},
			nil, []string{"x-f=%REQ(:path)%"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := oneRoute(t, &config.Route{Action: toCluster("c"), HeaderMutations: config.HeaderMutations{
				RequestHeadersToAdd: tt.add, RequestHeadersToRemove: tt.remove,
			}})
			h := &header.Map{}
			for i := 0; i+1 < len(tt.in); i += 2 {
				h.Add(tt.in[i], tt.in[i+1])
			}
			r.ApplyRequestMutations(h, nil)
			if got := fields(h); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMutationManyEntries(t *testing.T) {
	// More entries than the on-stack decision bitmap holds.
	var adds []config.HeaderValueOption
	for i := 0; i < 300; i++ {
		adds = append(adds, add(fmt.Sprintf("x-%d", i%150), "v", config.AddIfAbsent))
	}
	r := oneRoute(t, &config.Route{Action: toCluster("c"), HeaderMutations: config.HeaderMutations{RequestHeadersToAdd: adds}})
	h := &header.Map{}
	h.Add("x-7", "pre")
	r.ApplyRequestMutations(h, nil)
	// 149 absent names, each added twice; x-7 kept as is.
	if h.Len() != 1+149*2 || h.Value("x-7") != "pre" || h.Count("x-7") != 1 {
		t.Fatalf("len %d, x-7=%q (%d)", h.Len(), h.Value("x-7"), h.Count("x-7"))
	}
}
