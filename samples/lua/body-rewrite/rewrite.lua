-- Rewrites the links a backend writes with its internal address into the
-- public one, in HTML and JSON responses. handle:body() waits for the
-- whole body (the filter buffers it); setBytes replaces it, and the proxy
-- fixes content-length.

local internal = "http://backend.internal:8080"
local public = "https://www.example.com"

local function rewritable(content_type)
  return content_type ~= nil and
    (content_type:find("text/html", 1, true) or content_type:find("application/json", 1, true))
end

function envoy_on_response(handle)
  if not rewritable(handle:headers():get("content-type")) then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  local rewritten, n = text:gsub(internal:gsub("%p", "%%%0"), public)
  if n > 0 then
    body:setBytes(rewritten)
    handle:headers():replace("x-links-rewritten", tostring(n))
  end
end
