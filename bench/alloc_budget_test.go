//go:build !race

package bench

import (
	"bufio"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
)

// readBudget parses alloc_budget.txt: "case allocs" lines, # comments.
func readBudget(t *testing.T) map[string]float64 {
	t.Helper()
	f, err := os.Open("alloc_budget.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) != 2 {
			t.Fatalf("alloc_budget.txt:%d: want \"case allocs\", got %q", n, line)
		}
		v, err := strconv.ParseFloat(fs[1], 64)
		if err != nil {
			t.Fatalf("alloc_budget.txt:%d: %v", n, err)
		}
		out[fs[0]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestProxyAllocBudget fails when a proxied request allocates more than
// bench/alloc_budget.txt allows. It counts allocations (not time), over
// many requests on a warm keep-alive connection through an in-process
// sluice, with a client and an origin that allocate nothing per request.
// The race detector changes allocation counts, so it only runs without it.
func TestProxyAllocBudget(t *testing.T) {
	budget := readBudget(t)
	for _, pc := range proxyCases {
		t.Run(pc.name, func(t *testing.T) {
			max, ok := budget[pc.name]
			if !ok {
				t.Fatalf("alloc_budget.txt has no line for %q", pc.name)
			}
			rc := newRawClient(t, startProxy(t, pc.variant), pc.path)
			var err error
			// Warm the pools (connections, streams, buffers) first.
			for range 200 {
				if err = rc.do(); err != nil {
					t.Fatal(err)
				}
			}
			// AllocsPerRun counts every goroutine's allocations and floors
			// the mean, so a rare background allocation does not count.
			got := testing.AllocsPerRun(2000, func() {
				if e := rc.do(); e != nil && err == nil {
					err = e
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %v allocs per proxied request (budget %v)", pc.name, got, max)
			if got > max {
				t.Errorf("%s: %v allocs per proxied request, over the budget of %v in bench/alloc_budget.txt: "+
					"find the new allocation with go test -run '^$' -bench 'BenchmarkProxyRequest/%s' -benchmem -memprofile mem.out ./bench",
					pc.name, got, max, pc.name)
			}
			if got < math.Floor(max*0.75) {
				t.Logf("%s: well under budget: lower it in bench/alloc_budget.txt to %v", pc.name, got)
			}
		})
	}
}
