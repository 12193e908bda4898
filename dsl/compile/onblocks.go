package compile

import (
	"errors"
	"fmt"

	"github.com/sluice-proxy/sluice/dsl/expr"
	"github.com/sluice-proxy/sluice/dsl/rules"
	"github.com/sluice-proxy/sluice/dsl/syntax"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// onBlocksPrefix makes a fragment of `on` blocks a listener, on the
// fragment's first line so that line numbers stay the fragment's own.
const onBlocksPrefix = "listener xds 127.0.0.1:1 {"

// OnBlocks compiles rule-language source made only of `on request` and
// `on response` blocks — what an xDS control plane sends as a Sluice rules
// filter (Envoy's routes come by RDS, so routes, upstreams and imports are
// refused) — into the rules filter's config. name labels errors
// ("name:line:col: ...").
func OnBlocks(name string, src []byte, env *expr.Env) (*rules.Config, error) {
	wrapped := append(append([]byte(onBlocksPrefix), src...), "\n}\n"...)
	prog, err := syntax.ParseFiles(name, func(p string) ([]byte, error) {
		if p == name {
			return wrapped, nil
		}
		return nil, errors.New("imports are not allowed in a rules filter from xDS")
	})
	if err != nil {
		return nil, unwrapPositions(err)
	}
	var l *syntax.Listener
	for _, d := range prog.Decls() {
		switch d := d.(type) {
		case *syntax.Listener:
			if l != nil {
				return nil, fmt.Errorf("%s: only `on request` and `on response` blocks are allowed", name)
			}
			l = d
		default:
			return nil, fmt.Errorf("%s: only `on request` and `on response` blocks are allowed", name)
		}
	}
	for _, it := range l.Items {
		if _, ok := it.(*syntax.On); !ok {
			return nil, unwrapPositions(syntax.Diagnostics{{Pos: it.Info().Pos, Msg: "only `on request` and `on response` blocks are allowed in a rules filter from xDS (routes come from RDS)"}})
		}
	}
	res, err := Compile(prog, env)
	if err != nil {
		return nil, unwrapPositions(err)
	}
	if rc := res.listeners[0].rules; rc != nil {
		return rc, nil
	}
	return &rules.Config{}, nil
}

// unwrapPositions takes the listener prefix out of first-line columns.
func unwrapPositions(err error) error {
	var ds syntax.Diagnostics
	if !errors.As(err, &ds) {
		return err
	}
	for _, d := range ds {
		if d.Pos.Line == 1 {
			// A position inside the prefix (an unclosed block reported at
			// the listener's brace) becomes the fragment's start.
			d.Pos.Col = max(d.Pos.Col-len(onBlocksPrefix), 1)
			d.Pos.Offset = max(d.Pos.Offset-len(onBlocksPrefix), 0)
			if len(d.Line) >= len(onBlocksPrefix) {
				d.Line = d.Line[len(onBlocksPrefix):]
			}
		}
	}
	return ds
}

// SourceCompiler compiles a rules filter sent as source text
// (config.RulesSource, from xDS) with OnBlocks, then as the rules filter.
// Env is the CEL environment; nil makes one per config.
type SourceCompiler struct {
	Env *expr.Env
}

var _ stream.Compiler = SourceCompiler{}

// Compile implements stream.Compiler.
func (c SourceCompiler) Compile(cfg any) (stream.Factory, error) {
	rs, ok := cfg.(*config.RulesSource)
	if !ok || rs == nil {
		return nil, fmt.Errorf("compile: rules source config is %T, want *config.RulesSource", cfg)
	}
	name := rs.Name
	if name == "" {
		name = "rules filter from xDS"
	}
	rc, err := OnBlocks(name, []byte(rs.Source), c.Env)
	if err != nil {
		return nil, err
	}
	return rules.Compiler{}.Compile(rc)
}

// CompilePerRoute implements stream.Compiler: routes from RDS carry no
// rule-language config.
func (SourceCompiler) CompilePerRoute(cfg any) (any, error) {
	return nil, errors.New("compile: the rules filter from xDS has no per-route config")
}
