// Package lua runs Envoy's Lua HTTP filter (envoy.filters.http.lua) on
// github.com/yuin/gopher-lua, so scripts written for Envoy's stream handle
// API run unchanged. Scripts are parsed and compiled once at config time to
// a function prototype; each stream borrows a pooled, sandboxed Lua state
// that already holds the loaded script, runs envoy_on_request and
// envoy_on_response as coroutines that suspend on body(), bodyChunks() and
// trailers(), and bounds every callback with a time budget. A script error
// or an overrun fails only its own request (500) and discards the state.
package lua

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-proxy/sluice/engine/stream"
)

// Type URLs of the filter config and its per-route override.
const (
	TypeURL         = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
	TypeURLPerRoute = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
)

// FilterName is Envoy's canonical name of the filter; route metadata for
// handle:metadata() is read under it.
const FilterName = "envoy.filters.http.lua"

// DefaultTimeBudget is the script time one callback may use when
// Compiler.TimeBudget is zero.
const DefaultTimeBudget = 100 * time.Millisecond

// Compiler compiles *luav3.Lua and *luav3.LuaPerRoute.
type Compiler struct {
	// Log receives config-time messages; streams log through their
	// Callbacks' logger. Nil means slog.Default().
	Log *slog.Logger
	// TimeBudget bounds the script time of one callback (time spent
	// waiting in a synchronous httpCall does not count). Zero means
	// DefaultTimeBudget.
	TimeBudget time.Duration
}

func (c Compiler) budget() time.Duration {
	if c.TimeBudget > 0 {
		return c.TimeBudget
	}
	return DefaultTimeBudget * raceScale
}

func (c Compiler) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.Default()
}

// Compile implements stream.Compiler.
func (c Compiler) Compile(cfg any) (stream.Factory, error) {
	pb, ok := cfg.(*luav3.Lua)
	if !ok || pb == nil {
		return nil, fmt.Errorf("lua: config is %T, want *luav3.Lua", cfg)
	}
	if len(pb.GetPackagePaths()) > 0 || len(pb.GetPackageCpaths()) > 0 {
		return nil, fmt.Errorf("lua: package_paths and package_cpaths are not supported: require of files is disabled by the sandbox")
	}
	f := &factory{
		named:           map[string]*script{},
		clearRouteCache: pb.GetClearRouteCache() == nil || pb.GetClearRouteCache().GetValue(),
		filterContext:   pb.GetFilterContext(),
	}
	//nolint:staticcheck // inline_code is deprecated but still accepted, as Envoy does.
	inline := pb.GetInlineCode()
	switch {
	case inline != "" && pb.GetDefaultSourceCode() != nil:
		return nil, fmt.Errorf("lua: only one of inline_code and default_source_code may be set")
	case inline != "":
		s, err := c.compileScript("inline_code", inline)
		if err != nil {
			return nil, err
		}
		f.def = s
	case pb.GetDefaultSourceCode() != nil:
		name, src, err := readDataSource(pb.GetDefaultSourceCode(), "default_source_code")
		if err != nil {
			return nil, err
		}
		s, err := c.compileScript(name, src)
		if err != nil {
			return nil, err
		}
		f.def = s
	}
	for name, ds := range pb.GetSourceCodes() {
		_, src, err := readDataSource(ds, name)
		if err != nil {
			return nil, err
		}
		s, err := c.compileScript(name, src)
		if err != nil {
			return nil, err
		}
		f.named[name] = s
	}
	return f, nil
}

// perRoute is a compiled LuaPerRoute.
type perRoute struct {
	disabled      bool
	name          string  // a script of the filter's source_codes
	script        *script // inline source_code
	filterContext *structpb.Struct
}

// CompilePerRoute implements stream.Compiler.
func (c Compiler) CompilePerRoute(cfg any) (any, error) {
	pb, ok := cfg.(*luav3.LuaPerRoute)
	if !ok || pb == nil {
		return nil, fmt.Errorf("lua: per-route config is %T, want *luav3.LuaPerRoute", cfg)
	}
	if len(pb.GetPackagePaths()) > 0 || len(pb.GetPackageCpaths()) > 0 {
		return nil, fmt.Errorf("lua: package_paths and package_cpaths are not supported: require of files is disabled by the sandbox")
	}
	pr := &perRoute{filterContext: pb.GetFilterContext()}
	switch o := pb.GetOverride().(type) {
	case *luav3.LuaPerRoute_Disabled:
		pr.disabled = o.Disabled
	case *luav3.LuaPerRoute_Name:
		if o.Name == "" {
			return nil, fmt.Errorf("lua: per-route name is empty")
		}
		pr.name = o.Name
	case *luav3.LuaPerRoute_SourceCode:
		name, src, err := readDataSource(o.SourceCode, "per_route_source_code")
		if err != nil {
			return nil, err
		}
		s, err := c.compileScript(name, src)
		if err != nil {
			return nil, err
		}
		pr.script = s
	}
	return pr, nil
}

// readDataSource returns a script's name for messages and its source;
// files are read here, at config time.
func readDataSource(ds *corev3.DataSource, name string) (string, string, error) {
	switch sp := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineString:
		return name, sp.InlineString, nil
	case *corev3.DataSource_InlineBytes:
		return name, string(sp.InlineBytes), nil
	case *corev3.DataSource_Filename:
		b, err := os.ReadFile(sp.Filename)
		if err != nil {
			return "", "", fmt.Errorf("lua: script %q: %w", name, err)
		}
		return sp.Filename, string(b), nil
	case *corev3.DataSource_EnvironmentVariable:
		v, ok := os.LookupEnv(sp.EnvironmentVariable)
		if !ok {
			return "", "", fmt.Errorf("lua: script %q: environment variable %q is not set", name, sp.EnvironmentVariable)
		}
		return name, v, nil
	}
	return "", "", fmt.Errorf("lua: script %q: data source has no inline_string, inline_bytes, filename or environment_variable", name)
}
