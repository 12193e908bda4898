package wasm

// A tiny wasm binary writer for hand-made test modules (compile errors,
// traps at start) without a wat toolchain.

type wfunc struct {
	importMod, importName string // set for an import
	export                string
	params, results       []byte // value types: 0x7f i32, 0x7e i64
	body                  []byte // instructions without the final end
}

func uleb(n uint32) []byte {
	var out []byte
	for {
		b := byte(n & 0x7f)
		n >>= 7
		if n != 0 {
			out = append(out, b|0x80)
			continue
		}
		return append(out, b)
	}
}

func wname(s string) []byte { return append(uleb(uint32(len(s))), s...) }

func section(id byte, items [][]byte) []byte {
	body := uleb(uint32(len(items)))
	for _, it := range items {
		body = append(body, it...)
	}
	return append(append([]byte{id}, uleb(uint32(len(body)))...), body...)
}

// buildModule encodes functions (imports first) and an exported memory of
// minPages pages.
func buildModule(minPages uint32, funcs ...wfunc) []byte {
	out := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	var types, imports, decls, exports, code [][]byte
	idx := 0
	for _, f := range funcs {
		if f.importMod == "" {
			continue
		}
		types = append(types, append(append(append([]byte{0x60}, uleb(uint32(len(f.params)))...), f.params...), append(uleb(uint32(len(f.results))), f.results...)...))
		imports = append(imports, append(append(wname(f.importMod), wname(f.importName)...), 0x00, byte(len(types)-1)))
		idx++
	}
	for _, f := range funcs {
		if f.importMod != "" {
			continue
		}
		types = append(types, append(append(append([]byte{0x60}, uleb(uint32(len(f.params)))...), f.params...), append(uleb(uint32(len(f.results))), f.results...)...))
		decls = append(decls, uleb(uint32(len(types)-1)))
		if f.export != "" {
			exports = append(exports, append(wname(f.export), 0x00, byte(idx)))
		}
		body := append([]byte{0}, f.body...) // no locals
		body = append(body, 0x0b)
		code = append(code, append(uleb(uint32(len(body))), body...))
		idx++
	}
	exports = append(exports, append(wname("memory"), 0x02, 0))
	out = append(out, section(1, types)...)
	if len(imports) > 0 {
		out = append(out, section(2, imports)...)
	}
	out = append(out, section(3, decls)...)
	out = append(out, section(5, [][]byte{append([]byte{0x00}, uleb(minPages)...)})...)
	out = append(out, section(7, exports)...)
	out = append(out, section(10, code)...)
	return out
}

const tI32 = 0x7f

var (
	fABI     = wfunc{export: "proxy_abi_version_0_2_1"}
	fMalloc  = wfunc{export: "malloc", params: []byte{tI32}, results: []byte{tI32}, body: []byte{0x41, 0}} // i32.const 0
	fContext = wfunc{export: "proxy_on_context_create", params: []byte{tI32, tI32}}
)
