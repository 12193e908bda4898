;; The smallest useful proxy-wasm HTTP filter (ABI 0.2.1), written by hand:
;; it adds "x-wasm: 1" to every request, like the Go guest's "addheader"
;; mode. With next to no guest code it measures what the host costs per
;; request (the shape of a filter built with the Rust or C++ SDK, whose
;; compiled code does little more). Built with wabt: wat2wasm header.wat.
(module
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "x-wasm")
  (data (i32.const 32) "1")

  ;; Memory the host asks for (to hand the guest configuration or header
  ;; values) comes from a bump allocator over [1 KiB, 128 KiB) that starts
  ;; over when full: this guest keeps nothing the host gave it past the
  ;; callback that got it.
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (local.get $size) (i32.const 65536))
      (then (return (i32.const 0))))
    (if (i32.gt_u (i32.add (global.get $next) (local.get $size)) (i32.const 131072))
      (then (global.set $next (i32.const 1024))))
    (local.set $p (global.get $next))
    (global.set $next
      (i32.and (i32.add (i32.add (global.get $next) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $p))

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))

  ;; proxy_add_header_map_value(map 0 = request headers, key, value)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 1)))
    (i32.const 0)) ;; Continue

  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
)
