package lua

import (
	"strings"
	"testing"
	"time"
)

// TestGsub: string.gsub keeps Lua 5.1's results and runs in linear time.
func TestGsub(t *testing.T) {
	fac := mustCompile(t, inline(`function envoy_on_request(h)
  local hd = h:headers()
  local function put(name, s, n) hd:add(name, s .. "#" .. n) end
  put("x-plain", string.gsub("hello world", "o", "0"))
  put("x-limit", string.gsub("hello world", "o", "0", 1))
  put("x-captures", string.gsub("hello world", "(%w+) (%w+)", "%2 %1 %0 %%"))
  put("x-whole", string.gsub("abc", "%w", "<%1>"))
  put("x-empty", string.gsub("abc", "", "-"))
  put("x-anchor", string.gsub("aaa", "^a", "b"))
  put("x-table", string.gsub("$name is $age", "%$(%w+)", {name = "bob", age = 42}))
  put("x-table-miss", string.gsub("$name $nope", "%$(%w+)", {name = "bob"}))
  put("x-func", string.gsub("a,b,c", "(%w)", function(c) if c == "b" then return nil end return c:upper() end))
  put("x-poscap", string.gsub("abc", "()b", "%1"))
  put("x-number", string.gsub("a1", "%d", 7))
  put("x-nomatch", string.gsub("abc", "z", "y"))
  put("x-method", ("xyz"):gsub("y", "Y"))
  local ok, err = pcall(string.gsub, "abc", "(a)", "%2")
  hd:add("x-badcap", tostring(ok) .. " " .. tostring(err))
  ok = pcall(string.gsub, "abc", "a", function() return {} end)
  hd:add("x-badval", tostring(ok))
  local big = string.rep("A", 65536)
  local out, n = string.gsub(big, "A", "b")
  hd:add("x-big", #out .. "#" .. n .. "#" .. tostring(out == string.rep("b", 65536)))
end`))
	cb := newCB()
	start := time.Now()
	o := exchange(fac, cb, get("/"), message{})
	if o.local {
		t.Fatalf("failed: %s", cb.logs.text())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("gsub over 64 KiB took %v", d)
	}
	wantHeaders(t, &o.req, map[string]string{
		"x-plain":      "hell0 w0rld#2",
		"x-limit":      "hell0 world#1",
		"x-captures":   "world hello hello world %#1",
		"x-whole":      "<a><b><c>#3",
		"x-empty":      "-a-b-c-#4",
		"x-anchor":     "baa#1",
		"x-table":      "bob is 42#2",
		"x-table-miss": "bob $nope#2",
		"x-func":       "A,b,C#3",
		"x-poscap":     "a2c#1",
		"x-number":     "a7#1",
		"x-nomatch":    "abc#0",
		"x-method":     "xYz#1",
		"x-badval":     "false",
		"x-big":        "65536#65536#true",
	})
	if v := o.req.Value("x-badcap"); !strings.HasPrefix(v, "false ") || !strings.Contains(v, "invalid capture index") {
		t.Errorf("x-badcap = %q", v)
	}
}
