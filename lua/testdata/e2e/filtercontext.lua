-- filterContext(): the filter's (or the route's) filter_context.
function envoy_on_request(handle)
  local ctx = handle:filterContext()
  local hd = handle:headers()
  hd:add("x-ctx-greeting", tostring(ctx.greeting))
  hd:add("x-ctx-n", tostring(ctx.n))
  hd:add("x-ctx-list", ctx.list and table.concat(ctx.list, ",") or "nil")
  hd:add("x-ctx-missing", tostring(ctx.missing))
end
