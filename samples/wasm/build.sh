#!/bin/sh
# Rebuilds the sample filters from their Go sources with the standard Go
# toolchain (1.24+). The .wasm files are checked in, so running the samples
# and their tests needs no build; run this after changing a guest.
set -eu
cd "$(dirname "$0")"
for f in header auth; do
	(cd "$f/guest" && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -o "../$f.wasm" .)
done
