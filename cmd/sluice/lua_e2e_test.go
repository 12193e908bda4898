package main

// End-to-end corpus of the Lua filter: every Envoy Lua API call, run through
// the proxy from a .sluice file and from an Envoy bootstrap, with the scripts
// of lua/testdata/e2e (plain Envoy scripts) at listener level and per route.

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
	"github.com/sluice-proxy/sluice/xds"
)

// e2eSeen is what an upstream received.
type e2eSeen struct {
	upstream string
	proto    string
	method   string
	path     string
	header   http.Header
	body     string
	trailer  http.Header
}

// e2eUpstream is an echo origin: it records each request and answers with
// "echo:" + the body (or the x-up-body header), fixed headers for scripts to
// change, and trailers when asked (x-up-trailers).
type e2eUpstream struct {
	name string
	mu   sync.Mutex
	seen []*e2eSeen
}

func (u *e2eUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.seen = append(u.seen, &e2eSeen{upstream: u.name, proto: r.Proto, method: r.Method, path: r.URL.RequestURI(),
		header: r.Header.Clone(), body: string(body), trailer: r.Trailer.Clone()})
	u.mu.Unlock()
	trailers := r.Header.Get("X-Up-Trailers") != ""
	if trailers {
		w.Header().Set("Trailer", "X-Up-Trailer, X-Up-Secret")
	}
	w.Header().Set("Server", "origin/1.0")
	w.Header().Set("X-Up", "1")
	w.Header().Add("X-Up-Multi", "a")
	w.Header().Add("X-Up-Multi", "b")
	w.Header().Set("X-Upstream", u.name)
	if v := r.Header.Get("X-Up-Body"); v != "" {
		io.WriteString(w, v)
	} else {
		io.WriteString(w, "echo:"+string(body))
	}
	if trailers {
		w.Header().Set("X-Up-Trailer", "t1")
		w.Header().Set("X-Up-Secret", "s")
	}
}

func (u *e2eUpstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.seen)
}

func (u *e2eUpstream) last() *e2eSeen {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.seen) == 0 {
		return nil
	}
	return u.seen[len(u.seen)-1]
}

// e2eAuth is the cluster httpCall talks to.
type e2eAuth struct {
	events chan string // bodies of /log calls
}

func (a *e2eAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	switch r.URL.Path {
	case "/check":
		if r.Header.Get("Authorization") == "Bearer good" && string(body) == "check-body" && r.Method == "POST" {
			w.Header().Set("X-User", "alice")
			io.WriteString(w, "ok")
			return
		}
		w.WriteHeader(401)
		io.WriteString(w, "bad token")
	case "/slow":
		time.Sleep(150 * time.Millisecond)
		io.WriteString(w, "slow")
	case "/dup":
		w.Header().Add("X-Dup", "a")
		w.Header().Add("X-Dup", "b")
	case "/log":
		select {
		case a.events <- string(body):
		default:
		}
	default:
		w.WriteHeader(404)
	}
}

// logCapture keeps what the proxy logged.
type logCapture struct {
	mu      sync.Mutex
	records []string // "LEVEL msg"
	full    []string // with the attributes
}

type captureHandler struct {
	c *logCapture
}

func (h captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h captureHandler) Handle(_ context.Context, r slog.Record) error {
	h.c.mu.Lock()
	h.c.records = append(h.c.records, r.Level.String()+" "+r.Message)
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%q", a.Key, a.Value.String())
		return true
	})
	h.c.full = append(h.c.full, b.String())
	h.c.mu.Unlock()
	return nil
}
func (h captureHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h captureHandler) WithGroup(string) slog.Handler      { return h }

func (c *logCapture) has(rec string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.records {
		if r == rec {
			return true
		}
	}
	return false
}

// e2eTLS is the PKI of the TLS cases: a CA, the proxy's certificate, and a
// client certificate for mTLS.
type e2eTLS struct {
	ca              *tlstest.CA
	caFile          string
	certFile        string
	keyFile         string
	client          tls.Certificate
	clientDigest    string
	clientSerialHex string
}

func newE2ETLS(t *testing.T) *e2eTLS {
	ca := tlstest.NewCA(t, "e2e ca")
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, "proxy.test").WriteFiles(t, dir, "proxy")
	caFile := filepath.Join(dir, "ca.pem")
	tlstest.WriteFile(t, caFile, ca.CertPEM)
	leaf := ca.Issue(t, "client.test", "spiffe://e2e/client")
	sum := sha256.Sum256(leaf.Cert.Raw)
	return &e2eTLS{ca: ca, caFile: caFile, certFile: certFile, keyFile: keyFile, client: leaf.TLSCertificate(t),
		clientDigest: hex.EncodeToString(sum[:]), clientSerialHex: fmt.Sprintf("%x", leaf.Cert.SerialNumber)}
}

// e2eSigning is an RSA key with a signature over e2eSignedData, as the
// signature script wants them: hex DER (PKIX) and hex signature.
const e2eSignedData = "signed payload"

var e2eSigning = sync.OnceValue(func() [2]string {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		panic(err)
	}
	digest := sha256.Sum256([]byte(e2eSignedData))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		panic(err)
	}
	return [2]string{hex.EncodeToString(der), hex.EncodeToString(sig)}
})

// Front-ends and placements.
const (
	feDSL   = "sluice"
	feEnvoy = "envoy"

	atListener = "listener"
	atRoute    = "route"
)

// e2eReq is one request and what must come of it.
type e2eReq struct {
	method   string
	path     string
	header   [][2]string // in order; values may hold {placeholders}
	body     string
	trailer  map[string]string
	streamed bool // no content-length (chunked on HTTP/1.1), so trailers can go

	// What the client must get. Values may hold {placeholders}; a value
	// starting with "re:" is a regular expression; "<absent>" means the
	// header must not be there.
	status     int
	respHeader map[string]string
	respBody   *string
	respTrail  map[string]string
	maxElapsed time.Duration

	// What the upstream must have received: upName is the upstream that
	// got it ("" means none may have been asked).
	upName    string
	upHeader  map[string]string
	upBody    *string
	upTrailer map[string]string

	wantErr bool // the stream is reset: the client gets an error

	logs  []string                      // "LEVEL msg" lines that must have been logged
	after func(t *testing.T, e *e2eEnv) // more checks
}

const absent = "<absent>"

// serverName is the server header the frontend's connection manager
// writes: none for the DSL, "envoy" for the Envoy config (checkHeaders).
const serverName = "<server name>"

func str(s string) *string { return &s }

type e2eCase struct {
	name       string
	script     string   // file in lua/testdata/e2e
	frontends  []string // default both
	placements []string // default both
	protos     []string // "h1", "h2"; default both
	tls        bool     // TLS listener, client with a certificate
	h2up       bool     // the echo upstream speaks HTTP/2
	// Envoy-only config: filter_context on the filter (listener placement)
	// or the route's LuaPerRoute (route placement), route metadata.
	filterContext string // JSON object
	reqs          []e2eReq
	skip          string // a known engine issue: t.Skip with this
}

var e2eCases = []e2eCase{
	{
		name: "headers", script: "headers.lua",
		reqs: []e2eReq{{
			method: "GET", path: "/headers?q=1",
			header: [][2]string{{"x-multi", "a"}, {"x-multi", "b"}, {"x-remove", "1"}, {"x-replace", "old"}},
			status: 200,
			// setHttp1ReasonPhrase is accepted without effect (a documented
			// difference): the status line keeps the standard phrase.
			respHeader: map[string]string{"x-status": "200", "server": serverName, "x-up": "replaced",
				"x-up-multi": "a,b", "x-up-multi-n": "2", "x-up-multi-1": "b"},
			respBody: str("echo:"),
			upName:   "echo",
			upHeader: map[string]string{"x-got": "a,b", "x-idx": "b", "x-idx-missing": "nil", "x-num": "2",
				"x-num-missing": "0", "x-get-missing": "nil", "x-replace": "new", "x-fresh": "made", "x-remove": absent,
				"x-added": "1,2", "x-pairs": "2:a,b", "x-method": "GET", "x-path": "/headers?q=1", "x-multi": "a,b"},
		}},
	},
	{
		name: "body", script: "body.lua",
		reqs: []e2eReq{
			{
				method: "POST", path: "/body", body: "hello world",
				status:     200,
				respHeader: map[string]string{"x-resp-len": "26", "content-length": "28"},
				respBody:   str("[echo:rewritten:HELLO WORLD]"),
				upName:     "echo",
				upHeader:   map[string]string{"x-req-len": "11", "x-req-head": "hello"},
				upBody:     str("rewritten:HELLO WORLD"),
			},
			{
				method: "POST", path: "/body-streamed", body: strings.Repeat("abc", 30000), streamed: true,
				status:   200,
				respBody: str("[echo:rewritten:" + strings.Repeat("ABC", 30000) + "]"),
				upName:   "echo",
				upHeader: map[string]string{"x-req-len": "90000", "x-req-head": "abcab"},
				upBody:   str("rewritten:" + strings.Repeat("ABC", 30000)),
			},
			{
				method: "GET", path: "/nobody",
				status:   200,
				respBody: str("[echo:]"),
				upName:   "echo",
				upHeader: map[string]string{"x-req-nil": "true", "x-req-wrapped-len": "0"},
				upBody:   str(""),
			},
		},
	},
	{
		name: "body over an HTTP/2 upstream", script: "body.lua", h2up: true,
		reqs: []e2eReq{{
			method: "POST", path: "/body", body: "hello world",
			status:     200,
			respHeader: map[string]string{"x-resp-len": "26", "x-upstream": "echo"},
			respBody:   str("[echo:rewritten:HELLO WORLD]"),
			upName:     "echo",
			upHeader:   map[string]string{"x-req-len": "11"},
			upBody:     str("rewritten:HELLO WORLD"),
		}},
	},
	{
		name: "bodyChunks", script: "chunks.lua",
		reqs: []e2eReq{{
			method: "POST", path: "/chunks", body: strings.Repeat("a", 100<<10),
			status:     200,
			respHeader: map[string]string{"x-req-bytes": "102400", "x-req-chunked": "true"},
			respBody:   str("echo:" + strings.Repeat("b", 100<<10)),
			upName:     "echo",
			upBody:     str(strings.Repeat("A", 100<<10)),
		}},
	},
	{
		// HTTP/2 both ways: an HTTP/1.1 client gets no trailers with a
		// content-length response.
		name: "trailers", script: "trailers.lua", h2up: true, protos: []string{"h2"},
		reqs: []e2eReq{
			{
				method: "POST", path: "/trailers", body: "with trailers", streamed: true,
				header:    [][2]string{{"te", "trailers"}, {"x-up-trailers", "1"}},
				trailer:   map[string]string{"x-req-trailer": "sent"},
				status:    200,
				respBody:  str("echo:with trailers"),
				respTrail: map[string]string{"x-up-trailer": "t1", "x-lua-resp-trailer": "t1", "x-up-secret": absent},
				upName:    "echo",
				upHeader:  map[string]string{"x-req-body-len": "13"},
				upBody:    str("with trailers"),
				upTrailer: map[string]string{"x-req-trailer": "changed", "x-lua-req-trailer": "sent"},
			},
			{
				// No trailers either way: trailers() answers nil.
				method: "POST", path: "/no-trailers", body: "plain",
				status:    200,
				respBody:  str("echo:plain"),
				respTrail: map[string]string{"x-lua-resp-trailer": absent},
				upName:    "echo",
				upHeader:  map[string]string{"x-req-body-len": "5"},
				upTrailer: map[string]string{"x-lua-req-trailer": absent},
			},
		},
	},
	{
		name: "trailers after streaming", script: "trailers_wait.lua", h2up: true, protos: []string{"h2"},
		reqs: []e2eReq{{
			method: "POST", path: "/trailers", body: strings.Repeat("x", 70000), streamed: true,
			header:     [][2]string{{"te", "trailers"}, {"x-up-trailers", "1"}},
			trailer:    map[string]string{"x-req-trailer": "sent"},
			status:     200,
			respHeader: map[string]string{"x-resp-body-len": "70005"},
			respBody:   str("ECHO:" + strings.Repeat("X", 70000)),
			respTrail:  map[string]string{"x-up-trailer": "seen:t1"},
			upName:     "echo",
			upBody:     str(strings.Repeat("x", 70000)),
			upTrailer:  map[string]string{"x-req-trailer": "seen:sent"},
		}},
	},
	{
		name: "metadata", script: "metadata.lua", frontends: []string{feEnvoy},
		reqs: []e2eReq{{
			method: "GET", path: "/metadata", status: 200, upName: "echo",
			upHeader: map[string]string{"x-md-foo": "bar", "x-md-inner": "deep", "x-md-count": "3", "x-md-missing": "nil",
				"x-md-keys": "count,foo,nested"},
		}},
	},
	{
		name: "streamInfo", script: "streaminfo.lua",
		reqs: []e2eReq{{
			method: "GET", path: "/streaminfo", header: [][2]string{{"x-user", "bob"}},
			status:     200,
			respHeader: map[string]string{"x-dm-pairs": "e2e.lua=bob", "x-resp-route": "main"},
			upName:     "echo",
			upHeader: map[string]string{"x-protocol": "{proto}", "x-route": "main", "x-local": "{local}",
				"x-remote": `re:^127\.0\.0\.1:\d+$`, "x-direct-remote": `re:^127\.0\.0\.1:\d+$`, "x-sni": "",
				"x-ssl": "nil", "x-conn-ssl": "nil", "x-dm": "bob/2/b/true", "x-dm-missing": "nil", "x-fs-missing": "nil"},
		}},
	},
	{
		name: "TLS connection", script: "tls.lua", tls: true,
		reqs: []e2eReq{{
			method: "GET", path: "/tls", status: 200, upName: "echo",
			upHeader: map[string]string{"x-sni": "proxy.test", "x-conn-ssl": "true", "x-presented": "true",
				"x-validated": "true", "x-digest": "{digest}", "x-serial": "{serial}", "x-subject": "CN=client.test",
				"x-cn": "client.test", "x-dns": "client.test", "x-uri": "spiffe://e2e/client", "x-version": "TLSv1.3",
				"x-cipher": "re:^TLS_", "x-expires": "true", "x-pem": "-----BEGIN%20CERTIFICATE-----",
				"x-protocol": "{proto}"},
		}},
	},
	{
		name: "httpCall", script: "httpcall.lua",
		reqs: []e2eReq{
			{
				method: "GET", path: "/httpcall", header: [][2]string{{"authorization", "Bearer good"}, {"x-user", "mallory"}},
				status: 200, upName: "echo", respHeader: map[string]string{"x-response-call": "200 b"},
				upHeader: map[string]string{"x-user": "alice", "x-auth-body": "ok", "x-dup": "a|b", "authorization": absent},
				after: func(t *testing.T, e *e2eEnv) {
					select {
					case ev := <-e.auth.events:
						if ev != "event /httpcall" {
							t.Errorf("asynchronous call sent %q", ev)
						}
					case <-time.After(5 * time.Second):
						t.Error("the asynchronous call never reached the auth cluster")
					}
				},
			},
			{
				method: "GET", path: "/httpcall", header: [][2]string{{"authorization", "Bearer bad"}},
				status: 403, respHeader: map[string]string{"x-auth-status": "401"}, respBody: str("denied: bad token"),
			},
			{
				method: "GET", path: "/slow", header: [][2]string{{"authorization", "Bearer good"}, {"x-slow", "1"}},
				status: 200, upName: "echo",
				upHeader: map[string]string{"x-slow-status": "200 slow", "x-timeout-status": "504 upstream request timeout"},
				after:    func(t *testing.T, e *e2eEnv) { <-e.auth.events },
			},
		},
	},
	{
		name: "respond", script: "respond.lua",
		reqs: []e2eReq{
			{
				method: "POST", path: "/respond", header: [][2]string{{"x-deny", "1"}}, body: "ignored",
				status:     418,
				respHeader: map[string]string{"x-lua": "teapot", "set-cookie": "a=1,b=2", "content-length": "15"},
				respBody:   str("short and stout"),
			},
			{
				method: "GET", path: "/respond", status: 200, upName: "echo",
				respHeader: map[string]string{"x-response-ran": "yes"},
			},
		},
	},
	{
		// Envoy raises "respond not currently supported in the response
		// path"; a script error is a 500 in Sluice.
		name: "respond on the response path", script: "respond_response.lua",
		reqs: []e2eReq{{
			method: "GET", path: "/late", status: 500, respBody: str("lua: script error\n"), upName: "echo",
			logs: []string{"ERROR lua: script failed"},
		}},
	},
	{
		name: "clearRouteCache", script: "routecache.lua",
		reqs: []e2eReq{
			{
				method: "GET", path: "/rc", header: [][2]string{{"x-go-beta", "1"}},
				status: 200, respHeader: map[string]string{"x-upstream": "beta"}, upName: "beta",
				upHeader: map[string]string{"x-route": "beta"},
			},
			{
				method: "GET", path: "/rc", status: 200, respHeader: map[string]string{"x-upstream": "echo"}, upName: "echo",
				upHeader: map[string]string{"x-route": absent},
			},
		},
	},
	{
		name: "filterContext", script: "filtercontext.lua", frontends: []string{feEnvoy}, placements: []string{atListener},
		filterContext: `{"greeting": "hello", "n": 1, "list": ["a", "b"]}`,
		reqs: []e2eReq{{
			method: "GET", path: "/ctx", status: 200, upName: "echo",
			upHeader: map[string]string{"x-ctx-greeting": "hello", "x-ctx-n": "1", "x-ctx-list": "a,b", "x-ctx-missing": "nil"},
		}},
	},
	{
		name: "filterContext per route", script: "filtercontext.lua", frontends: []string{feEnvoy}, placements: []string{atRoute},
		filterContext: `{"greeting": "per-route", "n": 2}`,
		reqs: []e2eReq{{
			method: "GET", path: "/ctx", status: 200, upName: "echo",
			upHeader: map[string]string{"x-ctx-greeting": "per-route", "x-ctx-n": "2", "x-ctx-list": "nil", "x-ctx-missing": "nil"},
		}},
	},
	{
		name: "filterContext empty", script: "filtercontext.lua", frontends: []string{feDSL},
		reqs: []e2eReq{{
			method: "GET", path: "/ctx", status: 200, upName: "echo",
			upHeader: map[string]string{"x-ctx-greeting": "nil", "x-ctx-n": "nil", "x-ctx-list": "nil"},
		}},
	},
	{
		name: "log", script: "log.lua",
		reqs: []e2eReq{{
			method: "GET", path: "/log", status: 200, upName: "echo",
			logs: []string{"DEBUG-4 e2e trace", "DEBUG e2e debug", "INFO e2e info", "WARN e2e warn", "ERROR e2e err",
				"ERROR+4 e2e critical", "INFO e2e from headers", "INFO e2e response 200"},
		}},
	},
	{
		name: "timestamps and base64", script: "helpers.lua",
		reqs: []e2eReq{{
			method: "GET", path: "/helpers", header: [][2]string{{"x-raw", "hello world"}},
			status: 200, upName: "echo",
			upHeader: map[string]string{"x-ts": `re:^\d{13}$`, "x-ts-ms": `re:^\d{13}$`, "x-tss": `re:^\d{13}$`,
				"x-tss-us": `re:^\d{16}$`, "x-b64": "aGVsbG8gd29ybGQ=", "x-b64-bin": "AAEC/w=="},
			after: func(t *testing.T, e *e2eEnv) {
				var ms int64
				fmt.Sscan(e.lastUp.header.Get("X-Ts"), &ms)
				if d := time.Since(time.UnixMilli(ms)); d < -time.Minute || d > time.Minute {
					t.Errorf("timestamp() is %v away from now", d)
				}
			},
		}},
	},
	{
		name: "verifySignature", script: "signature.lua",
		reqs: []e2eReq{
			{
				method: "GET", path: "/signed",
				header: [][2]string{{"x-key", "{key}"}, {"x-sig", "{sig}"}, {"x-data", e2eSignedData}},
				status: 200, upName: "echo",
				upHeader: map[string]string{"x-verified": "true", "x-tampered": "false/Failed to verify digest. Error code: 0",
					"x-sig": absent, "x-key": absent},
			},
			{
				method: "GET", path: "/forged",
				header: [][2]string{{"x-key", "{key}"}, {"x-sig", "{sig}"}, {"x-data", "forged payload"}},
				status: 401, respBody: str("bad signature: Failed to verify digest. Error code: 0"),
			},
		},
	},
	{
		name: "errors and sandbox", script: "errors.lua",
		reqs: []e2eReq{
			{method: "GET", path: "/e", header: [][2]string{{"x-do", "error"}}, status: 500, respBody: str("lua: script error\n")},
			{method: "GET", path: "/e", status: 200, upName: "echo", upHeader: map[string]string{"x-ok": "1"}},
			{method: "GET", path: "/e", header: [][2]string{{"x-do", "nil-index"}}, status: 500, respBody: str("lua: script error\n")},
			{
				method: "GET", path: "/e", header: [][2]string{{"x-do", "loop"}}, status: 500,
				respBody: str("lua: script exceeded its time budget\n"), maxElapsed: 3 * time.Second,
			},
			{method: "GET", path: "/e", status: 200, upName: "echo", upHeader: map[string]string{"x-ok": "1"}},
			{
				method: "GET", path: "/e", header: [][2]string{{"x-do", "response-loop"}}, status: 500,
				respBody: str("lua: script exceeded its time budget\n"), maxElapsed: 3 * time.Second, upName: "echo",
			},
			{method: "GET", path: "/e", header: [][2]string{{"x-do", "late-error"}}, upName: "echo", wantErr: true},
			{method: "GET", path: "/e", header: [][2]string{{"x-do", "io"}, {"x-marker", "{marker}"}}, status: 500, respBody: str("lua: script error\n")},
			{method: "GET", path: "/e", header: [][2]string{{"x-do", "os"}, {"x-marker", "{marker}"}}, status: 500, respBody: str("lua: script error\n")},
			{method: "GET", path: "/e", header: [][2]string{{"x-do", "require"}, {"x-marker", "{marker}"}}, status: 500, respBody: str("lua: script error\n")},
			{method: "GET", path: "/e", header: [][2]string{{"x-do", "loadstring"}, {"x-marker", "{marker}"}}, status: 500, respBody: str("lua: script error\n")},
			{
				method: "GET", path: "/e", status: 200, upName: "echo", upHeader: map[string]string{"x-ok": "1"},
				after: func(t *testing.T, e *e2eEnv) {
					if _, err := os.Stat(e.marker); !os.IsNotExist(err) {
						t.Errorf("a sandboxed script reached the file system: %s: %v", e.marker, err)
					}
				},
			},
		},
	},
}

// e2eEnv is one running proxy for one case, front-end and placement.
type e2eEnv struct {
	echo, beta *e2eUpstream
	auth       *e2eAuth
	logs       *logCapture
	srv        *server.Server
	addr       string
	marker     string
	lastUp     *e2eSeen
	tls        *e2eTLS
	fe         string // feDSL or feEnvoy
}

func TestLuaE2E(t *testing.T) {
	scripts, err := filepath.Abs("../../lua/testdata/e2e")
	if err != nil {
		t.Fatal(err)
	}
	for _, fe := range []string{feDSL, feEnvoy} {
		t.Run(fe, func(t *testing.T) {
			t.Parallel()
			for _, tc := range e2eCases {
				if len(tc.frontends) > 0 && !contains(tc.frontends, fe) {
					continue
				}
				placements := tc.placements
				if len(placements) == 0 {
					placements = []string{atListener, atRoute}
				}
				for _, at := range placements {
					t.Run(tc.name+"/"+at, func(t *testing.T) {
						t.Parallel()
						if tc.skip != "" {
							t.Skip(tc.skip)
						}
						runE2ECase(t, fe, at, filepath.Join(scripts, tc.script), &tc)
					})
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func runE2ECase(t *testing.T, fe, at, script string, tc *e2eCase) {
	e := &e2eEnv{
		echo: &e2eUpstream{name: "echo"}, beta: &e2eUpstream{name: "beta"},
		auth: &e2eAuth{events: make(chan string, 4)}, logs: &logCapture{},
		marker: filepath.Join(t.TempDir(), "escaped"), fe: fe,
	}
	var echoAddr string
	if tc.h2up {
		echoAddr = h2cUpstream(t, e.echo.ServeHTTP)
	} else {
		echoAddr = newUpstream(t, e.echo.ServeHTTP).addr()
	}
	p := e2eParams{
		Echo: echoAddr, Beta: newUpstream(t, e.beta.ServeHTTP).addr(), Auth: newUpstream(t, e.auth.ServeHTTP).addr(),
		H2Up: tc.h2up, Route: at == atRoute, Script: script, FilterContext: tc.filterContext,
	}
	if tc.tls {
		e.tls = newE2ETLS(t)
		p.TLS, p.Cert, p.Key, p.CA = true, e.tls.certFile, e.tls.keyFile, e.tls.caFile
	}
	snap := e2eSnapshot(t, fe, p)
	snap.Admin = nil
	snap.Listeners[0].Address = "127.0.0.1:0"
	// As startServer, with a logger that keeps what the scripts log.
	stats := observe.NewStore()
	srv := server.New(server.Options{Registry: builtins(stats), Stats: stats, Log: slog.New(captureHandler{e.logs}),
		AdminAddress: "127.0.0.1:0", DrainTimeout: time.Second})
	if err := srv.Apply(snap); err != nil {
		t.Fatalf("apply: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	t.Cleanup(func() {
		if t.Failed() {
			e.logs.mu.Lock()
			defer e.logs.mu.Unlock()
			for _, r := range e.logs.full {
				if !strings.HasPrefix(r, "DEBUG") {
					t.Logf("proxy log: %s", r)
				}
			}
		}
	})
	e.srv = srv
	e.addr = srv.ListenerAddr("main").String()

	protos := tc.protos
	if len(protos) == 0 {
		protos = []string{"h1", "h2"}
	}
	for _, proto := range protos {
		client := e2eClient(t, proto, e.tls)
		for i := range tc.reqs {
			r := &tc.reqs[i]
			if !t.Run(fmt.Sprintf("%s/%d%s", proto, i, r.path), func(t *testing.T) { e.do(t, client, proto, r) }) {
				return
			}
		}
	}
}

// e2eClient speaks proto ("h1" or "h2") to the proxy, over TLS when pki is
// set; its connections are closed before the proxy stops.
func e2eClient(t *testing.T, proto string, pki *e2eTLS) *http.Client {
	var rt http.RoundTripper
	switch {
	case pki != nil:
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.ca.Pool(), ServerName: "proxy.test",
			Certificates: []tls.Certificate{pki.client}, NextProtos: []string{map[string]string{"h1": "http/1.1", "h2": "h2"}[proto]}},
			ForceAttemptHTTP2: proto == "h2"}
		t.Cleanup(tr.CloseIdleConnections)
		rt = tr
	case proto == "h2":
		c := h2cClient()
		if ci, ok := c.Transport.(interface{ CloseIdleConnections() }); ok {
			t.Cleanup(ci.CloseIdleConnections)
		}
		rt = c.Transport
	default:
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		rt = tr
	}
	return &http.Client{Transport: rt, Timeout: 10 * time.Second}
}

func (e *e2eEnv) expand(s, proto string) string {
	if !strings.Contains(s, "{") {
		return s
	}
	pairs := []string{
		"{proto}", map[string]string{"h1": "HTTP/1.1", "h2": "HTTP/2"}[proto],
		"{local}", e.addr,
		"{marker}", e.marker,
	}
	if strings.Contains(s, "{key}") || strings.Contains(s, "{sig}") {
		ks := e2eSigning()
		pairs = append(pairs, "{key}", ks[0], "{sig}", ks[1])
	}
	if e.tls != nil {
		pairs = append(pairs, "{digest}", e.tls.clientDigest, "{serial}", e.tls.clientSerialHex)
	}
	return strings.NewReplacer(pairs...).Replace(s)
}

func (e *e2eEnv) do(t *testing.T, client *http.Client, proto string, r *e2eReq) {
	scheme := "http"
	if e.tls != nil {
		scheme = "https"
	}
	var body io.Reader = http.NoBody
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	req, err := http.NewRequest(r.method, scheme+"://"+e.addr+r.path, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range r.header {
		req.Header.Add(kv[0], e.expand(kv[1], proto))
	}
	if r.streamed {
		req.ContentLength = -1
		req.Body = io.NopCloser(body)
	}
	if len(r.trailer) > 0 {
		req.Trailer = http.Header{}
		for k, v := range r.trailer {
			req.Trailer.Set(k, v)
		}
	}
	echoBefore, betaBefore := e.echo.count(), e.beta.count()
	start := time.Now()
	resp, err := client.Do(req)
	var got []byte
	if err == nil {
		got, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	elapsed := time.Since(start)
	if r.wantErr {
		if err == nil {
			t.Errorf("got %d %q, want a reset stream", resp.StatusCode, truncate(string(got)))
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if r.maxElapsed > 0 && elapsed > r.maxElapsed {
		t.Errorf("took %v, want at most %v", elapsed, r.maxElapsed)
	}
	if resp.StatusCode != r.status {
		t.Errorf("status %d, want %d (body %q)", resp.StatusCode, r.status, truncate(string(got)))
	}
	if r.respBody != nil && string(got) != *r.respBody {
		t.Errorf("body %q, want %q", truncate(string(got)), truncate(*r.respBody))
	}
	if cl := resp.Header.Get("Content-Length"); cl != "" && cl != fmt.Sprint(len(got)) {
		t.Errorf("content-length %s for a body of %d bytes", cl, len(got))
	}
	e.checkHeaders(t, "response header", resp.Header, r.respHeader, proto)
	if resp.ContentLength >= 0 && r.respHeader["content-length"] != "" {
		e.checkValue(t, "response header content-length", fmt.Sprint(resp.ContentLength), r.respHeader["content-length"], proto)
	}
	e.checkHeaders(t, "response trailer", resp.Trailer, r.respTrail, proto)
	if os.Getenv("E2E_DEBUG") != "" {
		t.Logf("response %v %v trailer %v", resp.Status, resp.Header, resp.Trailer)
	}

	echoNew, betaNew := e.echo.count()-echoBefore, e.beta.count()-betaBefore
	var up *e2eSeen
	switch r.upName {
	case "":
		if echoNew+betaNew != 0 {
			t.Errorf("the upstream was asked %d times, want never", echoNew+betaNew)
		}
	case "echo":
		up = e.echo.last()
		if echoNew != 1 || betaNew != 0 {
			t.Errorf("echo got %d requests and beta %d, want echo 1", echoNew, betaNew)
			up = nil
		}
	case "beta":
		up = e.beta.last()
		if betaNew != 1 || echoNew != 0 {
			t.Errorf("beta got %d requests and echo %d, want beta 1", betaNew, echoNew)
			up = nil
		}
	}
	if up != nil {
		e.lastUp = up
		if os.Getenv("E2E_DEBUG") != "" {
			t.Logf("upstream saw %s %s %v trailer %v", up.proto, up.path, up.header, up.trailer)
		}
		e.checkHeaders(t, "upstream header", up.header, r.upHeader, proto)
		if r.upBody != nil && up.body != *r.upBody {
			t.Errorf("upstream body %q, want %q", truncate(up.body), truncate(*r.upBody))
		}
		e.checkHeaders(t, "upstream trailer", up.trailer, r.upTrailer, proto)
		if up.method != r.method {
			t.Errorf("upstream method %s, want %s", up.method, r.method)
		}
	}
	for _, l := range r.logs {
		if !e.logs.has(l) {
			t.Errorf("not logged: %q", l)
		}
	}
	if r.after != nil && !t.Failed() {
		r.after(t, e)
	}
}

func (e *e2eEnv) checkHeaders(t *testing.T, what string, h http.Header, want map[string]string, proto string) {
	t.Helper()
	for k, w := range want {
		if k == "content-length" {
			continue // checked on the parsed length
		}
		if w == serverName {
			// The HCM's server_name (Envoy's default "envoy") is
			// written over the server header after the filters, as
			// Envoy does: a filter cannot remove it. The DSL sets none.
			w = absent
			if e.fe == feEnvoy {
				w = "envoy"
			}
		}
		vals := h.Values(k)
		if w == absent {
			if len(vals) > 0 {
				t.Errorf("%s %s = %q, want none", what, k, vals)
			}
			continue
		}
		if len(vals) == 0 && w != "" {
			t.Errorf("%s %s missing, want %q", what, k, e.expand(w, proto))
			continue
		}
		e.checkValue(t, what+" "+k, strings.Join(vals, ","), w, proto)
	}
}

func (e *e2eEnv) checkValue(t *testing.T, what, got, want, proto string) {
	t.Helper()
	want = e.expand(want, proto)
	if re, ok := strings.CutPrefix(want, "re:"); ok {
		if !regexp.MustCompile(re).MatchString(got) {
			t.Errorf("%s = %q, want a match of %q", what, got, re)
		}
		return
	}
	if got != want {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

func truncate(s string) string {
	if len(s) > 80 {
		return fmt.Sprintf("%s...(%d bytes)", s[:80], len(s))
	}
	return s
}

// Config generation.

type e2eParams struct {
	Echo, Beta, Auth string
	H2Up             bool
	Route            bool // the script runs per route, not for the listener
	Script           string
	TLS              bool
	Cert, Key, CA    string
	FilterContext    string
}

const e2eDSL = `# generated by TestLuaE2E
upstream echo {
  endpoint {{.Echo}}
{{- if .H2Up}}
  protocol http2
{{- end}}
}

upstream beta {
  endpoint {{.Beta}}
}

upstream auth {
  endpoint {{.Auth}}
}

listener main 127.0.0.1:8080 {
{{- if .TLS}}
  tls {
    cert {{q .Cert}} key {{q .Key}}
    client_ca {{q .CA}}
  }
{{- end}}
{{- if not .Route}}
  lua {{q .Script}}
{{- end}}
  route beta when request.headers["x-route"] == "beta" {
    proxy beta
  }
  route main {
{{- if .Route}}
    lua {{q .Script}}
{{- end}}
    proxy echo
  }
}
`

const e2eBootstrap = `# generated by TestLuaE2E
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: 8080 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: e2e
          codec_type: AUTO
          route_config:
            name: e2e
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - name: beta
                match:
                  prefix: /
                  headers:
                  - name: x-route
                    string_match: { exact: beta }
                route: { cluster: beta }
              - name: main
                match: { prefix: / }
                route: { cluster: echo }
                metadata:
                  filter_metadata:
                    envoy.filters.http.lua:
                      foo: bar
                      count: 3
                      nested: { inner: deep }
{{- if .Route}}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code: { inline_string: {{source .Script}} }
{{- if .FilterContext}}
                    filter_context: {{.FilterContext}}
{{- end}}
{{- end}}
          http_filters:
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
{{- if not .Route}}
              default_source_code: { filename: {{q .Script}} }
{{- if .FilterContext}}
              filter_context: {{.FilterContext}}
{{- end}}
{{- end}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{{- if .TLS}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: { filename: {{q .Cert}} }
              private_key: { filename: {{q .Key}} }
            validation_context:
              trusted_ca: { filename: {{q .CA}} }
{{- end}}

  clusters:
{{- range $name, $addr := clusters .}}
  - name: {{$name}}
    type: STATIC
    connect_timeout: 1s
{{- if and (eq $name "echo") $.H2Up}}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
{{- end}}
    load_assignment:
      cluster_name: {{$name}}
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: {{host $addr}}, port_value: {{port $addr}} } } }
{{- end}}
`

var e2eFuncs = template.FuncMap{
	"q": func(s string) string { b, _ := json.Marshal(s); return string(b) },
	"source": func(path string) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		q, _ := json.Marshal(string(b))
		return string(q), nil
	},
	"clusters": func(p e2eParams) map[string]string {
		return map[string]string{"echo": p.Echo, "beta": p.Beta, "auth": p.Auth}
	},
	"host": func(a string) string { h, _, _ := net.SplitHostPort(a); return h },
	"port": func(a string) string { _, p, _ := net.SplitHostPort(a); return p },
}

// e2eSnapshot writes the config for front-end fe into a temporary
// directory and loads it as `sluice run` would.
func e2eSnapshot(t *testing.T, fe string, p e2eParams) *config.Snapshot {
	t.Helper()
	src, name := e2eDSL, "e2e.sluice"
	if fe == feEnvoy {
		src, name = e2eBootstrap, "envoy.yaml"
	}
	var b strings.Builder
	if err := template.Must(template.New(name).Funcs(e2eFuncs).Parse(src)).Execute(&b, p); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if fe == feEnvoy {
		snap, err := xds.LoadBootstrapFile(path)
		if err != nil {
			t.Fatalf("%v\n%s", err, b.String())
		}
		return snap
	}
	res, err := loadDSL(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	return res.Snapshot
}

// TestLuaE2EConcurrent: streams that share a script's pooled states see
// only their own headers, globals and dynamic metadata, over both
// protocols at once.
func TestLuaE2EConcurrent(t *testing.T) {
	scripts, err := filepath.Abs("../../lua/testdata/e2e")
	if err != nil {
		t.Fatal(err)
	}
	e := &e2eEnv{echo: &e2eUpstream{name: "echo"}, beta: &e2eUpstream{name: "beta"}, logs: &logCapture{}}
	p := e2eParams{Echo: newUpstream(t, e.echo.ServeHTTP).addr(), Beta: newUpstream(t, e.beta.ServeHTTP).addr(),
		Auth: newUpstream(t, nil).addr(), Script: filepath.Join(scripts, "streaminfo.lua")}
	for _, fe := range []string{feDSL, feEnvoy} {
		t.Run(fe, func(t *testing.T) {
			snap := e2eSnapshot(t, fe, p)
			snap.Admin = nil
			snap.Listeners[0].Address = "127.0.0.1:0"
			srv := startServer(t, snap)
			url := proxyURL(srv) + "/concurrent"
			var wg sync.WaitGroup
			errs := make(chan string, 64)
			for w := range 8 {
				client := e2eClient(t, []string{"h1", "h2"}[w%2], nil)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 10 {
						user := fmt.Sprintf("user-%d-%d", w, i)
						req, _ := http.NewRequest("GET", url, nil)
						req.Header.Set("x-user", user)
						resp, err := client.Do(req)
						if err != nil {
							errs <- err.Error()
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if got := resp.Header.Get("x-dm-pairs"); resp.StatusCode != 200 || got != "e2e.lua="+user {
							errs <- fmt.Sprintf("%s: status %d, x-dm-pairs %q", user, resp.StatusCode, got)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Error(e)
			}
		})
	}
}
