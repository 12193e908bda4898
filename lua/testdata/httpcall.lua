function envoy_on_request(handle)
  local hd = handle:headers()
  local path = hd:get(":path")
  if path == "/sync" then
    local headers, body = handle:httpCall("auth",
      {[":method"] = "POST", [":path"] = "/check", [":authority"] = "auth", ["x-token"] = "t"},
      "payload", 1500)
    hd:add("x-auth-status", headers[":status"])
    hd:add("x-auth-body", body)
    hd:add("x-auth-foo", headers["foo"] or "nil")
  elseif path == "/options" then
    local headers, body = handle:httpCall("auth", {[":method"] = "GET", [":path"] = "/o", [":authority"] = "auth"},
      nil, {timeout_ms = 250, return_duplicate_headers = true})
    hd:add("x-dup", table.concat(headers["key"], "|"))
    hd:add("x-body-nil", tostring(body == nil))
  elseif path == "/last" then
    local headers = handle:httpCall("auth", {[":method"] = "GET", [":path"] = "/o", [":authority"] = "auth"}, nil, 100)
    hd:add("x-last", headers["key"])
  elseif path == "/async" then
    local a = handle:httpCall("log", {[":method"] = "POST", [":path"] = "/l", [":authority"] = "log"}, "event",
      {asynchronous = true})
    hd:add("x-async", tostring(a == nil))
  elseif path == "/async-positional" then
    handle:httpCall("log", {[":method"] = "POST", [":path"] = "/l", [":authority"] = "log"}, "event", 100, true)
  elseif path == "/unknown" then
    handle:httpCall("nope", {[":method"] = "GET", [":path"] = "/", [":authority"] = "x"}, nil, 100)
  elseif path == "/timeout" then
    local headers, body = handle:httpCall("slow", {[":method"] = "GET", [":path"] = "/", [":authority"] = "x"}, nil, 10)
    hd:add("x-timeout", headers[":status"] .. " " .. body)
  elseif path == "/failure" then
    local headers, body = handle:httpCall("broken", {[":method"] = "GET", [":path"] = "/", [":authority"] = "x"}, nil, 10)
    hd:add("x-failure", headers[":status"] .. " " .. body)
  elseif path == "/badheaders" then
    handle:httpCall("auth", {[":path"] = "/"}, nil, 10)
  end
end
