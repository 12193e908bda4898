package xds

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// fieldSet lists the fields of one message type that the translator knows:
// it applies them, or it ignores them on purpose because they only tune
// observability or performance. Any other field that is set makes the
// translation fail with ErrUnsupported, so nothing is dropped silently.
type fieldSet struct {
	fields protoreflect.FieldDescriptors
	known  map[protoreflect.FieldNumber]bool
}

// knownFields builds the fieldSet of m's message type. It panics on a name
// that is not a field of the message: that is a programming error caught by
// any test, like regexp.MustCompile.
func knownFields(m proto.Message, names ...string) *fieldSet {
	desc := m.ProtoReflect().Descriptor()
	s := &fieldSet{fields: desc.Fields(), known: make(map[protoreflect.FieldNumber]bool, len(names))}
	for _, n := range names {
		fd := s.fields.ByName(protoreflect.Name(n))
		if fd == nil {
			panic(fmt.Sprintf("xds: %s has no field %q", desc.FullName(), n))
		}
		s.known[fd.Number()] = true
	}
	return s
}

// check returns an error naming the first field, in declaration order, that
// is set in m but not known.
func (s *fieldSet) check(m proto.Message) error {
	r := m.ProtoReflect()
	for i := 0; i < s.fields.Len(); i++ {
		fd := s.fields.Get(i)
		if !s.known[fd.Number()] && r.Has(fd) {
			return unsupported(string(fd.Name()))
		}
	}
	return nil
}
