-- clearRouteCache(): a changed header picks another route.
function envoy_on_request(handle)
  local hd = handle:headers()
  if hd:get("x-go-beta") == "1" then
    hd:replace("x-route", "beta")
    handle:clearRouteCache()
  end
end
