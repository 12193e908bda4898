package syntax

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// memFS returns a read function over in-memory files, counting reads.
func memFS(files map[string]string, reads map[string]int) func(string) ([]byte, error) {
	return func(path string) ([]byte, error) {
		reads[path]++
		src, ok := files[filepath.ToSlash(path)]
		if !ok {
			return nil, fmt.Errorf("open %s: %w", path, fs.ErrNotExist)
		}
		return []byte(src), nil
	}
}

func TestParseFiles(t *testing.T) {
	files := map[string]string{
		"conf/main.sluice": `import "upstreams/all.sluice"
import "common.sluice"
listener l 127.0.0.1:80 {
  lua "filters/a.lua"
  tls {
    cert "certs/server.pem" key "certs/server.key"
    client_ca "/etc/ca.pem"
  }
  route r {
    wasm "/abs/b.wasm"
    proxy api
  }
}
`,
		"conf/upstreams/all.sluice": `import "../common.sluice"
upstream api {
  endpoint 127.0.0.1:9001
  tls {
    ca "../certs/ca.pem"
    cert "client.pem" key "client.key"
    sni "api"
  }
}
`,
		"conf/common.sluice": `admin 127.0.0.1:9901
upstream shared {
  endpoint 127.0.0.1:9002
}
`,
	}
	reads := map[string]int{}
	prog, err := ParseFiles("conf/main.sluice", memFS(files, reads))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range prog.Files {
		paths = append(paths, filepath.ToSlash(f.Path))
	}
	if got := strings.Join(paths, " "); got != "conf/main.sluice conf/upstreams/all.sluice conf/common.sluice" {
		t.Errorf("files: %s", got)
	}
	for path, n := range reads {
		if n != 1 {
			t.Errorf("%s read %d times", path, n)
		}
	}
	// Declarations with imports expanded in place, each file once.
	var decls []string
	for _, d := range prog.Decls() {
		switch d := d.(type) {
		case *Admin:
			decls = append(decls, "admin")
		case *Upstream:
			decls = append(decls, "upstream "+d.Name.Name)
		case *Listener:
			decls = append(decls, "listener "+d.Name.Name)
		}
	}
	if got := strings.Join(decls, ", "); got != "admin, upstream shared, upstream api, listener l" {
		t.Errorf("decls: %s", got)
	}
	imp := prog.Root.Decls[1].(*Import)
	if g := prog.Imported(imp); g == nil || filepath.ToSlash(g.Path) != "conf/common.sluice" {
		t.Errorf("Imported(%s) = %v", imp.Path.Raw, g)
	}
	var watch []string
	for _, p := range prog.WatchPaths() {
		watch = append(watch, filepath.ToSlash(p))
	}
	if got := strings.Join(watch, " "); got != "conf/main.sluice conf/upstreams/all.sluice conf/common.sluice conf/filters/a.lua "+
		"conf/certs/server.pem conf/certs/server.key /etc/ca.pem /abs/b.wasm conf/certs/ca.pem conf/upstreams/client.pem conf/upstreams/client.key" {
		t.Errorf("watch paths: %s", got)
	}
	if d := prog.Errorf(prog.Files[2].Decls[1].Start(), "", "duplicate upstream"); d.Line != "upstream shared {" {
		t.Errorf("Program.Errorf line %q", d.Line)
	}
}

func TestParseFilesCycle(t *testing.T) {
	files := map[string]string{
		"a.sluice": "import \"b.sluice\"\n",
		"b.sluice": "admin 127.0.0.1:1\nimport \"sub/../c.sluice\"\n",
		"c.sluice": "import \"a.sluice\"\n",
	}
	prog, err := ParseFiles("a.sluice", memFS(files, map[string]int{}))
	if err == nil {
		t.Fatal("no error for an import cycle")
	}
	want := `c.sluice:1:8: import cycle: a.sluice -> b.sluice -> c.sluice -> a.sluice
    import "a.sluice"
           ^
    hint: a file cannot import itself, directly or through other files`
	if err.Error() != want {
		t.Errorf("cycle error:\n%s\nwant\n%s", err, want)
	}
	if len(prog.Files) != 3 {
		t.Errorf("%d files", len(prog.Files))
	}
	// A file importing itself.
	_, err = ParseFiles("a.sluice", memFS(map[string]string{"a.sluice": `import "./a.sluice"`}, map[string]int{}))
	if err == nil || !strings.Contains(err.Error(), "import cycle: a.sluice -> a.sluice") {
		t.Errorf("self import: %v", err)
	}
}

func TestParseFilesErrors(t *testing.T) {
	files := map[string]string{
		"main.sluice": "import \"missing.sluice\"\nimport \"bad.sluice\"\nimport \"\"\n",
		"bad.sluice":  "upstream {\n",
	}
	prog, err := ParseFiles("main.sluice", memFS(files, map[string]int{}))
	var ds Diagnostics
	if !errors.As(err, &ds) {
		t.Fatalf("error %T %v", err, err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, d.Short())
	}
	want := []string{
		`main.sluice:1:8: cannot import "missing.sluice": open missing.sluice: file does not exist`,
		`bad.sluice:1:10: expected an upstream name, found ` + "`{`",
		`main.sluice:3:8: empty import path`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diagnostics:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if prog == nil || len(prog.Files) != 2 {
		t.Errorf("partial program: %v", prog)
	}
	if _, err := ParseFiles("nope.sluice", memFS(files, map[string]int{})); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing root: %v", err)
	}
}

func TestInspect(t *testing.T) {
	f := mustParse(t, `upstream u { endpoint h:1 weight 2 }
listener l h:2 {
  route r when a == b {
    set request.headers["k"] = v
    proxy split(u: 1, w: 2) mirror m percent 5
  }
}
test "t" { request GET "/" header "a" "b" }
`)
	var kinds []string
	Inspect(f, func(n Node) bool {
		kinds = append(kinds, strings.TrimPrefix(fmt.Sprintf("%T", n), "*syntax."))
		return true
	})
	want := "File Upstream Ident Endpoint Addr Number Listener Ident Addr Route Ident Expr HeaderAction HeaderRef Ident String Expr " +
		"Proxy SplitTarget Ident Number SplitTarget Ident Number Ident Number Test String Request Ident String TestHeader String String"
	if got := strings.Join(kinds, " "); got != want {
		t.Errorf("Inspect order:\n%s\nwant\n%s", got, want)
	}
	// Every node has a valid position.
	Inspect(f, func(n Node) bool {
		if !n.Start().IsValid() {
			t.Errorf("%T has no position", n)
		}
		return true
	})
	// Returning false skips children.
	n := 0
	Inspect(f, func(node Node) bool { n++; _, isFile := node.(*File); return isFile })
	if n != 4 {
		t.Errorf("visited %d nodes, want 4", n)
	}
}
