-- Header map API on the request and response paths.
function envoy_on_request(handle)
  local hd = handle:headers()
  hd:add("x-got", hd:get("x-multi"))
  hd:add("x-idx", hd:getAtIndex("x-multi", 1))
  hd:add("x-idx-missing", tostring(hd:getAtIndex("x-multi", 5)))
  hd:add("x-num", hd:getNumValues("x-multi"))
  hd:add("x-num-missing", hd:getNumValues("x-nope"))
  hd:add("x-get-missing", tostring(hd:get("x-nope")))
  hd:replace("x-replace", "new")
  hd:replace("x-fresh", "made")
  hd:remove("x-remove")
  hd:add("x-added", "1")
  hd:add("x-added", "2")
  local n, names = 0, {}
  for k, v in pairs(hd) do
    if k == "x-multi" then
      n = n + 1
      names[#names + 1] = v
    end
  end
  hd:add("x-pairs", n .. ":" .. table.concat(names, ","))
  hd:add("x-method", hd:get(":method"))
  hd:add("x-path", hd:get(":path"))
end

function envoy_on_response(handle)
  local hd = handle:headers()
  hd:add("x-status", hd:get(":status"))
  hd:remove("server")
  hd:replace("x-up", "replaced")
  hd:add("x-up-multi-n", hd:getNumValues("x-up-multi"))
  hd:add("x-up-multi-1", hd:getAtIndex("x-up-multi", 1))
  hd:setHttp1ReasonPhrase("Very OK")
end
