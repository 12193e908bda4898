module sluice.sample/wasm/auth

go 1.26
