package config

import "errors"

// Kinds of resource a ResourceError names.
const (
	KindListener    = "listener"
	KindCluster     = "cluster"
	KindRouteConfig = "route_config"
)

// ResourceError marks an error as caused by one resource of a snapshot, so
// a front-end that assembled the snapshot from separately delivered
// resources (xDS) can set that one aside and apply the rest, as Envoy
// applies the good resources of a partly bad update. The message is the
// wrapped error's, unchanged.
type ResourceError struct {
	Kind string // KindListener, KindCluster or KindRouteConfig
	Name string
	Err  error
}

func (e *ResourceError) Error() string { return e.Err.Error() }
func (e *ResourceError) Unwrap() error { return e.Err }

// Blame marks err (nil stays nil) as caused by the resource kind/name,
// unless it already names a cause: the innermost cause is the precise one.
func Blame(err error, kind, name string) error {
	if err == nil {
		return nil
	}
	var re *ResourceError
	if errors.As(err, &re) {
		return err
	}
	return &ResourceError{Kind: kind, Name: name, Err: err}
}
