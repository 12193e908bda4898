-- metadata(): the route's filter_metadata["envoy.filters.http.lua"].
function envoy_on_request(handle)
  local hd = handle:headers()
  local md = handle:metadata()
  hd:add("x-md-foo", tostring(md:get("foo")))
  hd:add("x-md-inner", md:get("nested").inner)
  hd:add("x-md-count", tostring(md:get("count")))
  hd:add("x-md-missing", tostring(md:get("missing")))
  local keys = {}
  for k, _ in pairs(md) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  hd:add("x-md-keys", table.concat(keys, ","))
end
