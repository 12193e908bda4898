-- bodyChunks(): the body streams by chunk, each changed before it goes on.
function envoy_on_request(handle)
  request_chunks, request_bytes = 0, 0
  for chunk in handle:bodyChunks() do
    request_chunks = request_chunks + 1
    request_bytes = request_bytes + chunk:length()
    chunk:setBytes(string.upper(chunk:getBytes(0, chunk:length())))
  end
end

function envoy_on_response(handle)
  -- Globals the request set are still there for this stream.
  handle:headers():add("x-req-bytes", request_bytes)
  handle:headers():add("x-req-chunked", tostring(request_chunks > 1))
  for chunk in handle:bodyChunks() do
    chunk:setBytes((string.gsub(chunk:getBytes(0, chunk:length()), "A", "b")))
  end
end
