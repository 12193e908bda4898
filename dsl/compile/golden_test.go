package compile

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/dsl/expr"
)

var update = flag.Bool("update", false, "rewrite the golden files of TestGolden")

// TestGolden compiles every testdata/golden/*.sluice file and compares the
// snapshot (as JSON, the way /config_dump shows it) or, for a file that
// does not compile, the error text, with its .golden file. Run with
// -update to accept a change after reading the diff.
func TestGolden(t *testing.T) {
	env, err := expr.NewEnv()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("testdata/golden/*.sluice")
	if len(files) == 0 {
		t.Fatal("no golden inputs")
	}
	for _, in := range files {
		t.Run(filepath.Base(in), func(t *testing.T) {
			var got []byte
			res, err := Load(in, os.ReadFile, env)
			if err != nil {
				got = []byte(err.Error() + "\n")
			} else {
				res.Snapshot.Version = "" // a hash of the source: not what this test is about
				if got, err = json.MarshalIndent(res.Snapshot, "", "  "); err != nil {
					t.Fatalf("marshal: %v", err)
				}
				got = append(got, '\n')
			}
			golden := strings.TrimSuffix(in, ".sluice") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Errorf("%s differs from %s:\n--- got\n%s\n--- want\n%s", in, golden, got, want)
			}
		})
	}
}
