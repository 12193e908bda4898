package upstream

import "errors"

// Errors returned by Host.Acquire. The proxy maps all of them to a 503.
var (
	// ErrConnectFailure matches every failure to open an upstream
	// connection (refused, reset, unreachable, timed out, bad address).
	ErrConnectFailure = errors.New("upstream: connect failure")
	// ErrConnectTimeout matches a connect that hit the cluster's
	// connect_timeout; such an error matches ErrConnectFailure too.
	ErrConnectTimeout = errors.New("upstream: connect timeout")
	// ErrPendingOverflow means the cluster is at max_connections and
	// max_pending_requests requests are already waiting for a connection.
	ErrPendingOverflow = errors.New("upstream: pending request overflow")
	// ErrConnectionOverflow means the cluster is at max_connections. Acquire
	// returns it only together with ErrPendingOverflow (the request could
	// neither open a connection nor wait for one).
	ErrConnectionOverflow = errors.New("upstream: connection overflow")
	// ErrPoolTimeout means the request gave up (its context was cancelled or
	// hit its deadline) while waiting for a connection; the error also wraps
	// the context's error.
	ErrPoolTimeout = errors.New("upstream: gave up waiting for a connection")
)

// ConnectError is the error of a failed dial. It matches ErrConnectFailure,
// and ErrConnectTimeout when Timeout is set, with errors.Is.
type ConnectError struct {
	Addr    string
	Timeout bool
	Err     error
}

func (e *ConnectError) Error() string {
	what := "connect failure"
	if e.Timeout {
		what = "connect timeout"
	}
	return "upstream: " + what + " to " + e.Addr + ": " + e.Err.Error()
}

// Unwrap returns the dial error.
func (e *ConnectError) Unwrap() error { return e.Err }

// Is reports whether target is ErrConnectFailure, or ErrConnectTimeout for
// a timeout.
func (e *ConnectError) Is(target error) bool {
	return target == ErrConnectFailure || (e.Timeout && target == ErrConnectTimeout)
}

// poolWaitError is ErrPoolTimeout with the context's reason.
type poolWaitError struct{ cause error }

func (e *poolWaitError) Error() string   { return ErrPoolTimeout.Error() + ": " + e.cause.Error() }
func (e *poolWaitError) Unwrap() []error { return []error{ErrPoolTimeout, e.cause} }

// overflowError is Acquire's overflow: no connection could be opened and no
// more requests may wait. A value, so returning it does not allocate.
type overflowError struct{}

var errOverflow error = overflowError{}

func (overflowError) Error() string {
	return "upstream: overflow: max_connections and max_pending_requests reached"
}

func (overflowError) Is(target error) bool {
	return target == ErrPendingOverflow || target == ErrConnectionOverflow
}
