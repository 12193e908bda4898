-- body(): the whole body, buffered, on both paths.
function envoy_on_request(handle)
  local hd = handle:headers()
  local body = handle:body()
  if body == nil then
    hd:add("x-req-nil", "true")
    hd:add("x-req-wrapped-len", handle:body(true):length())
    return
  end
  hd:add("x-req-len", body:length())
  hd:add("x-req-head", body:getBytes(0, 5))
  body:setBytes("rewritten:" .. string.upper(body:getBytes(0, body:length())))
end

function envoy_on_response(handle)
  local body = handle:body(true)
  handle:headers():add("x-resp-len", body:length())
  body:setBytes("[" .. body:getBytes(0, body:length()) .. "]")
end
