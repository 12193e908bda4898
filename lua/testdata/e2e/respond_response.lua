-- respond() on the response path: Envoy refuses it ("respond not currently
-- supported in the response path"), a script error.
function envoy_on_response(handle)
  if handle:headers():get(":status") == "200" then
    handle:respond({[":status"] = "202"}, "replaced")
  end
end
