function envoy_on_request(handle)
  if handle:headers():get(":path") == "/deny" then
    handle:respond({[":status"] = "403", ["x-reason"] = "nope", ["set-cookie"] = {"a=1", "b=2"}}, "denied")
    error("not reached")
  end
  if handle:headers():get(":path") == "/pcall" then
    -- respond() cannot suspend inside pcall; the reply still stands.
    local ok = pcall(handle.respond, handle, {[":status"] = "429"}, "slow down")
    handle:logInfo("after pcall respond ok=" .. tostring(ok))
  end
  if handle:headers():get(":path") == "/after-body" then
    local b = handle:body()
    handle:respond({[":status"] = 401}, "saw " .. b:length())
  end
end

function envoy_on_response(handle)
  if handle:headers():get(":status") == "500" then
    handle:respond({[":status"] = "200"}, "too late")
  end
end
