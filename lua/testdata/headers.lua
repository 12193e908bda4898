-- Header object API on both paths.
function envoy_on_request(handle)
  local hd = handle:headers()
  hd:add("x-added", "1")
  hd:add("x-multi", "a")
  hd:add("x-multi", "b")
  hd:replace("x-replace", "new")
  hd:remove("x-remove")
  hd:replace("x-joined", hd:get("x-multi"))
  hd:replace("x-idx1", hd:getAtIndex("x-multi", 1))
  hd:replace("x-idx9", tostring(hd:getAtIndex("x-multi", 9)))
  hd:replace("x-num", hd:getNumValues("x-multi"))
  local names = {}
  for k, _ in pairs(hd) do
    names[#names + 1] = k
  end
  hd:replace("x-names", table.concat(names, ","))
  hd:add("x-missing", tostring(hd:get("nope")))
end

function envoy_on_response(handle)
  handle:headers():add("x-resp", handle:headers():get(":status"))
  handle:headers():setHttp1ReasonPhrase("Fine")
end
