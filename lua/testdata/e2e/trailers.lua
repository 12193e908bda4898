-- trailers(): read and change the trailers of the request and the response.
function envoy_on_request(handle)
  local body = handle:body()
  handle:headers():add("x-req-body-len", body and body:length() or 0)
  -- Declare the trailer added below: HTTP/2 servers may drop undeclared ones.
  handle:headers():add("trailer", "x-lua-req-trailer")
  local t = handle:trailers()
  if t ~= nil then
    t:add("x-lua-req-trailer", t:get("x-req-trailer") or "none")
    t:replace("x-req-trailer", "changed")
  end
end

function envoy_on_response(handle)
  for _ in handle:bodyChunks() do
  end
  local t = handle:trailers()
  if t ~= nil then
    t:add("x-lua-resp-trailer", t:get("x-up-trailer") or "none")
    t:remove("x-up-secret")
  end
end
