package tls

import (
	ctls "crypto/tls"
	"fmt"
	"strings"
)

// opensslNames maps the OpenSSL/BoringSSL cipher names Envoy configs use
// to crypto/tls suites (TLS 1.0-1.2; TLS 1.3 suites are not configurable).
var opensslNames = map[string]uint16{
	"ECDHE-ECDSA-AES128-GCM-SHA256": ctls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	"ECDHE-RSA-AES128-GCM-SHA256":   ctls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	"ECDHE-ECDSA-AES256-GCM-SHA384": ctls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	"ECDHE-RSA-AES256-GCM-SHA384":   ctls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	"ECDHE-ECDSA-CHACHA20-POLY1305": ctls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	"ECDHE-RSA-CHACHA20-POLY1305":   ctls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	"ECDHE-ECDSA-AES128-SHA256":     ctls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
	"ECDHE-RSA-AES128-SHA256":       ctls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
	"ECDHE-ECDSA-AES128-SHA":        ctls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
	"ECDHE-RSA-AES128-SHA":          ctls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	"ECDHE-ECDSA-AES256-SHA":        ctls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	"ECDHE-RSA-AES256-SHA":          ctls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
	"ECDHE-RSA-DES-CBC3-SHA":        ctls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA,
	"AES128-GCM-SHA256":             ctls.TLS_RSA_WITH_AES_128_GCM_SHA256,
	"AES256-GCM-SHA384":             ctls.TLS_RSA_WITH_AES_256_GCM_SHA384,
	"AES128-SHA256":                 ctls.TLS_RSA_WITH_AES_128_CBC_SHA256,
	"AES128-SHA":                    ctls.TLS_RSA_WITH_AES_128_CBC_SHA,
	"AES256-SHA":                    ctls.TLS_RSA_WITH_AES_256_CBC_SHA,
	"DES-CBC3-SHA":                  ctls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
}

// tls13Names are the TLS 1.3 suites, always on in crypto/tls.
var tls13Names = map[string]bool{
	"TLS_AES_128_GCM_SHA256": true, "TLS_AES_256_GCM_SHA384": true, "TLS_CHACHA20_POLY1305_SHA256": true,
}

// CipherSuites maps cipher names to crypto/tls IDs, in order. Names are
// OpenSSL's (ECDHE-ECDSA-AES128-GCM-SHA256) or IANA's
// (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); a BoringSSL equal-preference
// group "[A|B]", as in Envoy's default list, contributes its members in
// order. An unknown name, or a TLS 1.3 suite, is an error.
func CipherSuites(names []string) ([]uint16, error) {
	iana := map[string]uint16{}
	for _, s := range ctls.CipherSuites() {
		iana[s.Name] = s.ID
	}
	for _, s := range ctls.InsecureCipherSuites() {
		iana[s.Name] = s.ID
	}
	var out []uint16
	seen := map[uint16]bool{}
	for _, entry := range names {
		group := strings.TrimSpace(entry)
		if strings.HasPrefix(group, "[") && strings.HasSuffix(group, "]") {
			group = group[1 : len(group)-1]
		}
		for _, name := range strings.Split(group, "|") {
			name = strings.TrimSpace(name)
			if tls13Names[name] {
				return nil, fmt.Errorf("tls: cipher suite %q: TLS 1.3 suites are not configurable", name)
			}
			id, ok := opensslNames[name]
			if !ok {
				id, ok = iana[name]
			}
			if !ok {
				return nil, fmt.Errorf("tls: unknown cipher suite %q", name)
			}
			if !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	return out, nil
}
