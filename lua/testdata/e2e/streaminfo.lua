-- streamInfo(): addresses, protocol, route, dynamic metadata, filter state.
function envoy_on_request(handle)
  local hd = handle:headers()
  local si = handle:streamInfo()
  hd:add("x-protocol", si:protocol())
  hd:add("x-route", si:routeName())
  hd:add("x-local", si:downstreamLocalAddress())
  hd:add("x-remote", si:downstreamRemoteAddress())
  hd:add("x-direct-remote", si:downstreamDirectRemoteAddress())
  hd:add("x-sni", si:requestedServerName())
  hd:add("x-ssl", tostring(si:downstreamSslConnection()))
  hd:add("x-conn-ssl", tostring(handle:connection():ssl()))
  local dm = si:dynamicMetadata()
  dm:set("e2e.lua", "user", hd:get("x-user") or "anonymous")
  dm:set("e2e.lua", "info", {n = 2, list = {"a", "b"}, flag = true})
  local got = dm:get("e2e.lua")
  hd:add("x-dm", got.user .. "/" .. got.info.n .. "/" .. got.info.list[2] .. "/" .. tostring(got.info.flag))
  hd:add("x-dm-missing", tostring(dm:get("nope")))
  hd:add("x-fs-missing", tostring(si:filterState():get("nope")))
end

function envoy_on_response(handle)
  local dm = handle:streamInfo():dynamicMetadata()
  local ns = {}
  for k, v in pairs(dm) do
    ns[#ns + 1] = k .. "=" .. tostring(v.user)
  end
  handle:headers():add("x-dm-pairs", table.concat(ns, ","))
  handle:headers():add("x-resp-route", handle:streamInfo():routeName())
end
