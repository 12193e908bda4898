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
