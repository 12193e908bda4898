function envoy_on_request(h)
  local path = h:headers():get(":path")
  if path == "/loop" then
    while true do end
  elseif path == "/coroutine-loop" then
    coroutine.wrap(function() while true do end end)()
  elseif path == "/error" then
    local t = nil
    return t.field
  elseif path == "/hog" then
    -- A table that grows without end: stopped by the memory budget long
    -- before the time budget.
    local t = {}
    while true do
      t[#t + 1] = string.rep("x", 4 * 1024 * 1024)
    end
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
