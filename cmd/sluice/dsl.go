package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/sluice-proxy/sluice/dsl/compile"
	"github.com/sluice-proxy/sluice/dsl/expr"
	"github.com/sluice-proxy/sluice/dsl/syntax"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

var (
	celEnvOnce sync.Once
	celEnv     *expr.Env
	celEnvErr  error
)

// loadDSL parses and compiles a .sluice file and what it imports.
func loadDSL(path string) (*compile.Result, error) {
	return loadDSLFrom(path, os.ReadFile)
}

func loadDSLFrom(path string, read func(string) ([]byte, error)) (*compile.Result, error) {
	celEnvOnce.Do(func() { celEnv, celEnvErr = expr.NewEnv() })
	if celEnvErr != nil {
		return nil, fmt.Errorf("dsl: %w", celEnvErr)
	}
	return compile.Load(path, read, celEnv)
}

// loadQuickstart compiles the embedded quickstart.sluice.
func loadQuickstart() (*config.Snapshot, error) {
	res, err := loadDSLFrom("quickstart.sluice", func(p string) ([]byte, error) {
		if p == "quickstart.sluice" {
			return quickstartConfig, nil
		}
		return nil, fmt.Errorf("quickstart: %s: %w", p, os.ErrNotExist)
	})
	if err != nil {
		return nil, err
	}
	return res.Snapshot, nil
}

func cmdFmt(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fmt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	write := fs.Bool("w", false, "rewrite the files in place instead of printing them")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: sluice fmt [-w] FILE...\n\nPrints each .sluice file in canonical layout (comments kept); with -w rewrites\nthe files that change. Formatting formatted output changes nothing.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	bad := 0
	for _, path := range fs.Args() {
		src, err := os.ReadFile(path)
		if err == nil {
			var out []byte
			if out, err = syntax.FormatSource(path, src); err == nil {
				switch {
				case !*write:
					stdout.Write(out)
				case !bytes.Equal(out, src):
					err = os.WriteFile(path, out, 0o644)
				}
			}
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			bad++
		}
	}
	if bad > 0 {
		return 1
	}
	return 0
}

// headerFlags collects repeated -H 'K: V' flags.
type headerFlags []header.Field

func (h *headerFlags) String() string { return fmt.Sprint(*h) }
func (h *headerFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(k) == "" {
		return fmt.Errorf("want 'Name: value', got %q", v)
	}
	*h = append(*h, header.Field{Name: strings.TrimSpace(k), Value: strings.TrimSpace(val)})
	return nil
}

func cmdExplain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var hdrs headerFlags
	fs.Var(&hdrs, "H", "a request header 'Name: value' (repeatable)")
	source := fs.String("source", "", "the client's IP address (source.address)")
	listener := fs.String("listener", "", "the listener to ask (default: the one whose port the URL names, else the first)")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: sluice explain FILE METHOD URL [-H 'K: V']... [--source IP]\n\nShows which route a request matches and every action that would run on it,\nwithout sending anything.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	// Flags may come after the positional arguments, as the usage shows.
	var pos []string
	rest := args
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		rest = fs.Args()
		if len(rest) > 0 {
			pos = append(pos, rest[0])
			rest = rest[1:]
		}
	}
	if len(pos) != 3 {
		fs.Usage()
		return 2
	}
	res, err := loadDSL(pos[0])
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	ex, err := compile.Explain(res, *listener, strings.ToUpper(pos[1]), pos[2], hdrs, *source)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprint(stdout, ex.String())
	return 0
}

func cmdTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: sluice test FILE...\n\nRuns the test blocks of each .sluice file offline (nothing is sent) and exits 1\nif any fails.\n")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	passed, failed := 0, 0
	for _, path := range fs.Args() {
		res, err := loadDSL(path)
		if err != nil {
			fmt.Fprintln(stderr, err)
			failed++
			continue
		}
		for _, r := range compile.RunTests(res) {
			if r.Passed {
				passed++
				fmt.Fprintf(stdout, "ok   %s\n", r.Test.Name)
				continue
			}
			failed++
			fmt.Fprintf(stdout, "FAIL %s\n", r.Test.Name)
			for _, f := range r.Failures {
				fmt.Fprintf(stdout, "     %s\n", f)
			}
		}
	}
	fmt.Fprintf(stdout, "%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}
