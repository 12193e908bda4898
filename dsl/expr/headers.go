package expr

import (
	"reflect"
	"strings"

	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"

	"github.com/sluice-proxy/sluice/engine/header"
)

// headerMap presents a live *header.Map as a CEL map(string, string), the
// way Envoy does: keys are lower-case, lookups ignore case, and the values of
// a repeated header are joined with ",". It is a single pointer, so putting
// it in a ref.Val does not allocate. A nil map is empty.
type headerMap struct{ m *header.Map }

var (
	_ traits.Mapper = headerMap{}
	_ traits.Sizer  = headerMap{}
)

func (h headerMap) fields() []header.Field {
	if h.m == nil {
		return nil
	}
	return h.m.Fields()
}

// lookup returns the value of name, joining repeated fields with ",".
func (h headerMap) lookup(name string) (string, bool) {
	fs := h.fields()
	for i := range fs {
		if !header.EqualFold(fs[i].Name, name) {
			continue
		}
		v := fs[i].Value
		for j := i + 1; j < len(fs); j++ {
			if header.EqualFold(fs[j].Name, name) {
				return join(fs[i:], name), true
			}
		}
		return v, true
	}
	return "", false
}

func join(fs []header.Field, name string) string {
	var b strings.Builder
	for i := range fs {
		if header.EqualFold(fs[i].Name, name) {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(fs[i].Value)
		}
	}
	return b.String()
}

// Find implements traits.Mapper.
func (h headerMap) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return nil, false
	}
	v, found := h.lookup(string(k))
	if !found {
		return nil, false
	}
	return types.String(v), true
}

// Contains implements traits.Container (`"x" in request.headers`).
func (h headerMap) Contains(key ref.Val) ref.Val {
	k, ok := key.(types.String)
	if !ok {
		return types.False
	}
	_, found := h.lookup(string(k))
	return types.Bool(found)
}

// Get implements traits.Indexer.
func (h headerMap) Get(key ref.Val) ref.Val {
	if v, found := h.Find(key); found {
		return v
	}
	return types.ValOrErr(key, "no such key: %v", key)
}

// firstOccurrence reports whether fs[i] is the first field with its name.
func firstOccurrence(fs []header.Field, i int) bool {
	for j := 0; j < i; j++ {
		if header.EqualFold(fs[j].Name, fs[i].Name) {
			return false
		}
	}
	return true
}

// Size implements traits.Sizer: the number of distinct header names.
func (h headerMap) Size() ref.Val {
	fs := h.fields()
	n := 0
	for i := range fs {
		if firstOccurrence(fs, i) {
			n++
		}
	}
	return types.Int(n)
}

// Iterator implements traits.Iterable: distinct names, lower-case, in wire
// order of their first occurrence.
func (h headerMap) Iterator() traits.Iterator {
	return &headerIter{fs: h.fields()}
}

func (h headerMap) toMap() map[string]string {
	fs := h.fields()
	m := make(map[string]string, len(fs))
	for i := range fs {
		if firstOccurrence(fs, i) {
			v, _ := h.lookup(fs[i].Name)
			m[lower(fs[i].Name)] = v
		}
	}
	return m
}

func (h headerMap) plain() ref.Val {
	return types.NewStringStringMap(types.DefaultTypeAdapter, h.toMap())
}

// ConvertToNative implements ref.Val (map[string]string and what CEL's own
// maps convert to).
func (h headerMap) ConvertToNative(t reflect.Type) (any, error) {
	return h.plain().ConvertToNative(t)
}

// ConvertToType implements ref.Val.
func (h headerMap) ConvertToType(t ref.Type) ref.Val {
	switch t {
	case types.MapType:
		return h
	case types.TypeType:
		return types.MapType
	}
	return types.NewErr("type conversion error from '%s' to '%s'", types.MapType, t)
}

// Equal implements ref.Val with CEL map equality.
func (h headerMap) Equal(other ref.Val) ref.Val { return h.plain().Equal(other) }

// Type implements ref.Val.
func (h headerMap) Type() ref.Type { return types.MapType }

// Value implements ref.Val: a map[string]string copy.
func (h headerMap) Value() any { return h.toMap() }

type headerIter struct {
	fs []header.Field
	i  int
}

func (it *headerIter) HasNext() ref.Val {
	for it.i < len(it.fs) && !firstOccurrence(it.fs, it.i) {
		it.i++
	}
	return types.Bool(it.i < len(it.fs))
}

func (it *headerIter) Next() ref.Val {
	if it.HasNext() != types.True {
		return nil
	}
	n := it.fs[it.i].Name
	it.i++
	return types.String(lower(n))
}

func (it *headerIter) ConvertToNative(reflect.Type) (any, error) {
	return nil, types.NewErr("iterator has no native type").(*types.Err)
}
func (it *headerIter) ConvertToType(ref.Type) ref.Val {
	return types.NewErr("iterator cannot be converted")
}
func (it *headerIter) Equal(other ref.Val) ref.Val { return types.MaybeNoSuchOverloadErr(other) }
func (it *headerIter) Type() ref.Type              { return types.IteratorType }
func (it *headerIter) Value() any                  { return nil }

// lower lower-cases an ASCII header name, allocating only when it has an
// upper-case letter.
func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
