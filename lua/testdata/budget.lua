function envoy_on_request(h)
  local path = h:headers():get(":path")
  if path == "/loop" then
    while true do end
  elseif path == "/coroutine-loop" then
    coroutine.wrap(function() while true do end end)()
  elseif path == "/error" then
    local t = nil
    return t.field
  elseif path == "/yield" then
    coroutine.yield()
  end
  h:headers():add("x-ok", "1")
end

function envoy_on_response(h)
  if h:headers():get("x-loop") then
    while true do end
  end
end
