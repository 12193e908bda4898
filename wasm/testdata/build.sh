#!/bin/sh
# Rebuilds the test guests of the wasm host. The .wasm files are checked in
# so tests need no toolchain; run this after changing a guest.
#   goguest.wasm: standard Go (1.24+), GOOS=wasip1 GOARCH=wasm, c-shared.
#   asguest.wasm: AssemblyScript 0.14 with @solo-io/proxy-runtime 0.1.8.
#   watguest.wasm: hand-written WebAssembly text, with wabt's wat2wasm.
set -eu
cd "$(dirname "$0")"
(cd goguest && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -o ../goguest.wasm .)
(cd asguest && npm ci --no-audit --no-fund && npx asc assembly/index.ts -b ../asguest.wasm --use abort=abort_proc_exit --optimize)
wat2wasm watguest/header.wat -o watguest.wasm
