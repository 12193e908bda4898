-- body(): the whole body, buffered.
function envoy_on_request(handle)
  local body = handle:body()
  handle:headers():add("request_body_size", body:length())
  handle:headers():add("x-first", body:getBytes(0, 5))
  body:setBytes(string.upper(body:getBytes(0, body:length())))
end

function envoy_on_response(handle)
  local b = handle:body()
  handle:headers():add("x-nobody", tostring(b == nil))
  handle:headers():add("x-wrapped-len", handle:body(true):length())
end
