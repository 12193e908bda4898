-- importPublicKey() and verifySignature(); key and signature come hex-encoded.
local function unhex(s)
  return (s:gsub("%x%x", function(c) return string.char(tonumber(c, 16)) end))
end

function envoy_on_request(handle)
  local hd = handle:headers()
  local der = unhex(hd:get("x-key"))
  local key = handle:importPublicKey(der, string.len(der))
  local sig = unhex(hd:get("x-sig"))
  local data = hd:get("x-data")
  local ok, err = handle:verifySignature("sha256", key, sig, string.len(sig), data, string.len(data))
  if not ok then
    handle:respond({[":status"] = "401"}, "bad signature: " .. tostring(err))
    return
  end
  local bad, badErr = handle:verifySignature("sha256", key, sig, string.len(sig), "tampered", 8)
  hd:add("x-verified", tostring(ok))
  hd:add("x-tampered", tostring(bad) .. "/" .. tostring(badErr))
  hd:remove("x-sig")
  hd:remove("x-key")
end
