package syntax

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// Program is a root file with every file it imports, directly or not.
type Program struct {
	Root  *File
	Files []*File // each file once: the root first, then in the order first imported (depth first)

	imports map[*Import]*File
}

// ParseFiles parses the file root and, recursively, the files it imports.
// An import path is relative to the directory of the importing file. Each
// file is read and parsed once, however many files import it; an import
// cycle is an error that shows the chain. read reads a file (os.ReadFile,
// or a test's in-memory files).
//
// It returns the Program, partial when there are errors, and a
// Diagnostics for syntax and import errors. A root file that cannot be
// read gives a nil Program and read's error.
func ParseFiles(root string, read func(path string) ([]byte, error)) (*Program, error) {
	root = filepath.Clean(root)
	src, err := read(root)
	if err != nil {
		return nil, err
	}
	prog := &Program{imports: map[*Import]*File{}}
	byPath := map[string]*File{}
	var diags Diagnostics

	var load func(path string, src []byte, stack []string) *File
	load = func(path string, src []byte, stack []string) *File {
		f, err := Parse(path, src)
		var ds Diagnostics
		if errors.As(err, &ds) {
			diags = append(diags, ds...)
		}
		byPath[path] = f
		prog.Files = append(prog.Files, f)
		stack = append(stack, path)
		for _, d := range f.Decls {
			imp, ok := d.(*Import)
			if !ok {
				continue
			}
			if imp.Path.Value == "" {
				diags = append(diags, f.Errorf(imp.Path.Pos, "", "empty import path"))
				continue
			}
			target := ResolvePath(path, imp.Path.Value)
			if i := slices.Index(stack, target); i >= 0 {
				chain := append(slices.Clone(stack[i:]), target)
				diags = append(diags, f.Errorf(imp.Path.Pos, "a file cannot import itself, directly or through other files",
					"import cycle: %s", strings.Join(chain, " -> ")))
				continue
			}
			if g, ok := byPath[target]; ok {
				prog.imports[imp] = g
				continue
			}
			src, err := read(target)
			if err != nil {
				diags = append(diags, f.Errorf(imp.Path.Pos, "", "cannot import %q: %v", imp.Path.Value, err))
				continue
			}
			prog.imports[imp] = load(target, src, stack)
		}
		return f
	}
	prog.Root = load(root, src, nil)
	return prog, diags.Err()
}

// Imported returns the file that imp (an import of one of p's files)
// refers to, or nil if it could not be loaded (or closes a cycle).
func (p *Program) Imported(imp *Import) *File { return p.imports[imp] }

// Decls returns the declarations of the whole program with each import
// replaced by the declarations of the file it names, the first time that
// file is imported (later imports of it add nothing).
func (p *Program) Decls() []Decl {
	var out []Decl
	seen := map[*File]bool{}
	var expand func(f *File)
	expand = func(f *File) {
		seen[f] = true
		for _, d := range f.Decls {
			if imp, ok := d.(*Import); ok {
				if g := p.imports[imp]; g != nil && !seen[g] {
					expand(g)
				}
				continue
			}
			out = append(out, d)
		}
	}
	if p.Root != nil {
		expand(p.Root)
	}
	return out
}

// File returns the program's file with the given path, or nil.
func (p *Program) File(path string) *File {
	for _, f := range p.Files {
		if f.Path == path {
			return f
		}
	}
	return nil
}

// WatchPaths returns the files a running proxy should watch to reload:
// every *.sluice file of the program and every file they name: Lua and
// wasm filters, TLS certificates, keys and CAs (so a renewed certificate
// is picked up), resolved relative to the naming file, each once, in
// order.
func (p *Program) WatchPaths() []string {
	var out []string
	add := func(path string) {
		if !slices.Contains(out, path) {
			out = append(out, path)
		}
	}
	for _, f := range p.Files {
		add(f.Path)
	}
	for _, f := range p.Files {
		Inspect(f, func(n Node) bool {
			var names []*String
			switch n := n.(type) {
			case *Lua:
				names = append(names, n.File)
			case *Wasm:
				names = append(names, n.File)
			case *TLSCert:
				names = append(names, n.Cert, n.Key)
			case *TLSOption:
				if n.Name.Name == "ca" || n.Name.Name == "client_ca" {
					names = append(names, n.Value)
				}
			}
			for _, s := range names {
				if s != nil && s.Value != "" {
					add(ResolvePath(f.Path, s.Value))
				}
			}
			return true
		})
	}
	return out
}

// ResolvePath resolves a path named in the file from: relative to from's
// directory unless it is absolute, as imports, filters and certificates
// are.
func ResolvePath(from, path string) string {
	if !filepath.IsAbs(path) {
		path = filepath.Join(filepath.Dir(from), path)
	}
	return filepath.Clean(path)
}

// Errorf makes a diagnostic at pos in one of p's files, with the source
// line filled in. For the compiler's errors.
func (p *Program) Errorf(pos Pos, hint, format string, args ...any) *Diagnostic {
	if f := p.File(pos.File); f != nil {
		return f.Errorf(pos, hint, format, args...)
	}
	return &Diagnostic{Pos: pos, Msg: fmt.Sprintf(format, args...), Hint: hint}
}
