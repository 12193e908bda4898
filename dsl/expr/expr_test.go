package expr

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/interpreter"

	"github.com/sluice-proxy/sluice/engine/attr"
)

var testEnv = func() *Env {
	e, err := NewEnv()
	if err != nil {
		panic(err)
	}
	return e
}()

func compile(t testing.TB, src string, want Type) *Program {
	t.Helper()
	p, err := testEnv.Compile(src, want)
	if err != nil {
		t.Fatalf("Compile(%q): %v", src, err)
	}
	return p
}

func kindType(k attr.Kind) (Type, string) {
	switch k {
	case attr.KindString:
		return String, "string"
	case attr.KindInt:
		return Int, "int"
	case attr.KindBool:
		return Bool, "bool"
	case attr.KindTime:
		return Any, "timestamp"
	}
	return Any, "map(string, string)"
}

// Every attribute of engine/attr is declared with its type, and evaluates
// to what attr.Resolve reads.
func TestEveryAttribute(t *testing.T) {
	src := newFakeSource()
	n := 0
	for i, name := range attr.Names {
		if name == "" {
			continue
		}
		n++
		id := attr.ID(i)
		want, typ := kindType(attr.Kinds[id])
		t.Run(name, func(t *testing.T) {
			p := compile(t, name, want)
			if got := p.Attributes(); !reflect.DeepEqual(got, []attr.ID{id}) {
				t.Errorf("Attributes() = %v, want [%v]", got, id)
			}
			// The type is exact: any other slot type is refused with it.
			other := Bool
			if want == Bool {
				other = Int
			}
			_, err := testEnv.Compile(name, other)
			var ce *Error
			if !errors.As(err, &ce) || ce.Got != typ || ce.Want != other {
				t.Fatalf("Compile(%q, %v) = %v, want a mismatch error got %s", name, other, err, typ)
			}
			v, err := p.Eval(src)
			if err != nil {
				t.Fatal(err)
			}
			rv := attr.Resolve(src, id)
			var exp any
			switch rv.Kind {
			case attr.KindString:
				exp = rv.Str
			case attr.KindInt:
				exp = rv.Int
			case attr.KindBool:
				exp = rv.Bool
			case attr.KindTime:
				exp = rv.Time
			case attr.KindHeaders:
				exp = headerMap{rv.Headers}.toMap()
			}
			got := v.Value()
			if ts, ok := v.(types.Timestamp); ok {
				got = ts.Time
			}
			if !reflect.DeepEqual(got, exp) {
				t.Errorf("%s = %#v, want %#v", name, got, exp)
			}
		})
	}
	if n != len(testEnv.ids) || n < 20 {
		t.Fatalf("declared %d attributes, attr.Names has %d", len(testEnv.ids), n)
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		src  string
		want Type
		err  string // ErrorList.Error(): "line:col: message" per error
	}{
		{`request.path`, Bool, "1:1: must be bool, got string"},
		{`  request.path + "x"`, Bool, "1:3: must be bool, got string"},
		{`response.code`, String, "1:1: must be string, got int (convert it with string(...))"},
		{`request.time`, Bool, "1:1: must be bool, got timestamp"},
		{`request.headers`, String, "1:1: must be string, got map(string, string)"},
		{`(request.path)`, Int, "1:1: must be int, got string"},
		{`request.pth == "/"`, Bool, "1:1: unknown attribute request.pth; did you mean request.path?"},
		{`request.header["x"] == "1"`, Bool, "1:1: unknown attribute request.header; did you mean request.headers?"},
		{`x == 1 || source.ip == "1.2.3.4"`, Bool,
			"1:11: unknown attribute source.ip; source attributes are source.address, source.port"},
		{"request.path == \"/\" &&\n  request.nope", Bool,
			"2:3: unknown attribute request.nope; did you mean request.host?"},
		{`request == 1`, Bool, "1:1: request is not an attribute; request attributes are request.headers, request.host, request.id, request.method, request.path, request.protocol, request.query, request.referer, request.scheme, request.size, request.time, request.url_path, request.useragent"},
		{`"é" + request.nope`, String, "1:8: unknown attribute request.nope; did you mean request.host?"},
		{`foo == 1`, Bool, "1:1: undeclared reference to 'foo'"},
		{`request.headers.x-canary == "1"`, Bool, `1:1: a header name with '-' needs an index: request.headers["x-canary"]`},
		{`has(request.path)`, Bool, "1:5: has() cannot test the attribute request.path: attributes always have a value (empty or 0 when unknown); compare it instead"},
		{`request.path.foo == 1`, Bool, "1:13: type 'string' does not support field selection"},
		{`source.port == "80"`, Bool, "1:13: found no matching overload for '_==_' applied to '(int, string)'"},
		{`request.path.startsWith(1)`, Bool, "1:24: found no matching overload for 'startsWith' applied to 'string.(int)'"},
		{"request.path ==", Bool, "1:16: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}"},
		{"request.pth == 1 || response.cod == 2", Bool,
			"1:1: unknown attribute request.pth; did you mean request.path?\n1:21: unknown attribute response.cod; did you mean response.code?"},
		{`1 / 0 == 1`, Bool, "1:1: expression always fails: division by zero"},
		// A comprehension variable may shadow a namespace.
		{`[1].exists(request, request == 1)`, Bool, ""},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			_, err := testEnv.Compile(tt.src, tt.want)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.err {
				t.Errorf("Compile(%q) error\n got: %s\nwant: %s", tt.src, got, tt.err)
			}
			if err == nil {
				return
			}
			var l ErrorList
			if !errors.As(err, &l) || len(l) == 0 {
				t.Fatalf("error %T is not an ErrorList", err)
			}
			for _, e := range l {
				// Offset, Line and Column agree.
				before := tt.src[:e.Offset]
				line := strings.Count(before, "\n") + 1
				col := len(before) - strings.LastIndexByte(before, '\n')
				if e.Line != line || e.Column != col {
					t.Errorf("%v: offset %d is %d:%d", e, e.Offset, line, col)
				}
			}
		})
	}
}

func TestEval(t *testing.T) {
	tests := []struct {
		src  string
		want any // bool, string, int64 or error text
	}{
		{`request.path`, "/api/v1/users?id=7&x=1"},
		{`request.url_path`, "/api/v1/users"},
		{`request.query`, "id=7&x=1"},
		{`request.method == "GET" && request.host == "example.com"`, true},
		{`source.address + ":" + string(source.port)`, "10.1.2.3:54321"},
		{`destination.port == 8443 && connection.mtls`, true},
		{`connection.requested_server_name + " " + connection.tls_version`, "sni.example TLS 1.3"},
		{`response.code >= 500`, true},
		{`request.time.getFullYear() * 100 + request.time.getMonth() + 1`, int64(202405)},
		{`request.time > timestamp("2024-01-01T00:00:00Z")`, true},
		{`xds.route_name + "/" + xds.cluster_name + "@" + upstream.address`, "api/backend@10.0.0.9:8080"},

		// Headers: lower-case keys, case-insensitive lookups, joined values.
		{`request.headers["x-canary"]`, "true"},
		{`request.headers["X-CANARY"]`, "true"},
		{`request.headers.accept`, "text/html,application/json"},
		{`response.headers["set-cookie"]`, "a=1,b=2"},
		{`request.headers["x-missing"]`, "expr: no such key: x-missing"},
		{`has(request.headers.accept)`, true},
		{`has(request.headers.missing)`, false},
		{`"user-agent" in request.headers`, true},
		{`"User-Agent" in request.headers`, true},
		{`"nope" in request.headers`, false},
		{`request.headers[?"x-missing"].orValue("none")`, "none"},
		{`request.headers[?"x-canary"].orValue("none")`, "true"},
		{`request.headers.exists(k, k == "x-canary")`, true},
		{`request.headers.exists(k, k == "X-Canary")`, false},
		{`request.headers.filter(k, !k.startsWith(":")).join(",")`, "x-canary,accept,user-agent,referer"},
		{`request.headers.size()`, int64(8)},
		{`request.headers.all(k, request.headers[k] != "")`, true},
		{`response.trailers.size() == 0 && !has(response.trailers.x)`, true},
		{`request.headers == {"x": "y"}`, false},
		{`{"GET": "read", "POST": "write"}[request.method]`, "read"},
		{`request.headers[request.headers["x-canary"] == "true" ? "accept" : "referer"]`, "text/html,application/json"},
		{`[1, 2].all(i, request.path.startsWith("/api"))`, true},

		// String extensions and encoders.
		{`request.path.lowerAscii().substring(1, 4)`, "api"},
		{`request.url_path.split("/")[2]`, "v1"},
		{`request.headers["user-agent"].replace("curl", "wget").upperAscii()`, "WGET/8.5"},
		{`"%s %d".format([request.method, response.code])`, "GET 503"},
		{`request.path.indexOf("?")`, int64(13)},
		{`base64.encode(bytes(request.method))`, "R0VU"},
		{`request.path.matches("^/api/v[0-9]+/")`, true},
	}
	src := newFakeSource()
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			p := compile(t, tt.src, Any)
			v, err := p.Eval(src)
			var got any
			if err != nil {
				got = err.Error()
			} else {
				got = v.Value()
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s = %#v, want %#v", tt.src, got, tt.want)
			}
		})
	}
}

func TestEvalTyped(t *testing.T) {
	src := newFakeSource()
	b, err := compile(t, `request.path.startsWith("/api/") && request.headers["x-canary"] == "true"`, Bool).EvalBool(src)
	if err != nil || !b {
		t.Errorf("EvalBool = %v, %v", b, err)
	}
	s, err := compile(t, `request.method + " " + request.url_path`, String).EvalString(src)
	if err != nil || s != "GET /api/v1/users" {
		t.Errorf("EvalString = %q, %v", s, err)
	}
	// A dyn result passes the compile check and is checked at run time.
	p := compile(t, `dyn(request.path)`, Bool)
	if _, err := p.EvalBool(src); err == nil || err.Error() != "expr: result is string, want bool" {
		t.Errorf("EvalBool(dyn string) error = %v", err)
	}
	if _, err := compile(t, `dyn(response.code)`, String).EvalString(src); err == nil || err.Error() != "expr: result is int, want string" {
		t.Errorf("EvalString(dyn int) error = %v", err)
	}
}

func TestConstant(t *testing.T) {
	tests := []struct {
		src  string
		want any // nil: not constant
	}{
		{`"ok"`, "ok"},
		{`"not " + "found"`, "not found"},
		{`200 + 4`, int64(204)},
		{`"a,b".split(",").size() == 2`, true},
		{`[1, 2, 3].exists(x, x > 2)`, true},
		{`true || request.path == "/"`, true},
		{`request.path`, nil},
		{`request.path == "/" && false`, false},
		{`request.headers["x"] + "!"`, nil},
	}
	for _, tt := range tests {
		p := compile(t, tt.src, Any)
		c, ok := p.Constant()
		switch {
		case tt.want == nil && ok:
			t.Errorf("%s: Constant() = %v, want none", tt.src, c)
		case tt.want != nil && (!ok || !reflect.DeepEqual(c.Value(), tt.want)):
			t.Errorf("%s: Constant() = %v, %v, want %v", tt.src, c, ok, tt.want)
		case ok:
			// A constant evaluates to itself without touching the stream.
			if v, err := p.Eval(nil); err != nil || v != c {
				t.Errorf("%s: Eval = %v, %v", tt.src, v, err)
			}
		}
	}
}

func TestAttributes(t *testing.T) {
	tests := []struct {
		src  string
		want []attr.ID
	}{
		{`request.path.startsWith("/api") && request.headers["x"] == "y" || source.port == 80`,
			[]attr.ID{attr.RequestPath, attr.RequestHeaders, attr.SourcePort}},
		{`request.headers.exists(k, k.startsWith("x-") && request.headers[k] == request.host)`,
			[]attr.ID{attr.RequestHost, attr.RequestHeaders}},
		{`has(response.headers.etag) ? response.code : 0`, []attr.ID{attr.ResponseCode, attr.ResponseHeaders}},
		{`[1].map(request, request + source.port)`, []attr.ID{attr.SourcePort}},
		{`"static"`, nil},
	}
	for _, tt := range tests {
		p := compile(t, tt.src, Any)
		got := p.Attributes()
		want := append([]attr.ID(nil), tt.want...)
		// Attributes are in ID order.
		for i := 1; i < len(want); i++ {
			for j := i; j > 0 && want[j] < want[j-1]; j-- {
				want[j], want[j-1] = want[j-1], want[j]
			}
		}
		if len(got) != len(want) || (len(got) > 0 && !reflect.DeepEqual(got, want)) {
			t.Errorf("%s: Attributes() = %v, want %v", tt.src, got, want)
		}
	}
}

// expensive builds nested comprehensions over a 10-element list: 10^depth
// iterations.
func expensive(depth int) string {
	list := "[0,1,2,3,4,5,6,7,8,9]"
	s := "true"
	for i := depth; i > 0; i-- {
		s = fmt.Sprintf("%s.all(v%d, %s)", list, i, s)
	}
	return s
}

func TestCostLimit(t *testing.T) {
	src := newFakeSource()
	p := compile(t, `request.path != "" && `+expensive(6), Bool)
	start := time.Now()
	_, err := p.EvalBool(src)
	if !errors.Is(err, ErrCostLimit) {
		t.Fatalf("EvalBool = %v, want ErrCostLimit", err)
	}
	if err.Error() != "expr: cost limit exceeded (limit 100000)" {
		t.Errorf("error text %q", err)
	}
	t.Logf("stopped after %v", time.Since(start))

	// The same shape within the limit runs.
	if ok, err := compile(t, `request.path != "" && `+expensive(2), Bool).EvalBool(src); err != nil || !ok {
		t.Errorf("small comprehension: %v, %v", ok, err)
	}

	// String building is costed too.
	small, err := NewEnv(WithCostLimit(50))
	if err != nil {
		t.Fatal(err)
	}
	p, err = small.Compile(`[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].map(i, request.path).join(",")`, String)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.EvalString(src); !errors.Is(err, ErrCostLimit) {
		t.Errorf("EvalString = %v, want ErrCostLimit", err)
	}

	// Without an attribute the overrun is certain, so it fails to compile.
	if _, err := testEnv.Compile(expensive(6), Bool); err == nil || !strings.Contains(err.Error(), "expression always fails: cost limit exceeded") {
		t.Errorf("constant overrun: %v", err)
	}
}

func TestPanicBecomesError(t *testing.T) {
	src := newFakeSource()
	src.panicOnHeaders = true
	_, err := compile(t, `request.path == "/"`, Bool).EvalBool(src)
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("EvalBool = %v, want an error carrying the panic", err)
	}
	// The pool keeps working afterwards.
	src.panicOnHeaders = false
	if ok, err := compile(t, `request.path != "/"`, Bool).EvalBool(src); err != nil || !ok {
		t.Fatalf("after panic: %v, %v", ok, err)
	}
}

func TestConcurrent(t *testing.T) {
	p := compile(t, `request.headers.exists(k, k == "x-id") && request.headers["x-id"] == request.path.substring(1)`, Bool)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				id := fmt.Sprint(g*1000 + i)
				src := &fakeSource{req: headers(":path", "/"+id, "x-id", id)}
				ok, err := p.EvalBool(src)
				if err != nil || !ok {
					t.Errorf("goroutine %d: %v, %v", g, ok, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// The activation is found from comprehension scopes, and evaluation also
// works with a plain by-name activation.
func TestByNameActivation(t *testing.T) {
	p := compile(t, `[1].all(x, request.headers["a"] == request.method)`, Bool)
	out, err := p.run(mapActivation{"request.headers": headerMap{headers("A", "GET")}, "request.method": types.String("GET")})
	if err != nil || out != types.True {
		t.Fatalf("by name: %v, %v", out, err)
	}
}

type mapActivation map[string]ref.Val

func (m mapActivation) ResolveName(n string) (any, bool) { v, ok := m[n]; return v, ok }
func (m mapActivation) Parent() interpreter.Activation   { return nil }

// Runtime cost tracking is on exactly where the static bound does not
// settle it: comprehensions, or an estimate over the limit.
func TestCostTrackingDecision(t *testing.T) {
	tests := []struct {
		src     string
		tracked bool
	}{
		{`request.path.startsWith("/api/") && request.headers["x-canary"] == "true"`, false},
		{`"Bearer " + request.headers["x-token"]`, false},
		{`source.address in ["10.0.0.1", "10.0.0.2"] || request.path.matches("^/v[0-9]+/")`, false},
		{`request.headers.exists(k, k == "x-canary")`, true},
		{`[1, 2, 3].exists(x, x == request.size)`, true},
		{`request.path.replace("/", request.headers["x"]).size() > 0`, true},
	}
	for _, tt := range tests {
		if p := compile(t, tt.src, Any); p.tracked != tt.tracked {
			t.Errorf("%s: tracked = %v, want %v", tt.src, p.tracked, tt.tracked)
		}
	}
}

func TestConcat(t *testing.T) {
	src := newFakeSource()
	tests := []struct {
		src  string
		want string // or error text
	}{
		{`request.method + " " + request.host + request.url_path`, "GET example.com/api/v1/users"},
		{`"<" + (request.method + "|" + request.scheme) + ">"`, "<GET|https>"},
		{`"a" + request.headers["missing"] + request.path`, "expr: no such key: missing"},
		{`"x" + dyn(response.code)`, "expr: no such overload"},
		// Within a comprehension (tracked, not fused) the result is the same.
		{`[1].map(i, request.method + "-" + request.host)[0]`, "GET-example.com"},
	}
	for _, tt := range tests {
		p, err := testEnv.Compile(tt.src, String)
		if err != nil {
			t.Fatalf("%s: %v", tt.src, err)
		}
		got, err := p.EvalString(src)
		if err != nil {
			got = err.Error()
		}
		if got != tt.want {
			t.Errorf("%s = %q, want %q", tt.src, got, tt.want)
		}
	}
}

func TestConcurrentCompile(t *testing.T) {
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				src := fmt.Sprintf(`request.path == "/%d" && request.headers["x"] == "%d"`, g, i)
				if _, err := testEnv.Compile(src, Bool); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
