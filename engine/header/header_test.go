package header

import (
	"reflect"
	"strconv"
	"testing"
)

// mk builds a map from name/value pairs in wire order.
func mk(kv ...string) *Map {
	var m Map
	for i := 0; i+1 < len(kv); i += 2 {
		m.Add(kv[i], kv[i+1])
	}
	return &m
}

// pairs flattens a map back to name/value pairs in wire order.
func pairs(m *Map) []string {
	out := []string{}
	for _, f := range m.Fields() {
		out = append(out, f.Name, f.Value)
	}
	return out
}

func TestEqualFold(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"", "", true},
		{"content-type", "Content-Type", true},
		{"CONTENT-TYPE", "content-type", true},
		{"x-a", "x-b", false},
		{"x-a", "x-ab", false},
		{"@", "`", false}, // 0x40 vs 0x60: only A-Z fold
		{"[", "{", false}, // 0x5b vs 0x7b
		{"Z", "z", true},
		{"A1-_", "a1-_", true},
		// Non-ASCII bytes are never folded: É (C3 89) vs é (C3 A9).
		{"\u00c9", "\u00e9", false},
		// Kelvin sign K (E2 84 AA) folds to k under Unicode, not here.
		{"\u212a", "k", false},
		{"\xc3\x89", "\xc3\x89", true},
	}
	for _, tt := range tests {
		if got := EqualFold(tt.a, tt.b); got != tt.want {
			t.Errorf("EqualFold(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := EqualFold(tt.b, tt.a); got != tt.want {
			t.Errorf("EqualFold(%q, %q) = %v, want %v (symmetry)", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestMapReads(t *testing.T) {
	m := mk(":method", "GET", "Accept", "a", "X-Multi", "1", "accept", "b", "x-multi", "2", "X-MULTI", "3", "Empty", "")
	tests := []struct {
		name      string
		get       string
		getOK     bool
		value     string
		count     int
		allValues []string
	}{
		{name: "accept", get: "a", getOK: true, value: "a", count: 2, allValues: []string{"a", "b"}},
		{name: "ACCEPT", get: "a", getOK: true, value: "a", count: 2, allValues: []string{"a", "b"}},
		{name: "x-multi", get: "1", getOK: true, value: "1", count: 3, allValues: []string{"1", "2", "3"}},
		{name: ":METHOD", get: "GET", getOK: true, value: "GET", count: 1, allValues: []string{"GET"}},
		{name: "empty", get: "", getOK: true, value: "", count: 1, allValues: []string{""}},
		{name: "missing", get: "", getOK: false, value: "", count: 0, allValues: nil},
		{name: "accep", get: "", getOK: false, value: "", count: 0, allValues: nil},
		{name: "", get: "", getOK: false, value: "", count: 0, allValues: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, ok := m.Get(tt.name)
			if v != tt.get || ok != tt.getOK {
				t.Errorf("Get = %q, %v; want %q, %v", v, ok, tt.get, tt.getOK)
			}
			if got := m.Value(tt.name); got != tt.value {
				t.Errorf("Value = %q, want %q", got, tt.value)
			}
			if got := m.Has(tt.name); got != tt.getOK {
				t.Errorf("Has = %v, want %v", got, tt.getOK)
			}
			if got := m.Count(tt.name); got != tt.count {
				t.Errorf("Count = %d, want %d", got, tt.count)
			}
			if got := m.Values(nil, tt.name); !reflect.DeepEqual(got, tt.allValues) {
				t.Errorf("Values = %q, want %q", got, tt.allValues)
			}
		})
	}
	// Values appends to dst and keeps what was there.
	got := m.Values([]string{"pre"}, "accept")
	if want := []string{"pre", "a", "b"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Values(dst) = %q, want %q", got, want)
	}
	if m.Len() != 7 || m.At(1) != (Field{"Accept", "a"}) {
		t.Errorf("Len/At wrong: %d %v", m.Len(), m.At(1))
	}
}

func TestNonASCIINamesNotFolded(t *testing.T) {
	m := mk("x-\u00c9", "upper")
	if m.Has("x-\u00e9") {
		t.Error("non-ASCII byte folded: x-É matched x-é")
	}
	if !m.Has("X-\u00c9") {
		t.Error("ASCII part not folded")
	}
	m.Set("x-\u00e9", "lower")
	if m.Len() != 2 || m.Value("x-\u00c9") != "upper" {
		t.Errorf("Set on non-ASCII name replaced a different name: %q", pairs(m))
	}
}

func TestMapAddKeepsOrderAndCase(t *testing.T) {
	var m Map
	m.Add("X-A", "1")
	m.Add("x-b", "2")
	m.Add("x-a", "3")
	want := []string{"X-A", "1", "x-b", "2", "x-a", "3"}
	if got := pairs(&m); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestMapSet(t *testing.T) {
	tests := []struct {
		name   string
		in     []string
		setN   string
		setV   string
		want   []string
		wantLn int
	}{
		{
			name: "absent appends at end",
			in:   []string{"a", "1", "b", "2"},
			setN: "C", setV: "3",
			want: []string{"a", "1", "b", "2", "C", "3"},
		},
		{
			name: "single replaced in place, name case kept",
			in:   []string{"a", "1", "X-Y", "2", "b", "3"},
			setN: "x-y", setV: "new",
			want: []string{"a", "1", "X-Y", "new", "b", "3"},
		},
		{
			name: "all replaced, position of first kept",
			in:   []string{"a", "1", "x", "2", "b", "3", "X", "4", "c", "5", "x", "6"},
			setN: "X", setV: "v",
			want: []string{"a", "1", "x", "v", "b", "3", "c", "5"},
		},
		{
			name: "first field",
			in:   []string{"x", "1", "x", "2", "x", "3"},
			setN: "x", setV: "only",
			want: []string{"x", "only"},
		},
		{
			name: "empty map",
			in:   nil,
			setN: "x", setV: "1",
			want: []string{"x", "1"},
		},
		{
			name: "empty value",
			in:   []string{"x", "1"},
			setN: "x", setV: "",
			want: []string{"x", ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mk(tt.in...)
			m.Set(tt.setN, tt.setV)
			if got := pairs(m); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMapSetClearsTail(t *testing.T) {
	// Removed slots beyond the new length must not keep strings alive.
	m := mk("x", "1", "a", "2", "x", "big")
	m.Set("x", "v")
	full := m.fields[:cap(m.fields)]
	for i := m.Len(); i < 3; i++ {
		if full[i] != (Field{}) {
			t.Errorf("slot %d not cleared: %v", i, full[i])
		}
	}
}

func TestMapSetIfAbsent(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		n, v string
		want []string
	}{
		{"absent", []string{"a", "1"}, "b", "2", []string{"a", "1", "b", "2"}},
		{"present same case", []string{"b", "1"}, "b", "2", []string{"b", "1"}},
		{"present other case", []string{"B", "1"}, "b", "2", []string{"B", "1"}},
		{"present empty value", []string{"b", ""}, "b", "2", []string{"b", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mk(tt.in...)
			m.SetIfAbsent(tt.n, tt.v)
			if got := pairs(m); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMapDel(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		del     string
		removed int
		want    []string
	}{
		{"none", []string{"a", "1"}, "b", 0, []string{"a", "1"}},
		{"one", []string{"a", "1", "b", "2"}, "A", 1, []string{"b", "2"}},
		{"many keep order", []string{"x", "1", "a", "2", "X", "3", "b", "4", "x", "5"}, "x", 3, []string{"a", "2", "b", "4"}},
		{"all", []string{"x", "1", "X", "2"}, "x", 2, []string{}},
		{"empty map", nil, "x", 0, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mk(tt.in...)
			if n := m.Del(tt.del); n != tt.removed {
				t.Errorf("Del = %d, want %d", n, tt.removed)
			}
			if got := pairs(m); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if m.Has(tt.del) {
				t.Errorf("%q still present", tt.del)
			}
		})
	}
}

func TestMapDelFunc(t *testing.T) {
	m := mk("a", "1", "x-drop", "2", "b", "drop", "X-DROP", "3", "c", "4")
	calls := 0
	m.DelFunc(func(f Field) bool {
		calls++
		return EqualFold(f.Name, "x-drop") || f.Value == "drop"
	})
	if calls != 5 {
		t.Errorf("drop called %d times, want 5", calls)
	}
	want := []string{"a", "1", "c", "4"}
	if got := pairs(m); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	full := m.fields[:cap(m.fields)]
	for i := m.Len(); i < 5 && i < len(full); i++ {
		if full[i] != (Field{}) {
			t.Errorf("slot %d not cleared: %v", i, full[i])
		}
	}
	m.DelFunc(func(Field) bool { return false })
	if got := pairs(m); !reflect.DeepEqual(got, want) {
		t.Errorf("no-op DelFunc changed map: %q", got)
	}
}

func TestMapResetKeepsStorage(t *testing.T) {
	m := mk("a", "1", "b", "2", "c", "3")
	c := cap(m.fields)
	m.Reset()
	if m.Len() != 0 || m.Has("a") {
		t.Fatalf("Reset left fields: %q", pairs(m))
	}
	if cap(m.fields) != c {
		t.Errorf("Reset dropped storage: cap %d, want %d", cap(m.fields), c)
	}
	full := m.fields[:c]
	for i := range 3 {
		if full[i] != (Field{}) {
			t.Errorf("slot %d not cleared after Reset: %v", i, full[i])
		}
	}
	m.Add("d", "4")
	if got := pairs(m); !reflect.DeepEqual(got, []string{"d", "4"}) {
		t.Errorf("after Reset+Add: %q", got)
	}
}

func TestMapCopyFromAndClone(t *testing.T) {
	src := mk("a", "1", "B", "2")

	// CopyFrom replaces dst's content, reuses its storage and is independent.
	dst := mk("old", "x", "old2", "y", "old3", "z")
	before := &dst.fields[:1][0]
	dst.CopyFrom(src)
	if got := pairs(dst); !reflect.DeepEqual(got, []string{"a", "1", "B", "2"}) {
		t.Errorf("CopyFrom: %q", got)
	}
	if &dst.fields[0] != before {
		t.Error("CopyFrom did not reuse dst's storage")
	}
	dst.Set("a", "changed")
	if src.Value("a") != "1" {
		t.Error("CopyFrom shares storage with src")
	}

	// Clone is independent in both directions.
	c := src.Clone()
	c.Set("b", "cloned")
	c.Add("new", "v")
	src.Set("a", "srcchanged")
	if got := pairs(&c); !reflect.DeepEqual(got, []string{"a", "1", "B", "cloned", "new", "v"}) {
		t.Errorf("Clone: %q", got)
	}
	if got := pairs(src); !reflect.DeepEqual(got, []string{"a", "srcchanged", "B", "2"}) {
		t.Errorf("src after Clone changes: %q", got)
	}

	var empty Map
	ec := empty.Clone()
	if ec.Len() != 0 {
		t.Error("Clone of empty map not empty")
	}
	dst.CopyFrom(&empty)
	if dst.Len() != 0 {
		t.Error("CopyFrom(empty) left fields")
	}
}

func TestHasToken(t *testing.T) {
	m := mk("Connection", "keep-alive, Upgrade", "TE", "trailers", "connection", "X-Foo", "Other", "upgrade")
	tests := []struct {
		name, token string
		want        bool
	}{
		{"connection", "upgrade", true},
		{"CONNECTION", "KEEP-ALIVE", true},
		{"connection", "x-foo", true}, // second Connection field
		{"connection", "close", false},
		{"te", "trailers", true},
		{"te", "trailer", false},
		{"missing", "upgrade", false},
		{"connection", "keep", false},
	}
	for _, tt := range tests {
		if got := m.HasToken(tt.name, tt.token); got != tt.want {
			t.Errorf("HasToken(%q, %q) = %v, want %v", tt.name, tt.token, got, tt.want)
		}
	}
}

func TestListHasToken(t *testing.T) {
	tests := []struct {
		list, token string
		want        bool
	}{
		{"", "a", false},
		{"a", "a", true},
		{"A", "a", true},
		{"a,b,c", "b", true},
		{"a , b ,c", "b", true},
		{" \tb\t ", "b", true},
		{"a,,b", "b", true},
		{",,,", "a", false},
		{"a,b", "", false},
		{"a,,b", "", true}, // an empty element equals an empty token
		{"ab,c", "a", false},
		{"a b", "a", false}, // inner space is part of the element
		{"gzip, chunked", "chunked", true},
		{"gzip, chunked", "gzip, chunked", false},
		{"trailers", "TRAILERS", true},
		{"x\u00e9", "X\u00c9", false},
	}
	for _, tt := range tests {
		if got := ListHasToken(tt.list, tt.token); got != tt.want {
			t.Errorf("ListHasToken(%q, %q) = %v, want %v", tt.list, tt.token, got, tt.want)
		}
	}
}

func TestTrimOWS(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"a", "a"},
		{" a", "a"},
		{"a ", "a"},
		{"\t a b \t", "a b"},
		{" \t \t", ""},
		{"\na\n", "\na\n"}, // only SP and HTAB are OWS
		{"\va", "\va"},
		{"\u00a0a", "\u00a0a"}, // no Unicode spaces
	}
	for _, tt := range tests {
		if got := TrimOWS(tt.in); got != tt.want {
			t.Errorf("TrimOWS(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func tenFields() *Map {
	var m Map
	for i := range 10 {
		m.Add("X-Header-"+strconv.Itoa(i), "value-"+strconv.Itoa(i))
	}
	return &m
}

func TestGetSetNoAlloc(t *testing.T) {
	m := tenFields()
	if n := testing.AllocsPerRun(100, func() { _ = m.Value("x-header-9") }); n != 0 {
		t.Errorf("Get allocates %v per call", n)
	}
	if n := testing.AllocsPerRun(100, func() { m.Set("x-header-5", "v") }); n != 0 {
		t.Errorf("Set allocates %v per call", n)
	}
}

func BenchmarkGet(b *testing.B) {
	m := tenFields()
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := m.Get("x-header-9"); !ok {
			b.Fatal("missing")
		}
	}
}

func BenchmarkSet(b *testing.B) {
	m := tenFields()
	b.ReportAllocs()
	for b.Loop() {
		m.Set("x-header-5", "new-value")
	}
}
