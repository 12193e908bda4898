package lua

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	glua "github.com/yuin/gopher-lua"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// objects are a state's handle objects: userdata made once per state whose
// values are pointed at the stream being served, so a request builds no
// Lua objects unless the script asks for one (a body, a table).
type objects struct {
	bodyChunks glua.LValue // Lua: the iterator factory

	handles    [2]*glua.LUserData
	headers    [2][2]*glua.LUserData // [direction][headers, trailers]
	streamInfo *glua.LUserData
	dynMeta    *glua.LUserData
	filterSt   *glua.LUserData
	metadata   *glua.LUserData
	connection *glua.LUserData
	ssl        *glua.LUserData

	mtBuffer, mtPubKey, mtContext *glua.LTable
}

func (o *objects) bind(f *filter) {
	for i := range o.handles {
		d := &f.dirs[i]
		o.handles[i].Value = d
		o.headers[i][0].Value = &d.hdr
		o.headers[i][1].Value = &d.trl
	}
	for _, u := range []*glua.LUserData{o.streamInfo, o.dynMeta, o.filterSt, o.metadata, o.connection, o.ssl} {
		u.Value = f
	}
}

func (o *objects) unbind() {
	for i := range o.handles {
		o.handles[i].Value = nil
		o.headers[i][0].Value = nil
		o.headers[i][1].Value = nil
	}
	for _, u := range []*glua.LUserData{o.streamInfo, o.dynMeta, o.filterSt, o.metadata, o.connection, o.ssl} {
		u.Value = nil
	}
}

type methods map[string]glua.LGFunction

// class makes a metatable whose methods are the given Go functions, the
// Lua functions in lm and the log* family Envoy puts on every object; meta
// holds further metamethods.
func (v *vm) class(m methods, lm, meta map[string]glua.LValue) *glua.LTable {
	L := v.L
	idx := L.NewTable()
	for name, fn := range m {
		idx.RawSetString(name, L.NewFunction(fn))
	}
	for name, lvl := range logLevels {
		idx.RawSetString(name, L.NewFunction(v.logAt(lvl)))
	}
	mt := L.NewTable()
	mt.RawSetString("__index", idx)
	mt.RawSetString("__metatable", glua.LString("protected"))
	for k, val := range lm {
		idx.RawSetString(k, val)
	}
	for k, val := range meta {
		mt.RawSetString(k, val)
	}
	return mt
}

func (v *vm) object(mt *glua.LTable) *glua.LUserData {
	u := v.L.NewUserData()
	u.Metatable = mt
	return u
}

func (v *vm) buildObjects() {
	L := v.L
	o := &v.objs
	mtHandle := v.class(methods{
		"headers":                 v.hHeaders,
		"body":                    v.hBody,
		"trailers":                v.hTrailers,
		"metadata":                v.hMetadata,
		"streamInfo":              v.hStreamInfo,
		"connection":              v.hConnection,
		"httpCall":                v.hHTTPCall,
		"respond":                 v.hRespond,
		"clearRouteCache":         v.hClearRouteCache,
		"filterContext":           v.hFilterContext,
		"log":                     v.hLog,
		"timestamp":               v.hTimestamp,
		"timestampString":         v.hTimestampString,
		"base64Escape":            v.hBase64Escape,
		"importPublicKey":         v.hImportPublicKey,
		"verifySignature":         v.hVerifySignature,
		"setUpstreamOverrideHost": v.hUnsupported("setUpstreamOverrideHost"),
		"connectionStreamInfo":    v.hUnsupported("connectionStreamInfo"),
	}, map[string]glua.LValue{"bodyChunks": o.bodyChunks}, nil)
	mtHeaders := v.class(methods{
		"get":                  v.hdrGet,
		"getAtIndex":           v.hdrGetAtIndex,
		"getNumValues":         v.hdrGetNumValues,
		"add":                  v.hdrAdd,
		"replace":              v.hdrReplace,
		"remove":               v.hdrRemove,
		"setHttp1ReasonPhrase": v.hdrSetReason,
	}, nil, map[string]glua.LValue{"__pairs": L.NewFunction(v.hdrPairs)})
	for i := range o.handles {
		o.handles[i] = v.object(mtHandle)
		o.headers[i][0] = v.object(mtHeaders)
		o.headers[i][1] = v.object(mtHeaders)
	}
	o.mtBuffer = v.class(methods{"length": v.bufLength, "getBytes": v.bufGetBytes, "setBytes": v.bufSetBytes}, nil, nil)
	o.streamInfo = v.object(v.class(methods{
		"protocol":                      v.siProtocol,
		"routeName":                     v.siRouteName,
		"virtualClusterName":            func(L *glua.LState) int { L.Push(glua.LString("")); return 1 },
		"downstreamLocalAddress":        v.siLocal,
		"downstreamDirectLocalAddress":  v.siLocal,
		"downstreamRemoteAddress":       v.siRemote,
		"downstreamDirectRemoteAddress": v.siRemote,
		"requestedServerName":           v.siSNI,
		"dynamicMetadata":               func(L *glua.LState) int { L.Push(v.objs.dynMeta); return 1 },
		"filterState":                   func(L *glua.LState) int { L.Push(v.objs.filterSt); return 1 },
		"downstreamSslConnection":       v.hSSL,
		"dynamicTypedMetadata":          func(L *glua.LState) int { L.Push(glua.LNil); return 1 },
	}, nil, nil))
	o.dynMeta = v.object(v.class(methods{"get": v.dmGet, "set": v.dmSet}, nil, map[string]glua.LValue{"__pairs": L.NewFunction(v.dmPairs)}))
	o.filterSt = v.object(v.class(methods{"get": v.fsGet}, nil, nil))
	o.metadata = v.object(v.class(methods{"get": v.mdGet}, nil, map[string]glua.LValue{"__pairs": L.NewFunction(v.mdPairs)}))
	o.connection = v.object(v.class(methods{"ssl": v.hSSL}, nil, nil))
	o.ssl = v.object(v.sslClass())
	o.mtPubKey = v.class(nil, nil, nil)
	// filterContext() tables also answer :get(key), as the proto's example does.
	ctxIdx := L.NewTable()
	ctxIdx.RawSetString("get", L.NewFunction(func(L *glua.LState) int {
		L.Push(L.CheckTable(1).RawGet(L.CheckAny(2)))
		return 1
	}))
	o.mtContext = L.NewTable()
	o.mtContext.RawSetString("__index", ctxIdx)
}

// Lookups of the stream behind an object. A handle kept past its stream
// (in an upvalue) finds no stream and raises an error.

func (v *vm) dir(L *glua.LState) *direction {
	if u, ok := L.Get(1).(*glua.LUserData); ok {
		if d, ok := u.Value.(*direction); ok && d.f == v.f && d.f != nil {
			return d
		}
	}
	L.RaiseError("stream handle used outside of its stream")
	return nil
}

func (v *vm) stream(L *glua.LState) *filter {
	if u, ok := L.Get(1).(*glua.LUserData); ok {
		if f, ok := u.Value.(*filter); ok && f == v.f && f != nil {
			return f
		}
	}
	L.RaiseError("object used outside of its stream")
	return nil
}

// waitable raises an error when the running code cannot be suspended:
// the handle's own thread is the only one the filter resumes.
func waitable(L *glua.LState, d *direction, what string) {
	if d.responded {
		L.RaiseError("%s cannot be called after respond()", what)
	}
	if L != d.th {
		L.RaiseError("%s cannot wait inside a coroutine the script created", what)
	}
}

// Stream handle.

func (v *vm) hHeaders(L *glua.LState) int {
	d := v.dir(L)
	L.Push(v.objs.headers[d.idx][0])
	return 1
}

func (v *vm) hBody(L *glua.LState) int {
	d := v.dir(L)
	alwaysWrap := L.ToBool(2)
	switch {
	case d.body != nil && d.body.valid:
		L.Push(d.body.ud)
		return 1
	case d.buffered || d.streamed:
		L.RaiseError("body() cannot be called after the body was forwarded")
	case d.ended:
		// No body at all.
		if !alwaysWrap {
			L.Push(glua.LNil)
			return 1
		}
		d.body = v.newBuffer(d, nil)
		L.Push(d.body.ud)
		return 1
	}
	waitable(L, d, "body()")
	d.wait = waitBody
	return L.Yield()
}

// nextChunk is bodyChunks()'s iterator step: the next chunk, or nil at the
// end of the body.
func (v *vm) nextChunk(L *glua.LState) int {
	d := v.dir(L)
	if d.ended || d.buffered {
		L.Push(glua.LNil)
		return 1
	}
	waitable(L, d, "bodyChunks()")
	d.wait = waitChunk
	return L.Yield()
}

func (v *vm) hTrailers(L *glua.LState) int {
	d := v.dir(L)
	if d.trailersDone {
		if d.trailers == nil || d.trailers.Len() == 0 {
			L.Push(glua.LNil)
		} else {
			L.Push(v.objs.headers[d.idx][1])
		}
		return 1
	}
	waitable(L, d, "trailers()")
	d.wait = waitTrailers
	return L.Yield()
}

func (v *vm) hMetadata(L *glua.LState) int {
	v.dir(L)
	L.Push(v.objs.metadata)
	return 1
}

func (v *vm) hStreamInfo(L *glua.LState) int {
	v.dir(L)
	L.Push(v.objs.streamInfo)
	return 1
}

func (v *vm) hConnection(L *glua.LState) int {
	v.dir(L)
	L.Push(v.objs.connection)
	return 1
}

func (v *vm) hClearRouteCache(L *glua.LState) int {
	v.dir(L).f.cb.ClearRouteCache()
	return 0
}

func (v *vm) hFilterContext(L *glua.LState) int {
	f := v.dir(L).f
	t := L.NewTable()
	if f.fctx != nil {
		for k, val := range f.fctx.GetFields() {
			t.RawSetString(k, structValueToLua(L, val, 0))
		}
	}
	L.SetMetatable(t, v.objs.mtContext)
	L.Push(t)
	return 1
}

func (v *vm) hUnsupported(name string) glua.LGFunction {
	return func(L *glua.LState) int {
		L.RaiseError("%s() is not supported by sluice", name)
		return 0
	}
}

func (v *vm) hRespond(L *glua.LState) int {
	d := v.dir(L)
	if d.idx != reqDir {
		L.RaiseError("respond() is only valid in the request flow")
	}
	if d.headersSent {
		L.RaiseError("respond() cannot be called after the headers were forwarded")
	}
	ht := L.CheckTable(2)
	body := ""
	if L.Get(3) != glua.LNil {
		body = L.CheckString(3)
	}
	status := 0
	var fields []header.Field
	var bad error
	forEachHeader(ht, func(name, value string) {
		if name == ":status" {
			n, err := strconv.Atoi(value)
			if err != nil || n < 100 || n > 999 {
				bad = fmt.Errorf("respond() :status %q is not a valid status code", value)
			}
			status = n
			return
		}
		fields = append(fields, header.Field{Name: name, Value: value})
	}, func(err error) { bad = err })
	if bad != nil {
		L.RaiseError("%s", bad.Error())
	}
	if status == 0 {
		L.RaiseError("respond() requires a :status header")
	}
	if d.responded {
		L.RaiseError("respond() was already called")
	}
	d.f.cb.SendLocalReply(status, body, fields, "lua_respond")
	d.responded = true
	d.wait = waitResponded
	if L != d.th {
		// Inside pcall or a script coroutine the handler cannot be
		// suspended; the reply stands and the code goes on.
		return 0
	}
	return L.Yield()
}

// forEachHeader walks a Lua header table (values are strings or lists of
// strings), pseudo-headers first, the rest sorted for a stable order.
func forEachHeader(t *glua.LTable, fn func(name, value string), bad func(error)) {
	var names []string
	t.ForEach(func(k, _ glua.LValue) {
		if s, ok := k.(glua.LString); ok {
			names = append(names, string(s))
		} else {
			bad(fmt.Errorf("header names must be strings, got %s", k.Type()))
		}
	})
	sort.Slice(names, func(i, j int) bool {
		pi, pj := strings.HasPrefix(names[i], ":"), strings.HasPrefix(names[j], ":")
		if pi != pj {
			return pi
		}
		return names[i] < names[j]
	})
	for _, n := range names {
		switch val := t.RawGetString(n).(type) {
		case glua.LString:
			fn(n, string(val))
		case glua.LNumber:
			fn(n, val.String())
		case *glua.LTable:
			for i := 1; i <= val.MaxN(); i++ {
				if s, ok := val.RawGetInt(i).(glua.LString); ok {
					fn(n, string(s))
				} else if num, ok := val.RawGetInt(i).(glua.LNumber); ok {
					fn(n, num.String())
				} else {
					bad(fmt.Errorf("header %q: values must be strings", n))
				}
			}
		default:
			bad(fmt.Errorf("header %q: value must be a string or a table of strings", n))
		}
	}
}

// asyncCallTimeout bounds a fire-and-forget httpCall that set no timeout.
const asyncCallTimeout = 30 * time.Second

func (v *vm) hHTTPCall(L *glua.LState) int {
	d := v.dir(L)
	f := d.f
	cluster := L.CheckString(2)
	ht := L.CheckTable(3)
	var body []byte
	if L.Get(4) != glua.LNil {
		body = []byte(L.CheckString(4))
	}
	var timeoutMS int64
	async, dupHeaders := false, false
	switch opt := L.Get(5).(type) {
	case *glua.LTable:
		if n, ok := opt.RawGetString("timeout_ms").(glua.LNumber); ok {
			timeoutMS = int64(n)
		}
		async = glua.LVAsBool(opt.RawGetString("asynchronous"))
		dupHeaders = glua.LVAsBool(opt.RawGetString("return_duplicate_headers"))
	case glua.LNumber:
		timeoutMS = int64(opt)
		async = glua.LVAsBool(L.Get(6))
	case *glua.LNilType:
	default:
		L.ArgError(5, "timeout in milliseconds or an options table expected")
	}
	if timeoutMS < 0 {
		L.RaiseError("http call timeout must be >= 0")
	}
	if cluster == "" {
		L.RaiseError("http call cluster invalid. Must be configured")
	}
	h := &header.Map{}
	var bad error
	forEachHeader(ht, func(name, value string) { h.Add(name, value) }, func(err error) { bad = err })
	if bad != nil {
		L.RaiseError("http call: %s", bad.Error())
	}
	if !h.Has(":path") || !h.Has(":method") || !h.Has(":authority") {
		L.RaiseError("http call headers must include ':path', ':method', and ':authority'")
	}
	timeout := time.Duration(timeoutMS) * time.Millisecond
	if async {
		// Fire and forget, as Envoy: the stream does not wait and the
		// result is dropped; the call may outlive the stream.
		cb := f.cb
		ctx := context.WithoutCancel(cb.Context())
		limit := timeout
		if limit <= 0 {
			limit = asyncCallTimeout
		}
		go func() {
			ctx, cancel := context.WithTimeout(ctx, limit)
			defer cancel()
			if _, err := cb.HTTPCall(ctx, cluster, h, body, timeout); err != nil {
				cb.Logger().Debug("lua: asynchronous http call failed", "filter", FilterName, "cluster", cluster, "error", err.Error())
			}
		}()
		return 0
	}
	// Waiting for the upstream is not script time.
	v.budget.pause()
	resp, err := f.cb.HTTPCall(f.cb.Context(), cluster, h, body, timeout)
	v.budget.resume()
	if err != nil {
		switch {
		case errors.Is(err, proxy.ErrUnknownCluster):
			L.RaiseError("http call cluster invalid. Must be configured")
		case errors.Is(err, context.Canceled):
			L.RaiseError("http call aborted: the stream ended")
		case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
			// Envoy's async client answers a timeout with the router's 504.
			resp = syntheticResponse(504, "upstream request timeout")
		default:
			// Envoy fakes a 503 for every other failure.
			f.log(slog.LevelDebug, "lua: http call failed: "+err.Error())
			resp = syntheticResponse(503, "upstream failure")
		}
	}
	L.Push(responseHeadersTable(L, &resp.Headers, dupHeaders))
	if len(resp.Body) == 0 {
		L.Push(glua.LNil)
	} else {
		L.Push(glua.LString(resp.Body))
	}
	return 2
}

func syntheticResponse(status int, body string) *stream.HTTPResponse {
	r := &stream.HTTPResponse{Body: []byte(body)}
	r.Headers.Add(":status", strconv.Itoa(status))
	return r
}

func responseHeadersTable(L *glua.LState, h *header.Map, dup bool) *glua.LTable {
	t := L.CreateTable(0, h.Len())
	for _, fld := range h.Fields() {
		name := lowerASCII(fld.Name)
		if !dup {
			t.RawSetString(name, glua.LString(fld.Value)) // the last value wins, as Envoy
			continue
		}
		switch cur := t.RawGetString(name).(type) {
		case *glua.LNilType:
			t.RawSetString(name, glua.LString(fld.Value))
		case glua.LString:
			list := L.CreateTable(2, 0)
			list.Append(cur)
			list.Append(glua.LString(fld.Value))
			t.RawSetString(name, list)
		case *glua.LTable:
			cur.Append(glua.LString(fld.Value))
		}
	}
	return t
}

// Logging, with Envoy's levels.

const levelTrace = slog.LevelDebug - 4
const levelDebug = slog.LevelDebug
const levelCritical = slog.LevelError + 4

var logLevels = map[string]slog.Level{
	"logTrace":    levelTrace,
	"logDebug":    levelDebug,
	"logInfo":     slog.LevelInfo,
	"logWarn":     slog.LevelWarn,
	"logErr":      slog.LevelError,
	"logCritical": levelCritical,
}

// envoyLevels are spdlog's numeric levels, for handle:log(level, msg).
var envoyLevels = [...]slog.Level{levelTrace, levelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError, levelCritical}

func (v *vm) logAt(level slog.Level) glua.LGFunction {
	return func(L *glua.LState) int {
		msg := L.CheckString(2)
		if v.f != nil {
			v.f.log(level, msg)
		}
		return 0
	}
}

func (v *vm) hLog(L *glua.LState) int {
	n := L.CheckInt(2)
	msg := L.CheckString(3)
	if n < 0 || n >= len(envoyLevels) {
		L.ArgError(2, "log level must be 0 (trace) to 5 (critical)")
	}
	v.dir(L).f.log(envoyLevels[n], msg)
	return 0
}

// Time and encoding helpers.

const (
	resolutionMillisecond = "MILLISECOND"
	resolutionMicrosecond = "MICROSECOND"
)

func resolution(L *glua.LState, n int, allowMicro bool) string {
	switch r := L.Get(n).(type) {
	case *glua.LNilType:
		return resolutionMillisecond
	case glua.LString:
		s := strings.ToUpper(string(r))
		if s == resolutionMillisecond || (allowMicro && s == resolutionMicrosecond) {
			return s
		}
	}
	if allowMicro {
		L.RaiseError("timestamp format must be MILLISECOND or MICROSECOND.")
	}
	L.RaiseError("timestamp format must be MILLISECOND.")
	return ""
}

func (v *vm) hTimestamp(L *glua.LState) int {
	v.dir(L)
	resolution(L, 2, false)
	L.Push(glua.LNumber(time.Now().UnixMilli()))
	return 1
}

func (v *vm) hTimestampString(L *glua.LState) int {
	v.dir(L)
	now := time.Now()
	if resolution(L, 2, true) == resolutionMicrosecond {
		L.Push(glua.LString(strconv.FormatInt(now.UnixMicro(), 10)))
	} else {
		L.Push(glua.LString(strconv.FormatInt(now.UnixMilli(), 10)))
	}
	return 1
}

func (v *vm) hBase64Escape(L *glua.LState) int {
	v.dir(L)
	L.Push(glua.LString(base64.StdEncoding.EncodeToString([]byte(L.CheckString(2)))))
	return 1
}

// pubKey is importPublicKey's result; key is nil when the DER was invalid
// (Envoy then fails in verifySignature, not in importPublicKey).
type pubKey struct{ key crypto.PublicKey }

func (v *vm) hImportPublicKey(L *glua.LState) int {
	v.dir(L)
	der := L.CheckString(2)
	if n := L.OptInt(3, len(der)); n >= 0 && n < len(der) {
		der = der[:n]
	}
	k := &pubKey{}
	if key, err := x509.ParsePKIXPublicKey([]byte(der)); err == nil {
		k.key = key
	} else if key, err := x509.ParsePKCS1PublicKey([]byte(der)); err == nil {
		k.key = key
	}
	u := L.NewUserData()
	u.Value = k
	u.Metatable = v.objs.mtPubKey
	L.Push(u)
	return 1
}

var hashes = map[string]crypto.Hash{
	"sha1": crypto.SHA1, "sha224": crypto.SHA224, "sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512,
}

func (v *vm) hVerifySignature(L *glua.LState) int {
	v.dir(L)
	hashName := L.CheckString(2)
	u := L.CheckUserData(3)
	sig := L.CheckString(4)
	sigLen := L.CheckInt(5)
	data := L.CheckString(6)
	dataLen := L.CheckInt(7)
	fail := func(msg string) int {
		L.Push(glua.LFalse)
		L.Push(glua.LString(msg))
		return 2
	}
	h, ok := hashes[strings.ToLower(hashName)]
	if !ok {
		return fail(hashName + " is not supported.")
	}
	k, _ := u.Value.(*pubKey)
	if k == nil || k.key == nil {
		return fail("Failed to verify digest. Error code: 0")
	}
	if sigLen < 0 || sigLen > len(sig) || dataLen < 0 || dataLen > len(data) {
		return fail("signature or data length out of range")
	}
	hw := h.New()
	hw.Write([]byte(data[:dataLen]))
	digest := hw.Sum(nil)
	sigBytes := []byte(sig[:sigLen])
	var err error
	switch key := k.key.(type) {
	case *rsa.PublicKey:
		err = rsa.VerifyPKCS1v15(key, h, digest, sigBytes)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(key, digest, sigBytes) {
			err = errors.New("bad signature")
		}
	case ed25519.PublicKey:
		if !ed25519.Verify(key, []byte(data[:dataLen]), sigBytes) {
			err = errors.New("bad signature")
		}
	default:
		err = errors.New("unsupported key type")
	}
	if err != nil {
		return fail("Failed to verify digest. Error code: 0")
	}
	L.Push(glua.LTrue)
	L.Push(glua.LNil)
	return 2
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
