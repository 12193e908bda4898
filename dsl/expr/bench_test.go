package expr

import "testing"

func BenchmarkEvalBool(b *testing.B) {
	p := compile(b, `request.path.startsWith("/api/") && request.headers["x-canary"] == "true"`, Bool)
	src := newFakeSource()
	b.ReportAllocs()
	for b.Loop() {
		ok, err := p.EvalBool(src)
		if err != nil || !ok {
			b.Fatal(ok, err)
		}
	}
}

func BenchmarkEvalString(b *testing.B) {
	p := compile(b, `request.method + " " + request.host + request.url_path`, String)
	src := newFakeSource()
	b.ReportAllocs()
	for b.Loop() {
		s, err := p.EvalString(src)
		if err != nil || s == "" {
			b.Fatal(s, err)
		}
	}
}

// A comprehension keeps runtime cost tracking on.
func BenchmarkEvalBoolTracked(b *testing.B) {
	p := compile(b, `request.headers.exists(k, k == "x-canary")`, Bool)
	src := newFakeSource()
	b.ReportAllocs()
	for b.Loop() {
		ok, err := p.EvalBool(src)
		if err != nil || !ok {
			b.Fatal(ok, err)
		}
	}
}

// How long a request runs before the default cost limit stops it.
func BenchmarkCostOverrun(b *testing.B) {
	p := compile(b, `request.path != "" && `+expensive(6), Bool)
	src := newFakeSource()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.EvalBool(src); err == nil {
			b.Fatal("no overrun")
		}
	}
}
