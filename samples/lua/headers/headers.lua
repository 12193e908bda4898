-- Header manipulation, as an Envoy Lua filter would do it (this file runs
-- unchanged in Envoy's envoy.filters.http.lua).

function envoy_on_request(handle)
  local headers = handle:headers()
  -- Never let clients smuggle an identity header to the backend.
  headers:remove("x-user")
  -- Tell the backend who connected (the address the proxy saw).
  headers:replace("x-client-address", handle:streamInfo():downstreamRemoteAddress())
  -- Normalise a header with several values into one.
  local n = headers:getNumValues("x-tag")
  if n > 1 then
    local tags = {}
    for i = 0, n - 1 do
      tags[#tags + 1] = headers:getAtIndex("x-tag", i)
    end
    headers:replace("x-tag", table.concat(tags, ","))
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  headers:remove("server")
  headers:add("x-served-by", "sluice+lua")
  headers:add("x-protocol", handle:streamInfo():protocol())
end
