-- respond(): a local reply from the request path; the upstream is not asked.
function envoy_on_request(handle)
  if handle:headers():get("x-deny") then
    handle:respond({[":status"] = "418", ["x-lua"] = "teapot", ["set-cookie"] = {"a=1", "b=2"}}, "short and stout")
  end
end

function envoy_on_response(handle)
  handle:headers():add("x-response-ran", "yes")
end
