counter = 0
local calls = 0

function envoy_on_request(h)
  h:headers():add("x-seen", tostring(leaked))
  leaked = "yes"
  counter = counter + 1
  h:headers():add("x-counter", counter)
  _G.viaG = (viaG or 0) + 1
  h:headers():add("x-viag", _G.viaG)
  rawset(_G, "raw", (rawget(_G, "raw") or 0) + 1)
  h:headers():add("x-raw", raw)
  local f = loadstring("loaded = (loaded or 0) + 1; return loaded")
  h:headers():add("x-loaded", f())
  calls = calls + 1
end

function envoy_on_response(h)
  h:headers():add("x-leaked-in-response", tostring(leaked))
end
