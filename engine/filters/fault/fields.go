package fault

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// errUnsupported is wrapped by every error about a field or value this
// filter does not implement.
var errUnsupported = errors.New("not supported")

// fieldSet lists the fields of one message type the compiler handles. A
// field that is set but not listed fails the config, naming the field, so
// nothing is dropped silently.
type fieldSet struct {
	fields protoreflect.FieldDescriptors
	known  map[protoreflect.FieldNumber]bool
}

// knownFields builds the fieldSet of m's type; it panics on a name that is
// not a field (a programming error any test catches).
func knownFields(m proto.Message, names ...string) *fieldSet {
	desc := m.ProtoReflect().Descriptor()
	s := &fieldSet{fields: desc.Fields(), known: make(map[protoreflect.FieldNumber]bool, len(names))}
	for _, n := range names {
		fd := s.fields.ByName(protoreflect.Name(n))
		if fd == nil {
			panic(fmt.Sprintf("fault: %s has no field %q", desc.FullName(), n))
		}
		s.known[fd.Number()] = true
	}
	return s
}

// check returns an error naming the first set field that is not known.
func (s *fieldSet) check(m proto.Message) error {
	r := m.ProtoReflect()
	for i := 0; i < s.fields.Len(); i++ {
		fd := s.fields.Get(i)
		if !s.known[fd.Number()] && r.Has(fd) {
			return at(string(fd.Name()), fmt.Errorf("field %w", errUnsupported))
		}
	}
	return nil
}

// pathError is a config error at a field path ("rules.policies[p].permissions[0]").
type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

// at prefixes err's field path with field.
func at(field string, err error) error {
	if err == nil {
		return nil
	}
	var pe *pathError
	if errors.As(err, &pe) && pe == err {
		sep := "."
		if len(pe.path) > 0 && pe.path[0] == '[' {
			sep = ""
		}
		return &pathError{path: field + sep + pe.path, err: pe.err}
	}
	return &pathError{path: field, err: err}
}

// atIndex is at for the i-th element of a repeated field.
func atIndex(field string, i int, err error) error {
	return at(fmt.Sprintf("%s[%d]", field, i), err)
}
