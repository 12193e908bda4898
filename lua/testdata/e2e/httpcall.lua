-- httpCall(): a synchronous auth check, a call with an options table, and a
-- fire-and-forget call.
function envoy_on_request(handle)
  local hd = handle:headers()
  local headers, body = handle:httpCall("auth", {
    [":method"] = "POST",
    [":path"] = "/check",
    [":authority"] = "auth",
    ["authorization"] = hd:get("authorization") or "",
  }, "check-body", 2000)
  if headers[":status"] ~= "200" then
    handle:respond({[":status"] = "403", ["x-auth-status"] = headers[":status"]}, "denied: " .. (body or ""))
    return
  end
  hd:remove("authorization")
  hd:replace("x-user", headers["x-user"])
  hd:add("x-auth-body", body)

  local dup = handle:httpCall("auth", {[":method"] = "GET", [":path"] = "/dup", [":authority"] = "auth"}, nil,
    {timeout_ms = 2000, return_duplicate_headers = true})
  hd:add("x-dup", table.concat(dup["x-dup"], "|"))

  handle:httpCall("auth", {[":method"] = "POST", [":path"] = "/log", [":authority"] = "auth"},
    "event " .. hd:get(":path"), {asynchronous = true})

  if hd:get("x-slow") then
    -- Waiting for the upstream is not script time: 150 ms here outlast the
    -- 100 ms budget. A 50 ms timeout gets Envoy's made-up 504.
    local slow, slowBody = handle:httpCall("auth", {[":method"] = "GET", [":path"] = "/slow", [":authority"] = "auth"}, nil, 2000)
    hd:add("x-slow-status", slow[":status"] .. " " .. slowBody)
    local late, lateBody = handle:httpCall("auth", {[":method"] = "GET", [":path"] = "/slow", [":authority"] = "auth"}, nil, 50)
    hd:add("x-timeout-status", late[":status"] .. " " .. lateBody)
  end
end

function envoy_on_response(handle)
  local headers = handle:httpCall("auth", {[":method"] = "GET", [":path"] = "/dup", [":authority"] = "auth"}, nil, 2000)
  handle:headers():add("x-response-call", headers[":status"] .. " " .. headers["x-dup"])
end
