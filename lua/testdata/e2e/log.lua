-- The log family: every level, from the handle and from other objects.
function envoy_on_request(handle)
  handle:logTrace("e2e trace")
  handle:logDebug("e2e debug")
  handle:logInfo("e2e info")
  handle:logWarn("e2e warn")
  handle:logErr("e2e err")
  handle:logCritical("e2e critical")
  handle:headers():logInfo("e2e from headers")
end

function envoy_on_response(handle)
  handle:logInfo("e2e response " .. handle:headers():get(":status"))
end
