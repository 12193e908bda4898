function envoy_on_request(handle)
  for _ in handle:bodyChunks() do
  end
  local t = handle:trailers()
  local dm = handle:streamInfo():dynamicMetadata()
  if t then
    t:add("x-seen", t:get("grpc-status") or "none")
    dm:set("lua", "trailers", "yes")
  else
    dm:set("lua", "trailers", "no")
  end
end
