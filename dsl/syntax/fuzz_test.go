package syntax

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every diagnostic has a
// valid position inside the input (and renders), and that an input that
// parses formats to a file that parses to the same tree and formats to
// itself. Seeds: testdata/*.sluice and testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.sluice")
	for _, path := range files {
		if src, err := os.ReadFile(path); err == nil {
			f.Add(src)
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		file, err := Parse("f.sluice", src)
		if file == nil {
			t.Fatal("nil File")
		}
		if err != nil {
			var ds Diagnostics
			if !errors.As(err, &ds) || len(ds) == 0 {
				t.Fatalf("error %T %v", err, err)
			}
			for _, d := range ds {
				checkPos(t, src, d.Pos)
				_ = d.Error()
			}
			return
		}
		Inspect(file, func(n Node) bool {
			checkPos(t, src, n.Start())
			return true
		})
		checkFormat(t, "f.sluice", src)
	})
}

// checkPos checks that pos is in src and that its line and column agree
// with its offset.
func checkPos(t *testing.T, src []byte, pos Pos) {
	t.Helper()
	if pos.File != "f.sluice" || pos.Offset < 0 || pos.Offset > len(src) || pos.Line < 1 || pos.Col < 1 {
		t.Fatalf("bad position %+v for a %d-byte input", pos, len(src))
	}
	before := string(src[:pos.Offset])
	line := strings.Count(before, "\n") + 1
	col := pos.Offset - strings.LastIndexByte(before, '\n')
	if line != pos.Line || col != pos.Col {
		t.Fatalf("position %+v: offset %d is %d:%d", pos, pos.Offset, line, col)
	}
}
