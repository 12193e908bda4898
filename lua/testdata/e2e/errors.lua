-- A script error, an endless loop and sandbox escapes each fail only their
-- own request.
function envoy_on_request(handle)
  local hd = handle:headers()
  local what = hd:get("x-do")
  response_mode = what -- a global: envoy_on_response of this stream reads it
  if what == "error" then
    error("boom")
  elseif what == "nil-index" then
    local t = nil
    return t.field
  elseif what == "loop" then
    while true do end
  elseif what == "io" then
    local f = io.open(hd:get("x-marker"), "w")
    f:write("escaped")
  elseif what == "os" then
    os.execute("touch " .. hd:get("x-marker"))
  elseif what == "require" then
    local io = require("io")
    io.open(hd:get("x-marker"), "w")
  elseif what == "loadstring" then
    loadstring("io.open('" .. hd:get("x-marker") .. "', 'w')")()
  end
  hd:add("x-ok", "1")
end

function envoy_on_response(handle)
  local what = response_mode
  if what == "response-loop" then
    while true do end
  elseif what == "late-error" then
    -- The response head is on its way: the stream can only be reset.
    for _ in handle:bodyChunks() do
      error("late")
    end
  end
end
