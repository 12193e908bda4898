// The AssemblyScript test guest of Sluice's wasm host: it answers
// /as-local with a local reply and adds x-as-config (the plugin
// configuration) to every response. Built with @solo-io/proxy-runtime
// 0.1.8, it proves the host allocates with malloc, serves
// wasi_unstable.proc_exit and env.proxy_clear_route_cache.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues,
  stream_context, send_local_response, GrpcStatusValues, Headers,
} from "@solo-io/proxy-runtime";
import { clear_route_cache } from "@solo-io/proxy-runtime/runtime";

class AsRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new AsFilter(context_id, this);
  }
}

class AsFilter extends Context {
  constructor(context_id: u32, root_context: AsRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const path = stream_context.headers.request.get(":path");
    if (path == "/as-local") {
      send_local_response(418, "as_local", String.UTF8.encode("short and stout\n"), [] as Headers, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (path == "/as-reroute") {
      stream_context.headers.request.replace(":path", "/rerouted");
      clear_route_cache();
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-config", this.root_context.getConfiguration());
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new AsRoot(context_id); }, "as_root");
