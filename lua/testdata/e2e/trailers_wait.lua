-- trailers() straight away: the body streams past the waiting handler.
function envoy_on_request(handle)
  local t = handle:trailers()
  if t ~= nil then
    t:replace("x-req-trailer", "seen:" .. t:get("x-req-trailer"))
  end
end

-- body() first, then trailers(): the buffered body goes on before them.
function envoy_on_response(handle)
  local body = handle:body()
  handle:headers():add("x-resp-body-len", body:length())
  body:setBytes(string.upper(body:getBytes(0, body:length())))
  local t = handle:trailers()
  if t ~= nil then
    t:replace("x-up-trailer", "seen:" .. t:get("x-up-trailer"))
    t:replace("x-up-secret", "")
  end
end
