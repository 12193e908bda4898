package compile

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/header"
)

func TestRunTestsDSLMD(t *testing.T) {
	res := loadDSLMD(t)
	results := RunTests(res)
	if len(results) != 2 {
		t.Fatalf("%d results", len(results))
	}
	for _, r := range results {
		if !r.Passed {
			t.Errorf("%s\n%s", r, r.Explanation)
		}
	}
}

func TestExplainDSLMD(t *testing.T) {
	res := loadDSLMD(t)
	for _, tc := range []struct {
		name, method, url, source string
		headers                   []header.Field
		route                     string
		want                      []string // substrings of the rendering, in order
	}{
		{"canary", "GET", "http://example.com/api/users", "", []header.Field{{Name: "X-Canary", Value: "true"}}, "canary", []string{
			"GET http://example.com/api/users on listener public from 127.0.0.1:40000",
			"route: canary (testdata/dslmd.sluice:25:9)",
			"matched by the route table: prefix /api/, header x-canary exact true",
			`on request when request.headers["x-debug"] == "1": skipped, condition is false  (testdata/dslmd.sluice:19:3)`,
			"result: proxy to api_v2 (timeout 2s, retries 2 on 5xx,connect-failure)",
			"x-canary: true",
			"on the response:",
			"on response when response.code >= 500 { ... } (testdata/dslmd.sluice:46:3)",
		}},
		{"split with debug", "GET", "http://example.com/api/users", "", []header.Field{{Name: "x-debug", Value: "1"}}, "api", []string{
			"route: api",
			`on request when request.headers["x-debug"] == "1": condition holds`,
			`set request.headers["x-request-id-echo"] = request.id → "00000000-0000-4000-8000-000000000000"`,
			`set request.headers["x-route"] = "api" → "api"  (testdata/dslmd.sluice:30:5)`,
			"result: proxy to split: api 90, api_v2 10 (timeout 15s)",
			"x-route: api",
		}},
		{"blocked", "GET", "http://example.com/x", "10.9.1.2", nil, "blocked", []string{
			"from 10.9.1.2:40000",
			`route: blocked`,
			`when source.address.startsWith("10.9.")`,
			"result: respond 403 (direct_response)",
			`body: "forbidden\n"`,
		}},
		{"health", "GET", "/healthz", "", nil, "health", []string{
			"matched by the route table: path /healthz, header :path exact /healthz",
			"result: respond 200 (direct_response)",
		}},
		{"health with a query is not /healthz", "GET", "/healthz?x", "", nil, "fallback", []string{
			"[response] on response when response.code >= 500: skipped",
			"result: respond 404 (sluice_respond)",
			`body: "no route for /healthz?x\n"`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ex, err := Explain(res, "", tc.method, tc.url, tc.headers, tc.source)
			if err != nil {
				t.Fatal(err)
			}
			if ex.Route != tc.route {
				t.Errorf("route %q, want %q", ex.Route, tc.route)
			}
			s := ex.String()
			rest := s
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("missing (in order) %q in:\n%s", w, s)
				}
				rest = rest[i+len(w):]
			}
		})
	}
	if _, err := Explain(res, "nope", "GET", "/", nil, ""); err == nil || !strings.Contains(err.Error(), `no listener "nope" (listeners: public)`) {
		t.Errorf("unknown listener: %v", err)
	}
	if _, err := Explain(res, "", "GET", "ftp://x/", nil, ""); err == nil {
		t.Error("ftp URL accepted")
	}
}

func TestRunTestsFailures(t *testing.T) {
	res := compileSrc(t, `
upstream api { endpoint 127.0.0.1:1 }
upstream v2 { endpoint 127.0.0.1:2 }
listener l 127.0.0.1:8080 {
  on request when request.headers["x-block"] == "1" { deny 451 }
  route canary when request.headers["x-canary"] == "true" { proxy v2 }
  route split when request.path.startsWith("/split") { proxy split(api: 90, v2: 10) }
  route api when request.path.startsWith("/api") {
    set request.headers["x-user"] = "u-" + request.headers[?"x-id"].orValue("anon")
    proxy api
  }
  route other { respond 404 "nope\n" }
}
test "passes" {
  request GET "http://example.com/api/a" header "x-id" "7"
  expect route api
  expect upstream api
  expect header "x-user" "u-7"
}
test "wrong route" {
  request GET "http://example.com/api/a"
  expect route canary
  expect upstream v2
  expect header "x-user" "u-7"
  expect header "x-missing" "1"
}
test "split" {
  request GET "http://example.com/split"
  expect upstream api
}
test "respond" {
  request GET "http://example.com/zzz"
  expect respond 404 "nope"
  expect route canary
}
test "on request deny" {
  request GET "http://example.com/api" header "x-block" "1"
  expect respond 451 "forbidden\n"
  expect upstream api
}
test "respond vs proxy" {
  request GET "http://example.com/api"
  expect respond 200
}
`)
	got := map[string][]string{}
	for _, r := range RunTests(res) {
		got[r.Test.Name] = r.Failures
		if r.Passed != (len(r.Failures) == 0) {
			t.Errorf("%s: Passed=%v with %d failures", r.Test.Name, r.Passed, len(r.Failures))
		}
	}
	want := map[string][]string{
		"passes": nil,
		"wrong route": {
			`test "wrong route" (t.sluice:20:1): expect route canary: got route api`,
			`test "wrong route" (t.sluice:20:1): expect upstream v2: got upstream api`,
			`test "wrong route" (t.sluice:20:1): expect header "x-user" "u-7": got x-user: "u-anon"`,
			`test "wrong route" (t.sluice:20:1): expect header "x-missing" "1": got no header x-missing`,
		},
		"split": {
			`test "split" (t.sluice:27:1): expect upstream api: got split: api 90, v2 10 (a split picks its upstream per request; expect the route instead)`,
		},
		"respond": {
			`test "respond" (t.sluice:31:1): expect respond 404 "nope": got body "nope\n"`,
			`test "respond" (t.sluice:31:1): expect route canary: got route other`,
		},
		"on request deny": {
			`test "on request deny" (t.sluice:36:1): expect upstream api: got respond 451`,
		},
		"respond vs proxy": {
			`test "respond vs proxy" (t.sluice:41:1): expect respond 200: got proxy to upstream api`,
		},
	}
	if !reflect.DeepEqual(got, want) {
		for k := range want {
			if !reflect.DeepEqual(got[k], want[k]) {
				t.Errorf("%s:\n got %q\nwant %q", k, got[k], want[k])
			}
		}
	}
}

// Actions of the rules filter show in order, with percentages not firing
// and delays not waiting.
func TestExplainActions(t *testing.T) {
	res := compileSrc(t, `
upstream api { endpoint 127.0.0.1:1 }
listener l 127.0.0.1:8080 {
  on request {
    set response.headers["x-seen"] = "1"
  }
  route r when request.path.startsWith("/r") {
    ratelimit 10 per 1s by request.headers[?"x-key"].orValue("")
    delay 2s
    abort 503 percent 50
    rewrite path "/v2" + request.path
    rewrite host "internal"
    remove request.headers["cookie"]
    add request.headers["x-a"] = "b"
    set response.headers["x-route"] = "r"
    proxy api
  }
  route boom {
    abort 503
    respond 200
  }
}
`)
	ex, err := Explain(res, "", "GET", "http://example.com/r/1", []header.Field{{Name: "cookie", Value: "c"}}, "")
	if err != nil {
		t.Fatal(err)
	}
	s := ex.String()
	for _, w := range []string{
		`ratelimit 10 per 1s by request.headers[?"x-key"].orValue("") → bucket "": allowed`,
		"delay 2s → waits 2s",
		"abort 503 percent 50: not this time (percent)",
		`rewrite path "/v2" + request.path → "/v2/r/1"`,
		`rewrite host "internal" → "internal"`,
		`remove request.headers["cookie"]`,
		`add request.headers["x-a"] = "b" → "b"`,
		":path: /v2/r/1",
		":authority: internal",
		"x-a: b",
		`set response.headers["x-route"] = "r" (t.sluice:15:5)`,
		`set response.headers["x-seen"] = "1" (t.sluice:5:5)`,
	} {
		if !strings.Contains(s, w) {
			t.Errorf("missing %q in:\n%s", w, s)
		}
	}
	if strings.Contains(s, "cookie:") {
		t.Errorf("cookie not removed:\n%s", s)
	}
	// An abort of a local reply goes through the response actions.
	ex, err = Explain(res, "", "GET", "http://example.com/x", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if ex.Outcome.Status != 503 || ex.Outcome.Body != "fault filter abort\n" || !reflect.DeepEqual(ex.Outcome.Headers, []header.Field{{Name: "x-seen", Value: "1"}}) {
		t.Errorf("abort: %+v\n%s", ex.Outcome, ex)
	}
}
