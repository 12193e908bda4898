function envoy_on_request(h)
  local si = h:streamInfo()
  local hd = h:headers()
  hd:add("x-protocol", si:protocol())
  hd:add("x-route", si:routeName())
  hd:add("x-local", si:downstreamLocalAddress())
  hd:add("x-remote", si:downstreamRemoteAddress())
  hd:add("x-direct-remote", si:downstreamDirectRemoteAddress())
  hd:add("x-sni", si:requestedServerName())
  hd:add("x-ssl-nil", tostring(si:downstreamSslConnection() == nil and h:connection():ssl() == nil))

  local dm = si:dynamicMetadata()
  dm:set("envoy.filters.http.lua", "request.info", {auth = hd:get("authorization"), n = 3, list = {"a", "b"}, flag = true})
  local got = dm:get("envoy.filters.http.lua")["request.info"]
  hd:add("x-dm", got.auth .. "/" .. got.n .. "/" .. got.list[2] .. "/" .. tostring(got.flag))
  local ns = {}
  for k, _ in pairs(dm) do
    ns[#ns + 1] = k
  end
  hd:add("x-dm-ns", table.concat(ns, ","))
  hd:add("x-dm-missing", tostring(dm:get("nope")))

  local fs = si:filterState()
  hd:add("x-fs", fs:get("auth.result") or "nil")
  hd:add("x-fs-field", fs:get("user.info", "name") or "nil")
  hd:add("x-fs-missing", tostring(fs:get("nope")))

  local md = h:metadata()
  hd:add("x-md", md:get("foo"))
  local keys = {}
  for k, v in pairs(md) do
    keys[#keys + 1] = k .. "=" .. tostring(type(v) == "table" and v.inner or v)
  end
  hd:add("x-md-keys", table.concat(keys, ","))
  hd:add("x-md-missing", tostring(md:get("nope")))

  h:clearRouteCache()
  local ctx = h:filterContext()
  hd:add("x-ctx", tostring(ctx["key"]) .. "/" .. tostring(ctx:get("key")))

  h:logTrace("t") h:logDebug("d") h:logInfo("i") h:logWarn("w") h:logErr("e") h:logCritical("c")
  h:log(2, "via log")
  hd:logInfo("from headers")
  print("printed", 1)

  hd:add("x-ts-type", type(h:timestamp()))
  hd:add("x-ts-ms", tostring(h:timestamp(EnvoyTimestampResolution.MILLISECOND) > 1600000000000))
  hd:add("x-ts-int", tostring(h:timestamp() % 1 == 0))
  hd:add("x-tss-len", #h:timestampString(EnvoyTimestampResolution.MICROSECOND))
  hd:add("x-tss-ms-len", #h:timestampString())
  hd:add("x-b64", h:base64Escape("hello\0world"))
end
