-- bodyChunks(): streamed, each chunk changed before it is forwarded.
function envoy_on_request(handle)
  local n = 0
  for chunk in handle:bodyChunks() do
    n = n + 1
    chunk:setBytes(string.upper(chunk:getBytes(0, chunk:length())))
  end
  handle:logInfo("chunks=" .. n)
end

-- Envoy's documented example: clear every chunk, replace the last one.
function envoy_on_response(response_handle)
  response_handle:headers():replace("content-type", "text/html")
  local last
  for chunk in response_handle:bodyChunks() do
    chunk:setBytes("")
    last = chunk
  end
  last:setBytes("<html><b>Not Found<b></html>")
end
