package expr

import (
	"strings"
	"testing"

	celpb "cel.dev/expr"
	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	exprpb "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// canaryJSON is `request.headers["x-canary"] == "true"` as an Envoy config
// writes it: a tree with every id left at 0.
const canaryJSON = `{"callExpr": {"function": "_==_", "args": [
  {"callExpr": {"function": "_[_]", "args": [
    {"selectExpr": {"operand": {"identExpr": {"name": "request"}}, "field": "headers"}},
    {"constExpr": {"stringValue": "x-canary"}}]}},
  {"constExpr": {"stringValue": "true"}}]}}`

func exprFromJSON(t *testing.T, js string) *exprpb.Expr {
	t.Helper()
	e := &exprpb.Expr{}
	if err := protojson.Unmarshal([]byte(js), e); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestCompileProto(t *testing.T) {
	src := newFakeSource()
	canary := exprFromJSON(t, canaryJSON)
	var celCanary celpb.Expr
	if err := convert(canary, &celCanary); err != nil {
		t.Fatal(err)
	}

	// A checked expression from another environment, checked again here.
	other, err := cel.NewEnv(cel.Variable("request.path", cel.StringType))
	if err != nil {
		t.Fatal(err)
	}
	ast, iss := other.Compile(`request.path.startsWith("/api/")`)
	if iss.Err() != nil {
		t.Fatal(iss.Err())
	}
	checked, err := cel.AstToCheckedExpr(ast)
	if err != nil {
		t.Fatal(err)
	}

	// A comprehension parsed without its macro call recorded cannot be
	// printed back; it is compiled from the tree.
	parsed, iss := testEnv.cel.Parse(`request.headers.exists(k, k == "x-canary")`)
	if iss.Err() != nil {
		t.Fatal(iss.Err())
	}
	pe, err := cel.AstToParsedExpr(parsed)
	if err != nil {
		t.Fatal(err)
	}
	pe.SourceInfo.MacroCalls = nil

	tests := []struct {
		name    string
		m       proto.Message
		text    string // Source(), "" for a tree compiled directly
		want    bool
		wantErr string
	}{
		{"v1alpha1 expr with zero ids", canary, `request.headers["x-canary"] == "true"`, true, ""},
		{"cel.expr expr", &celCanary, `request.headers["x-canary"] == "true"`, true, ""},
		{"checked elsewhere", checked, `request.path.startsWith("/api/")`, true, ""},
		{"parsed expr", &exprpb.ParsedExpr{Expr: exprFromJSON(t, `{"identExpr": {"name": "connection.mtls"}}`)}, "connection.mtls", true, ""},
		{"comprehension without macro calls", pe, "", true, ""},
		{"unknown attribute", exprFromJSON(t, `{"selectExpr": {"operand": {"identExpr": {"name": "request"}}, "field": "pth"}}`), "", false,
			"expr: request.pth: 1:1: unknown attribute request.pth; did you mean request.path?"},
		{"not bool", exprFromJSON(t, `{"selectExpr": {"operand": {"identExpr": {"name": "request"}}, "field": "path"}}`), "", false,
			"must be bool, got string"},
		{"not an expression", &exprpb.Constant{}, "", false, "expr: google.api.expr.v1alpha1.Constant is not a CEL expression message"},
		{"empty", &exprpb.Expr{}, "", false, "expr: empty expression"},
		{"unknown function", exprFromJSON(t, `{"callExpr": {"function": "_[_", "args": [{"identExpr": {"name": "x"}}]}}`), "", false,
			"undeclared reference to '_[_'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := testEnv.ProtoCondition(tt.m)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.(protoCondition).String(); got != tt.text {
				t.Errorf("source %q, want %q", got, tt.text)
			}
			ok, err := c.Eval(src)
			if err != nil || ok != tt.want {
				t.Errorf("eval = %v, %v; want %v", ok, err, tt.want)
			}
		})
	}
}

// Compiling does not change the config's message (ids are renumbered on a
// copy), and a missing header fails at run time, as in the DSL.
func TestCompileProtoRuntime(t *testing.T) {
	canary := exprFromJSON(t, canaryJSON)
	before := proto.Clone(canary)
	c, err := testEnv.ProtoCondition(canary)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(before, canary) {
		t.Error("the config's expression was modified")
	}
	src := newFakeSource()
	src.req = headers(":path", "/")
	if _, err := c.Eval(src); err == nil {
		t.Error("missing key: no error")
	}
	p, err := testEnv.CompileProto(exprFromJSON(t, `{"constExpr": {"int64Value": 7}}`), Int)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := p.Constant(); !ok || v != types.Int(7) {
		t.Errorf("constant %v %v", v, ok)
	}
}
