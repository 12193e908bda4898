module sluice.sample/wasm/header

go 1.26
