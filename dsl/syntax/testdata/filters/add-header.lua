-- The Lua filter of DSL.md's example: an Envoy Lua script, unchanged.
function envoy_on_request(handle)
  handle:headers():add("x-lua", "1")
end
