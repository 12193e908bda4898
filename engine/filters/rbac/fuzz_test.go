package rbac

import (
	"fmt"
	"testing"

	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Any config either fails to compile with an error or compiles to a
// filter that answers every request: nothing panics.
func FuzzCompile(f *testing.F) {
	for _, src := range []string{istioShaped, fmt.Sprintf(twoPolicies, "DENY"), `shadow_rules: {action: LOG}`} {
		b, err := proto.Marshal(filterConfig(f, src))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	st := observe.NewStore()
	f.Fuzz(func(t *testing.T, b []byte) {
		m := &httprbacv3.RBAC{}
		if proto.Unmarshal(b, m) != nil {
			return
		}
		fac, err := Compiler{Stats: st, Conditions: fakeConditions}.CompileScoped(m, stream.CompileScope{StatPrefix: "fuzz"})
		if err != nil {
			return
		}
		for _, s := range []*fakeStream{benchStream(), newStream("x-role", "admin", ":path", "/admin/x")} {
			fac.NewFilter(s).OnRequestHeaders(&s.req, true)
		}
	})
}
