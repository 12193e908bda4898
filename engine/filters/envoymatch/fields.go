package envoymatch

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// ErrUnsupported is wrapped by every error about a field or value this
// filter does not implement.
var ErrUnsupported = errors.New("not supported")

// FieldSet lists the fields of one message type the compiler handles. A
// field that is set but not listed fails the config, naming the field, so
// nothing is dropped silently.
type FieldSet struct {
	fields protoreflect.FieldDescriptors
	known  map[protoreflect.FieldNumber]bool
}

// KnownFields builds the FieldSet of m's type; it panics on a name that is
// not a field (a programming error any test catches).
func KnownFields(m proto.Message, names ...string) *FieldSet {
	desc := m.ProtoReflect().Descriptor()
	s := &FieldSet{fields: desc.Fields(), known: make(map[protoreflect.FieldNumber]bool, len(names))}
	for _, n := range names {
		fd := s.fields.ByName(protoreflect.Name(n))
		if fd == nil {
			panic(fmt.Sprintf("envoymatch: %s has no field %q", desc.FullName(), n))
		}
		s.known[fd.Number()] = true
	}
	return s
}

// check returns an error naming the first set field that is not known.
func (s *FieldSet) Check(m proto.Message) error {
	r := m.ProtoReflect()
	for i := 0; i < s.fields.Len(); i++ {
		fd := s.fields.Get(i)
		if !s.known[fd.Number()] && r.Has(fd) {
			return At(string(fd.Name()), fmt.Errorf("field %w", ErrUnsupported))
		}
	}
	return nil
}

// PathError is a config error at a field path ("rules.policies[p].permissions[0]").
type PathError struct {
	path string
	err  error
}

func (e *PathError) Error() string { return e.path + ": " + e.err.Error() }
func (e *PathError) Unwrap() error { return e.err }

// At prefixes err's field path with field (nil stays nil).
func At(field string, err error) error {
	if err == nil {
		return nil
	}
	var pe *PathError
	if errors.As(err, &pe) && pe == err {
		sep := "."
		if len(pe.path) > 0 && pe.path[0] == '[' {
			sep = ""
		}
		return &PathError{path: field + sep + pe.path, err: pe.err}
	}
	return &PathError{path: field, err: err}
}

// AtIndex is At for the i-th element of a repeated field.
func AtIndex(field string, i int, err error) error {
	return At(fmt.Sprintf("%s[%d]", field, i), err)
}
