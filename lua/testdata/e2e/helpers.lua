-- timestamp(), timestampString(), base64Escape().
function envoy_on_request(handle)
  local hd = handle:headers()
  hd:add("x-ts", string.format("%d", handle:timestamp()))
  hd:add("x-ts-ms", string.format("%d", handle:timestamp(EnvoyTimestampResolution.MILLISECOND)))
  hd:add("x-tss", handle:timestampString())
  hd:add("x-tss-us", handle:timestampString(EnvoyTimestampResolution.MICROSECOND))
  hd:add("x-b64", handle:base64Escape(hd:get("x-raw")))
  hd:add("x-b64-bin", handle:base64Escape("\0\1\2\255"))
end
