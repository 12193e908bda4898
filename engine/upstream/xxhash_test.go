package upstream

import "testing"

func TestXXHash64(t *testing.T) {
	// Reference values of the XXH64 specification.
	sanity := make([]byte, 101)
	gen := uint32(2654435761)
	for i := range sanity {
		sanity[i] = byte(gen >> 24)
		gen *= gen
	}
	const prime = 2654435761
	tests := []struct {
		in   []byte
		seed uint64
		want uint64
	}{
		{nil, 0, 0xEF46DB3751D8E999},
		{nil, 1, 0xD5AFBA1336A3BE4B},
		{[]byte("a"), 0, 0xD24EC4F1A98C6E5B},
		{[]byte("as"), 0, 0x1C330FB2D66BE179},
		{[]byte("asd"), 0, 0x631C37CE72A97393},
		{[]byte("asdf"), 0, 0x415872F599CEA71E},
		{[]byte("abc"), 0, 0x44BC2CF5AD770999},
		{[]byte("Nobody inspects the spammish repetition"), 0, 0xFBCEA83C8A378BF1},
		{nil, prime, 0xAC75FDA2929B17EF},
		{sanity[:1], 0, 0x4FCE394CC88952D8},
		{sanity[:1], prime, 0x739840CB819FA723},
		{sanity[:14], 0, 0xCFFA8DB881BC3A3D},
		{sanity[:14], prime, 0x5B9611585EFCC9CB},
		{sanity, 0, 0x0EAB543384F878AD},
		{sanity, prime, 0xCAA65939306F1E21},
	}
	for _, tt := range tests {
		if got := xxhash64(tt.in, tt.seed); got != tt.want {
			t.Errorf("xxhash64(%q, %d) = %#x, want %#x", tt.in, tt.seed, got, tt.want)
		}
	}
}
