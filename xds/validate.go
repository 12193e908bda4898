package xds

import (
	"errors"
	"strconv"
	"strings"
	"unicode"
)

// maxViolations bounds how many protoc-gen-validate violations one error
// lists.
const maxViolations = 5

// Interfaces of the code protoc-gen-validate generates for go-control-plane.
type (
	validatorAll interface{ ValidateAll() error }
	validator    interface{ Validate() error }
	multiError   interface{ AllErrors() []error }
	fieldError   interface {
		Field() string
		Reason() string
		Cause() error
	}
)

// validateMsg runs the protoc-gen-validate rules of m (and of the messages
// it embeds, but not of those packed in Anys: unpack validates them) and
// returns the violations with snake_case field paths.
func validateMsg(m any) error {
	var err error
	switch v := m.(type) {
	case validatorAll:
		err = v.ValidateAll()
	case validator:
		err = v.Validate()
	}
	if err == nil {
		return nil
	}
	var leaves []error
	flattenViolation(err, nil, &leaves)
	if len(leaves) == 1 {
		return leaves[0]
	}
	return &violations{errs: leaves}
}

// flattenViolation walks the nested errors protoc-gen-validate produces
// (field errors whose cause is the embedded message's error) down to leaf
// violations, each a pathError.
func flattenViolation(err error, path []string, out *[]error) {
	var me multiError
	if errors.As(err, &me) {
		for _, e := range me.AllErrors() {
			flattenViolation(e, path, out)
		}
		return
	}
	var fe fieldError
	if !errors.As(err, &fe) {
		*out = append(*out, pathFromFields(path, err))
		return
	}
	p := append(path[:len(path):len(path)], snakeField(fe.Field()))
	if c := fe.Cause(); c != nil {
		var cfe fieldError
		var cme multiError
		if errors.As(c, &cfe) || errors.As(c, &cme) {
			flattenViolation(c, p, out)
			return
		}
		*out = append(*out, pathFromFields(p, errors.New(fe.Reason()+": "+c.Error())))
		return
	}
	*out = append(*out, pathFromFields(p, errors.New(fe.Reason())))
}

func pathFromFields(path []string, err error) error {
	for i := len(path) - 1; i >= 0; i-- {
		err = inField(err, path[i])
	}
	return err
}

// snakeField turns a generated Go field name such as "Http2ProtocolOptions"
// or "Listeners[3]" into the proto name "http2_protocol_options" or
// "listeners[3]". A bracketed map key or index is kept as is.
func snakeField(name string) string {
	suffix := ""
	if i := strings.IndexByte(name, '['); i >= 0 {
		name, suffix = name[:i], name[i:]
	}
	rs := []rune(name)
	var b strings.Builder
	for i, r := range rs {
		if unicode.IsUpper(r) {
			if i > 0 && rs[i-1] != '_' {
				prev := rs[i-1]
				nextLower := i+1 < len(rs) && unicode.IsLower(rs[i+1])
				if unicode.IsLower(prev) || unicode.IsDigit(prev) || (unicode.IsUpper(prev) && nextLower) {
					b.WriteByte('_')
				}
			}
			b.WriteRune(unicode.ToLower(r))
			continue
		}
		b.WriteRune(r)
	}
	return b.String() + suffix
}

// violations is several protoc-gen-validate violations.
type violations struct{ errs []error }

func (v *violations) Error() string {
	var b strings.Builder
	n := min(len(v.errs), maxViolations)
	for i := range n {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(v.errs[i].Error())
	}
	if len(v.errs) > n {
		b.WriteString("; and ")
		b.WriteString(strconv.Itoa(len(v.errs) - n))
		b.WriteString(" more")
	}
	return b.String()
}

func (v *violations) Unwrap() []error { return v.errs }
