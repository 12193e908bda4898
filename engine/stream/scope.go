package stream

// CompileScope tells a filter compiler where the filter sits: what Envoy
// hands a filter factory beside its config (the stats prefix of the owning
// HTTP connection manager, the filter's name in the chain).
type CompileScope struct {
	// StatPrefix is the connection manager's stat prefix ("ingress_http"
	// when its config names none); a filter's stats go under
	// "http.<StatPrefix>.", as Envoy's do.
	StatPrefix string
	// FilterName is the filter's name in the chain (http_filters[].name).
	FilterName string
}

// ScopedCompiler is a Compiler that wants its CompileScope. The connection
// manager calls CompileScoped instead of Compile for the filters of its
// chain; Compile stays for callers without a chain (tools, tests).
type ScopedCompiler interface {
	Compiler
	CompileScoped(cfg any, scope CompileScope) (Factory, error)
}
