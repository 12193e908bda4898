package syntax

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the formatter's golden files (testdata/*.golden)")

// checkFormat checks, for a source that parses, that formatting keeps the
// tree, re-parses, and is idempotent. It returns the formatted bytes.
func checkFormat(t testing.TB, name string, src []byte) []byte {
	t.Helper()
	f, err := Parse(name, src)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	out := Format(f)
	g, err := Parse(name, out)
	if err != nil {
		t.Fatalf("formatted output does not parse: %v\n--- output\n%s", err, out)
	}
	if a, b := dump(f), dump(g); a != b {
		t.Fatalf("formatting changed the tree\n--- input\n%s\n--- output\n%s\n--- before\n%s\n--- after\n%s", src, out, a, b)
	}
	if again := Format(g); !bytes.Equal(again, out) {
		t.Fatalf("Format is not idempotent\n--- input\n%s\n--- once\n%s\n--- twice\n%s", src, out, again)
	}
	return out
}

func TestFormatGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.sluice")
	if len(files) == 0 {
		t.Fatal("no testdata")
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			out := checkFormat(t, path, src)
			golden := strings.TrimSuffix(path, ".sluice") + ".golden"
			if *update {
				if err := os.WriteFile(golden, out, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("Format(%s) differs from %s\n--- got\n%s\n--- want\n%s", path, golden, out, want)
			}
			// The golden file is canonical: formatting it changes nothing.
			if again := checkFormat(t, golden, want); !bytes.Equal(again, want) {
				t.Errorf("Format(%s) is not itself", golden)
			}
		})
	}
}

func TestFormatSmall(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", ""},
		{"# only a comment", "# only a comment\n"},
		{"\n\n# c\n\n\n", "# c\n"},
		{"admin 127.0.0.1:1\r\nadmin 127.0.0.1:2\r\n", "admin 127.0.0.1:1\nadmin 127.0.0.1:2\n"},
		{"upstream a {}\nupstream b {}", "upstream a {}\n\nupstream b {}\n"},
		{"admin 127.0.0.1:1\nupstream a {}\nadmin 127.0.0.1:2\nimport \"x\"", "admin 127.0.0.1:1\n\nupstream a {}\n\nadmin 127.0.0.1:2\nimport \"x\"\n"},
		{"upstream a {\n\n\n  endpoint h:1\n\n\n\n  endpoint h:2\n\n}", "upstream a {\n  endpoint h:1\n\n  endpoint h:2\n}\n"},
		{"listener l h:1 { route r { respond 200 } }", "listener l h:1 {\n  route r {\n    respond 200\n  }\n}\n"},
		{"listener l h:1 {\n  route r {\n    respond 200   \"x\"  \n  }\n}", "listener l h:1 {\n  route r {\n    respond 200 \"x\"\n  }\n}\n"},
		{"listener l h:1 {\nroute r when   a  ==  b   {}\n}", "listener l h:1 {\n  route r when a  ==  b {}\n}\n"},
		{"upstream a {} # after", "upstream a {} # after\n"},
		{"\uFEFFadmin 127.0.0.1:1", "admin 127.0.0.1:1\n"},
	}
	for _, c := range cases {
		f, err := Parse("t.sluice", []byte(c.in))
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if got := string(Format(f)); got != c.want {
			t.Errorf("Format(%q)\n got  %q\n want %q", c.in, got, c.want)
		}
		checkFormat(t, "t.sluice", []byte(c.in))
	}
}

func TestFormatSource(t *testing.T) {
	if _, err := FormatSource("t.sluice", []byte("admin")); err == nil {
		t.Error("FormatSource of a bad file succeeded")
	}
	out, err := FormatSource("t.sluice", []byte("admin   127.0.0.1:1"))
	if err != nil || string(out) != "admin 127.0.0.1:1\n" {
		t.Errorf("FormatSource = %q, %v", out, err)
	}
}

// TestDSLMD checks the examples of the language contract, when the shared
// folder is beside the repository: every code block of DSL.md that is not
// a shell session parses and formats.
func TestDSLMD(t *testing.T) {
	md, err := os.ReadFile("../../../shared/DSL.md")
	if err != nil {
		t.Skip("shared/DSL.md not found beside the repository")
	}
	n := 0
	for i, block := range strings.Split(string(md), "```")[1:] {
		if i%2 == 1 || !strings.HasPrefix(block, "\n") {
			continue // prose, or a fenced block with a language (sh, ...)
		}
		n++
		checkFormat(t, "DSL.md", []byte(block))
	}
	if n < 2 {
		t.Errorf("found %d examples in DSL.md", n)
	}
}

// The copy of DSL.md's examples in testdata parses without errors.
func TestDSLMDCopy(t *testing.T) {
	src, err := os.ReadFile("testdata/dslmd.sluice")
	if err != nil {
		t.Fatal(err)
	}
	f := mustParse(t, string(src))
	l := f.Decls[3].(*Listener)
	if len(l.Routes()) != 5 || l.Protocol().Name.Name != "auto" {
		t.Errorf("listener: %d routes", len(l.Routes()))
	}
}

// Every example of the language reference (docs/dsl.md) that is not a
// shell session parses and formats.
func TestDocsDSLMD(t *testing.T) {
	md, err := os.ReadFile("../../docs/dsl.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, block := range strings.Split(string(md), "```")[1:] {
		if i%2 == 1 || !strings.HasPrefix(block, "\n") {
			continue // prose, or a fenced block with a language (sh, ...)
		}
		n++
		checkFormat(t, "dsl.md", []byte(block))
	}
	if n < 3 {
		t.Errorf("found %d examples in docs/dsl.md", n)
	}
}
