// Package header holds the header map shared by every protocol and filter
// language: fields keep wire order and case, lookups ignore ASCII case.
package header

// Field is one header line as received or to be sent.
type Field struct {
	Name  string
	Value string
}

// Map is an ordered multi-map of header fields. The zero value is empty and
// ready to use. It is a slice, not a Go map, because requests carry few
// headers: a linear scan with ASCII folding beats hashing and keeps order.
type Map struct {
	fields []Field
}

// EqualFold reports whether a and b are equal under ASCII case folding.
// Header names are ASCII tokens, so Unicode folding (strings.EqualFold) is
// both slower and wrong here.
func EqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		if 'A' <= ca && ca <= 'Z' {
			ca += 'a' - 'A'
		}
		if 'A' <= cb && cb <= 'Z' {
			cb += 'a' - 'A'
		}
		if ca != cb {
			return false
		}
	}
	return true
}

// Len returns the number of fields.
func (m *Map) Len() int { return len(m.fields) }

// At returns the i-th field in wire order.
func (m *Map) At(i int) Field { return m.fields[i] }

// Fields returns the fields in wire order. The slice is owned by the map.
func (m *Map) Fields() []Field { return m.fields }

// Get returns the first value of name and whether it was present.
func (m *Map) Get(name string) (string, bool) {
	for i := range m.fields {
		if EqualFold(m.fields[i].Name, name) {
			return m.fields[i].Value, true
		}
	}
	return "", false
}

// Value returns the first value of name, or "".
func (m *Map) Value(name string) string {
	v, _ := m.Get(name)
	return v
}

// Has reports whether name is present.
func (m *Map) Has(name string) bool {
	_, ok := m.Get(name)
	return ok
}

// Count returns how many fields carry name.
func (m *Map) Count(name string) int {
	n := 0
	for i := range m.fields {
		if EqualFold(m.fields[i].Name, name) {
			n++
		}
	}
	return n
}

// Values appends every value of name to dst and returns it.
func (m *Map) Values(dst []string, name string) []string {
	for i := range m.fields {
		if EqualFold(m.fields[i].Name, name) {
			dst = append(dst, m.fields[i].Value)
		}
	}
	return dst
}

// Add appends a field, keeping any existing ones.
func (m *Map) Add(name, value string) {
	m.fields = append(m.fields, Field{Name: name, Value: value})
}

// Set replaces every field named name with one field holding value, at the
// position of the first one (or at the end when absent).
func (m *Map) Set(name, value string) {
	for i := range m.fields {
		if EqualFold(m.fields[i].Name, name) {
			m.fields[i].Value = value
			m.removeFrom(i+1, name)
			return
		}
	}
	m.Add(name, value)
}

// SetIfAbsent adds the field only when name is not present.
func (m *Map) SetIfAbsent(name, value string) {
	if !m.Has(name) {
		m.Add(name, value)
	}
}

// Del removes every field named name and reports how many were removed.
func (m *Map) Del(name string) int {
	return m.removeFrom(0, name)
}

func (m *Map) removeFrom(start int, name string) int {
	j := start
	for i := start; i < len(m.fields); i++ {
		if EqualFold(m.fields[i].Name, name) {
			continue
		}
		m.fields[j] = m.fields[i]
		j++
	}
	removed := len(m.fields) - j
	for k := j; k < len(m.fields); k++ {
		m.fields[k] = Field{}
	}
	m.fields = m.fields[:j]
	return removed
}

// DelFunc removes every field for which drop returns true.
func (m *Map) DelFunc(drop func(Field) bool) {
	j := 0
	for i := range m.fields {
		if drop(m.fields[i]) {
			continue
		}
		m.fields[j] = m.fields[i]
		j++
	}
	for k := j; k < len(m.fields); k++ {
		m.fields[k] = Field{}
	}
	m.fields = m.fields[:j]
}

// Reset empties the map, keeping its storage for reuse.
func (m *Map) Reset() {
	clear(m.fields)
	m.fields = m.fields[:0]
}

// CopyFrom makes m a copy of src, reusing m's storage.
func (m *Map) CopyFrom(src *Map) {
	m.fields = append(m.fields[:0], src.fields...)
}

// Clone returns an independent copy.
func (m *Map) Clone() Map {
	return Map{fields: append([]Field(nil), m.fields...)}
}

// HasToken reports whether a comma-separated header (Connection,
// Transfer-Encoding, ...) lists token, ignoring case and spaces.
func (m *Map) HasToken(name, token string) bool {
	for i := range m.fields {
		if !EqualFold(m.fields[i].Name, name) {
			continue
		}
		if ListHasToken(m.fields[i].Value, token) {
			return true
		}
	}
	return false
}

// ListHasToken reports whether the comma-separated list v holds token.
func ListHasToken(v, token string) bool {
	for len(v) > 0 {
		var item string
		if i := indexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			item, v = v, ""
		}
		if EqualFold(TrimOWS(item), token) {
			return true
		}
	}
	return false
}

// TrimOWS trims HTTP optional white space (SP and HTAB) from both ends.
func TrimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}
