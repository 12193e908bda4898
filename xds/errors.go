package xds

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sluice-proxy/sluice/engine/config"
)

// ErrUnsupported is wrapped by every error about Envoy configuration that is
// valid but that Sluice does not implement yet.
var ErrUnsupported = errors.New("not supported yet")

// segKind says how a path segment joins the one before it.
type segKind uint8

const (
	// segField is a proto field path element ("filter_chains[0]"); it joins a
	// preceding field with ".".
	segField segKind = iota
	// segFieldEnd is a field element followed by an annotation
	// ("filters[0] (envoy.filters.network.http_connection_manager)"); it
	// joins a preceding field with "." but what follows it joins with ": ".
	segFieldEnd
	// segNamed is a named object ("listener \"public\""); it joins with ": ".
	segNamed
	// segIndex is an element index ("[3]") of the field before it.
	segIndex
)

type segment struct {
	text string
	kind segKind
}

// pathError is an error with the location, from the outside in, where it
// happened.
type pathError struct {
	path []segment
	err  error
	// cause is the dynamic resource the error is in, when known (see
	// blame); it follows the error as locations are prepended.
	cause *resourceRef
}

// resourceRef names one resource of the xDS store.
type resourceRef struct {
	typ  rtype
	name string
}

func (e *pathError) Error() string {
	if len(e.path) == 0 {
		return e.err.Error()
	}
	var b strings.Builder
	for i, s := range e.path {
		if i > 0 {
			prev := e.path[i-1].kind
			switch {
			case (prev != segField && prev != segIndex) || s.kind == segNamed:
				b.WriteString(": ")
			case s.kind != segIndex:
				b.WriteByte('.')
			}
		}
		b.WriteString(s.text)
	}
	b.WriteString(": ")
	b.WriteString(e.err.Error())
	return b.String()
}

func (e *pathError) Unwrap() error { return e.err }

// at prepends a location to err. A nil err stays nil.
func at(err error, kind segKind, text string) error {
	if err == nil {
		return nil
	}
	s := segment{text: text, kind: kind}
	if pe, ok := err.(*pathError); ok {
		path := make([]segment, 0, len(pe.path)+1)
		path = append(path, s)
		path = append(path, pe.path...)
		return &pathError{path: path, err: pe.err, cause: pe.cause}
	}
	return &pathError{path: []segment{s}, err: err}
}

// blame records that err (nil stays nil) is in the dynamic resource
// name of type t, unless it already names one: the innermost is the
// precise cause (an ECDS config inside a listener). The client sets that
// resource aside and applies the rest of the update (see Client.handle).
func blame(err error, t rtype, name string) error {
	if err == nil {
		return nil
	}
	if _, ok := culprit(err); ok {
		return err
	}
	ref := &resourceRef{typ: t, name: name}
	if pe, ok := err.(*pathError); ok {
		return &pathError{path: pe.path, err: pe.err, cause: ref}
	}
	return &pathError{err: err, cause: ref}
}

// culprit returns the resource err was blamed on, by the translator
// (blame) or by the engine (config.ResourceError).
func culprit(err error) (resourceRef, bool) {
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch e := e.(type) {
		case *pathError:
			if e.cause != nil {
				return *e.cause, true
			}
		case *config.ResourceError:
			switch e.Kind {
			case config.KindListener:
				return resourceRef{tListener, e.Name}, true
			case config.KindCluster:
				return resourceRef{tCluster, e.Name}, true
			case config.KindRouteConfig:
				return resourceRef{tRoute, e.Name}, true
			}
		}
	}
	return resourceRef{}, false
}

// inField locates err in a proto field ("address", "filter_chains[2]").
func inField(err error, name string) error { return at(err, segField, name) }

// inIndex locates err in element i of a repeated field; with name "" the
// field is the enclosing location.
func inIndex(err error, name string, i int) error {
	if name == "" {
		return at(err, segIndex, fmt.Sprintf("[%d]", i))
	}
	return at(err, segField, fmt.Sprintf("%s[%d]", name, i))
}

// inNamed locates err in a named object: kind "listener", name "public" gives
// `listener "public"`.
func inNamed(err error, kind, name string) error {
	return at(err, segNamed, fmt.Sprintf("%s %q", kind, name))
}

// inElem locates err in element i of a repeated field whose elements carry a
// name: `route "r1"` when the name is set, else `routes[3]`.
func inElem(err error, field string, i int, kind, name string) error {
	if name != "" {
		return inNamed(err, kind, name)
	}
	return inIndex(err, field, i)
}

// unsupported is the error for a field Sluice does not implement.
func unsupported(field string) error { return inField(ErrUnsupported, field) }

// unsupportedValue is the error for a field value Sluice does not implement.
func unsupportedValue(field string, value any) error {
	return inField(fmt.Errorf("%v: %w", value, ErrUnsupported), field)
}

// prefixed adds the package prefix to an error leaving the package.
func prefixed(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("xds: %w", err)
}
